#!/usr/bin/env bash
# `make demo`: part 1 starts the sidecar standalone with a freshly generated demo key, fetches
# tokens the way a function would (curl on localhost), verifies them with an independent
# library (PyJWT) and prints them decoded. Part 2 (scripts/demo_lambda.py) runs it as a Lambda
# extension in lambda-env with a real collector, and prints what arrived. Everything it
# starts is stopped on exit.
#
# Expects `make deps build` to have run (the Makefile's `demo` target does both).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
LAMBDA_SIDECAR_BIN="${LAMBDA_SIDECAR_BIN:-$ROOT/target/x86_64-unknown-linux-musl/release/lambda-sidecar}"
DEMO_ISSUER="lambda-sidecar-demo"
DEMO_SUBJECT="demo-function"
# The audiences a caller may ask for; the first is the default.
DEMO_AUDIENCES="orders-api,billing-api"

WORK="$(mktemp -d)"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }

# Port 3003 (the sidecar's default) when free, else any free port.
pick_port() {
  "$PY" - << 'EOF'
import socket
for port in (3003, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

# A random 48-byte HS256 secret, new on every run; it is never printed.
generate_demo_key() {
  JWT_SECRET="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')"
  export JWT_SECRET
  # In Lambda, the function and the sidecar both see the environment's AWS_SESSION_TOKEN;
  # /token wants it back in X-Sidecar-Token. Here the demo makes one up.
  AWS_SESSION_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
  export AWS_SESSION_TOKEN
}

# start_sidecar NAME: runs `lambda-sidecar serve` in the background until the demo ends.
start_sidecar() {
  local name="$1" log="$WORK/$1.log" i
  SIDECAR_LOG_FORMAT=text "$LAMBDA_SIDECAR_BIN" serve > "$log" 2>&1 &
  PIDS+=("$!")
  for i in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$SIDECAR_PORT/health" > /dev/null 2>&1; then
      echo "$name is up on http://127.0.0.1:$SIDECAR_PORT (pid ${PIDS[-1]})"
      return
    fi
    if ! kill -0 "${PIDS[-1]}" 2> /dev/null; then break; fi
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2
  cat "$log" >&2
  exit 1
}

# verify_and_print AUDIENCE < token-response.json: checks the signature and the registered
# claims with PyJWT, then prints the decoded header and claims.
verify_and_print() {
  DEMO_AUDIENCE="$1" "$PY" -c '
import json, os, sys, time
import jwt

resp = json.load(sys.stdin)
token = resp["token"]
header = jwt.get_unverified_header(token)
claims = jwt.decode(
    token, os.environ["JWT_SECRET"], algorithms=["HS256"],
    issuer=os.environ["JWT_ISSUER"], audience=os.environ["DEMO_AUDIENCE"],
    options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]})
print("verified by PyJWT %s: HS256 signature valid, issuer %s, audience %s, expires in %ds"
      % (jwt.__version__, claims["iss"], claims["aud"], claims["exp"] - int(time.time())))
print("response:", json.dumps({k: v for k, v in resp.items() if k != "token"}))
print("header:  ", json.dumps(header))
print("claims:  ", json.dumps(claims, indent=2))
'
}

main() {
  step "Generating a demo key"
  generate_demo_key
  echo "JWT_ALGORITHM=HS256 with a random 48-byte secret (not shown)"

  step "Starting lambda-sidecar serve"
  SIDECAR_PORT="$(pick_port)"
  export SIDECAR_PORT JWT_ALGORITHM=HS256 JWT_ISSUER="$DEMO_ISSUER"
  export JWT_DEFAULT_SUBJECT="$DEMO_SUBJECT" JWT_AUDIENCE="$DEMO_AUDIENCES" JWT_ALLOWED_CLAIMS=role
  start_sidecar lambda-sidecar

  step "GET /token, as a function would"
  echo "\$ curl -s -H \"X-Sidecar-Token: \$AWS_SESSION_TOKEN\" http://127.0.0.1:$SIDECAR_PORT/token"
  curl -sS --fail-with-body -H "X-Sidecar-Token: $AWS_SESSION_TOKEN" \
    "http://127.0.0.1:$SIDECAR_PORT/token" > "$WORK/get.json"
  verify_and_print orders-api < "$WORK/get.json"

  step "POST /token with a subject, an audience and an allowed claim"
  local body='{"sub":"user-42","aud":"billing-api","ttl_seconds":300,"claims":{"role":"reader"}}'
  echo "\$ curl -s -H \"X-Sidecar-Token: \$AWS_SESSION_TOKEN\" -H 'content-type: application/json' -d '$body' http://127.0.0.1:$SIDECAR_PORT/token"
  curl -sS --fail-with-body -H "X-Sidecar-Token: $AWS_SESSION_TOKEN" \
    -H 'content-type: application/json' -d "$body" \
    "http://127.0.0.1:$SIDECAR_PORT/token" > "$WORK/post.json"
  verify_and_print billing-api < "$WORK/post.json"

  step "Stopping the sidecar"
  kill "${PIDS[-1]}" && wait "${PIDS[-1]}" 2> /dev/null || true
  unset 'PIDS[-1]'

  # Part 2: the same binary as a Lambda extension, in the project's Lambda environment.
  "$PY" "$ROOT/scripts/demo_lambda.py"
}

main "$@"
