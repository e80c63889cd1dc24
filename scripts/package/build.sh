#!/usr/bin/env bash
# Usage: scripts/package/build.sh arm64|x86_64
# Cross-builds a static (musl) release binary of lambda-sidecar for one Lambda architecture
# with cargo-zigbuild, and refuses a result that is not statically linked: Lambda layers
# must run on every runtime's OS image, whatever libc it has (or none, provided.al2023).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

arch="${1:-}"
target="$(rust_target "$arch")"
ensure_build_tools "$arch"

# cargo-zigbuild finds zig through the ziglang package of the Python on PATH.
export PATH="$BUILD_VENV/bin:$PATH"
log "building lambda-sidecar for $target"
start=$(date +%s)
(cd "$ROOT" && cargo zigbuild --release --locked -p lambda-sidecar --bin lambda-sidecar --target "$target")
bin="$(built_binary "$arch")"
"$BUILD_VENV/bin/python" "$ROOT/scripts/package/elfcheck.py" "$bin" "$arch"
log "built ${bin#"$ROOT"/} ($(stat -c %s "$bin") bytes) in $(($(date +%s) - start)) s"
