#!/usr/bin/env bash
# Usage: [LAYER_FEATURES=grpc] scripts/package/build.sh arm64|x86_64
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
# LAYER_FEATURES: extra Cargo features, e.g. `grpc` for OTLP export over gRPC (opt-in: it is
# at least 0.6 MB of the arm64 binary, hyper's HTTP/2 included; docs/configuration.md).
features=()
if [ -n "${LAYER_FEATURES:-}" ]; then
  features=(--features "$LAYER_FEATURES")
  log "features: $LAYER_FEATURES"
fi
(cd "$ROOT" && cargo zigbuild --release --locked -p lambda-sidecar --bin lambda-sidecar --target "$target" "${features[@]}")
bin="$(built_binary "$arch")"
"$BUILD_VENV/bin/python" "$ROOT/scripts/package/elfcheck.py" "$bin" "$arch"
log "built ${bin#"$ROOT"/} ($(stat -c %s "$bin") bytes) in $(($(date +%s) - start)) s"
