#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need, on this machine or on a fresh
# Debian one where we are root: Debian packages, a Python venv at .venv, and the npm
# packages of tests/verifiers. Idempotent: each part is skipped when its stamp says it
# is already in place, so a warm run takes about a second.
# The Rust toolchain is expected to be there already (rustup); it is never downloaded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS="$ROOT/scripts/requirements-test.txt"
NODE_DIR="$ROOT/tests/verifiers"

# Debian packages, as `command:package` pairs: the package is installed only when the
# command is missing, so tools that came some other way (pyenv's python3, NodeSource's
# node) are left alone. Add a pair here for each new tool the tests need.
APT_REQUIREMENTS=(
  curl:curl
  python3:python3
  node:nodejs
  npm:npm
  openssl:openssl
  promtool:prometheus
  # The same package's server, which tests/grafana.rs runs; the pair is checked apart in
  # case promtool came some other way.
  prometheus:prometheus
)
# Extra pairs can come from the environment, e.g. APT_EXTRA="promtool:prometheus".
read -r -a APT_EXTRA_LIST <<< "${APT_EXTRA:-}"
APT_REQUIREMENTS+=("${APT_EXTRA_LIST[@]}")

log() { printf '[install-deps] %s\n' "$*" >&2; }

sha() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

install_apt() {
  local pair cmd pkg missing=()
  for pair in "${APT_REQUIREMENTS[@]}"; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    command -v "$cmd" > /dev/null 2>&1 || missing+=("$pkg")
  done
  # `python3 -m venv` needs ensurepip, which Debian ships separately.
  if command -v "$PYTHON" > /dev/null 2>&1 && ! "$PYTHON" -c 'import ensurepip' > /dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt: nothing to install"
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    log "apt: missing ${missing[*]}, and not root: install them and run again"
    exit 1
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
}

install_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want="$(sha "$REQUIREMENTS")"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2> /dev/null)" = "$want" ]; then
    log "venv: $VENV up to date"
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "venv: creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  log "venv: pip install -r ${REQUIREMENTS#"$ROOT"/}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip list --disable-pip-version-check 2> /dev/null \
    | grep -iE '^(pytest|cargo-lambda|pyjwt|cryptography|rotel|opentelemetry-proto|protobuf|cfn-lint) ' \
    | sed 's/^/[install-deps]   /' >&2
  echo "$want" > "$stamp"
}

install_npm() {
  local stamp="$NODE_DIR/node_modules/.lock.sha256" want
  want="$(sha "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json")"
  if [ "$(cat "$stamp" 2> /dev/null)" = "$want" ]; then
    log "npm: tests/verifiers/node_modules up to date"
    return
  fi
  log "npm: npm ci in tests/verifiers"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --no-progress --loglevel=error > /dev/null)
  (cd "$NODE_DIR" && npm ls --depth=0 2> /dev/null | grep -E '[a-z]@[0-9]' | sed 's/^/[install-deps]   /' >&2) || true
  echo "$want" > "$stamp"
}

check_rust() {
  local tool
  for tool in "cargo --version" "cargo fmt --version" "cargo clippy --version"; do
    if ! $tool > /dev/null 2>&1; then
      log "rust: '$tool' failed: the Rust toolchain (rustup, with rustfmt and clippy) must be installed"
      exit 1
    fi
  done
  log "rust: $(cargo --version)"
}

install_apt
check_rust
install_venv
install_npm
