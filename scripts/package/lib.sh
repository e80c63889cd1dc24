# Shared helpers of scripts/package/*.sh; sourced, never run.
# Tools are installed into venvs next to the repo when missing, so `make layer-arm64`
# works on a fresh machine with only rustup and python3 (with venv).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_VENV="${BUILD_VENV:-$ROOT/.venv-build}"
SAM_VENV="${SAM_VENV:-$ROOT/.venv-sam}"
PYTHON="${PYTHON:-python3}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DIST_DIR="${DIST_DIR:-$ROOT/dist}"
export CARGO_TARGET_DIR
# sam sends usage metrics to AWS by default; nothing here should phone home unasked.
export SAM_CLI_TELEMETRY="${SAM_CLI_TELEMETRY:-0}"

log() { printf '[package] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Lambda's architecture names (template.yaml, the zip names) to Rust target triples.
rust_target() {
  case "$1" in
    arm64) echo aarch64-unknown-linux-musl ;;
    x86_64) echo x86_64-unknown-linux-musl ;;
    *) die "unknown architecture '$1' (expected arm64 or x86_64)" ;;
  esac
}

# The binary a `build.sh ARCH` leaves behind.
built_binary() {
  echo "$CARGO_TARGET_DIR/$(rust_target "$1")/release/lambda-sidecar"
}

# Creates or refreshes VENV from REQUIREMENTS; a stamp with the requirements' hash makes
# a warm run free.
ensure_venv() {
  local venv="$1" requirements="$2" stamp want
  stamp="$venv/.requirements.sha256"
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2> /dev/null)" = "$want" ]; then
    return
  fi
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -c 'import ensurepip' 2> /dev/null \
      || die "$PYTHON has no venv support: apt-get install python3-venv (or run make deps)"
    log "venv: creating ${venv#"$ROOT"/}"
    "$PYTHON" -m venv "$venv"
  fi
  log "venv: pip install -r ${requirements#"$ROOT"/}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
}

# zig + cargo-zigbuild from PyPI, and the rustup target for ARCH when it is missing.
ensure_build_tools() {
  local target
  target="$(rust_target "$1")"
  ensure_venv "$BUILD_VENV" "$ROOT/scripts/package/requirements-build.txt"
  if ! rustup target list --installed | grep -qx "$target"; then
    log "rustup: adding target $target"
    rustup target add "$target"
  fi
}

ensure_sam() {
  ensure_venv "$SAM_VENV" "$ROOT/scripts/package/requirements-sam.txt"
}
