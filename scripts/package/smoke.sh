#!/usr/bin/env bash
# Usage: scripts/package/smoke.sh arm64|x86_64 [LAYER_ZIP] [OUT_DIR]
# Runs the real layer artifact in the project's Lambda environment (lambda-env): the zip is
# unpacked as Lambda would into /opt, and /opt/extensions/lambda-sidecar runs natively when
# the machine has its architecture, else under qemu-user (qemu-aarch64-static on x86_64:
# the guest runs inside the qemu process, so lambda-env's SIGSTOP/SIGCONT freeze it like
# Lambda does). Its OTLP export goes to
# lambda-env's sink. check_smoke.py then asserts: registered for INVOKE and SHUTDOWN,
# telemetry subscribed and delivered, every token request 200, spans exported, exit 0.
# Leaves report.json, otlp.jsonl and the extension's output in OUT_DIR (default: a temp dir).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

arch="${1:-}"
target="$(rust_target "$arch")"
zip="${2:-$DIST_DIR/lambda-sidecar-$arch.zip}"
out="${3:-$(mktemp -d -t sidecar-smoke.XXXXXX)}"
[ -f "$zip" ] || die "$zip not found: run make layer-$arch first"
cpu="${target%%-*}"
emulator=""
if [ "$cpu" != "$(uname -m)" ]; then
  emulator="qemu-$cpu-static"
  command -v "$emulator" > /dev/null || die "$emulator not found: apt-get install qemu-user-static"
fi
lambda_env="${LAMBDA_ENV:-}"
if [ -z "$lambda_env" ]; then
  for candidate in "$CARGO_TARGET_DIR/release/lambda-env" "$CARGO_TARGET_DIR/debug/lambda-env"; do
    if [ -x "$candidate" ]; then lambda_env="$candidate"; break; fi
  done
fi
[ -x "$lambda_env" ] || die "lambda-env not built: cargo build -p lambda-env (or set LAMBDA_ENV)"

mkdir -p "$out"
sink_pid=""
cleanup() {
  if [ -n "$sink_pid" ]; then kill "$sink_pid" 2> /dev/null || true; wait "$sink_pid" 2> /dev/null || true; fi
}
trap cleanup EXIT

# Unpack exactly as Lambda does: the zip's content goes to /opt.
rm -rf "$out/opt"
"$PYTHON" -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode:
            import os; os.chmod(path, mode & 0o7777)' "$zip" "$out/opt"
ext="$out/opt/extensions/lambda-sidecar"
[ -x "$ext" ] || die "the layer has no executable extensions/lambda-sidecar"

# lambda-env spawns one executable: the extension itself, or a wrapper that execs it under
# qemu. The wrapper carries the extension's name, as Lambda takes the name from the file.
run_ext="$ext"
if [ -n "$emulator" ]; then
  mkdir -p "$out/bin"
  run_ext="$out/bin/lambda-sidecar"
  printf '#!/bin/sh\nexec %s '"'"'%s'"'"' "$@"\n' "$emulator" "$ext" > "$run_ext"
  chmod 755 "$run_ext"
fi

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sink_port="$(free_port)"
token_port="$(free_port)"
rm -f "$out/otlp.jsonl"

# Only the variables set here reach the extension: it refuses unknown SIDECAR_* names, and
# a JWT_* or OTEL_* from the caller's shell would change what is tested.
clean_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}")
"${clean_env[@]}" "$lambda_env" sink --listen "127.0.0.1:$sink_port" --out "$out/otlp.jsonl" > "$out/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 100); do
  grep -q 'OTLP sink on' "$out/sink.log" 2> /dev/null && break
  kill -0 "$sink_pid" 2> /dev/null || die "the OTLP sink exited: $(cat "$out/sink.log")"
  sleep 0.05
done

secret="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')"
log "running ${zip#"$ROOT"/} ${emulator:+under $emulator }in lambda-env (${lambda_env#"$ROOT"/})"
rc=0
"${clean_env[@]}" "$lambda_env" run \
  --extension "$run_ext" \
  --invokes "${SMOKE_INVOKES:-5}" --tokens-per-invoke 2 \
  --token-url "http://127.0.0.1:$token_port/token" \
  --work-dir "$out" --report "$out/report.json" \
  --env "SIDECAR_PORT=$token_port" \
  --env "JWT_ALGORITHM=HS256" --env "JWT_SECRET=$secret" --env "JWT_ISSUER=smoke-test" \
  --env "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port" \
  --env "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" \
  --env "OTEL_SERVICE_NAME=lambda-sidecar-smoke" || rc=$?
log "lambda-env exited $rc; report in $out"
# The sink has the spans once the extension exited (it flushes at SHUTDOWN before exit 0).
cleanup
sink_pid=""
"$PYTHON" "$ROOT/scripts/package/check_smoke.py" "$out/report.json" "$out/otlp.jsonl"
