#!/usr/bin/env bash
# Usage: [LAYER_FEATURES=grpc] scripts/package/layer.sh arm64|x86_64
# Builds the static binary for ARCH and packs it as dist/lambda-sidecar-ARCH.zip
# (extensions/lambda-sidecar, mode 755), ready for template.yaml's layer of that ARCH.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

arch="${1:-}"
rust_target "$arch" > /dev/null
"$ROOT/scripts/package/build.sh" "$arch"

bin="$(built_binary "$arch")"
zip="$DIST_DIR/lambda-sidecar-$arch.zip"
mkdir -p "$DIST_DIR"
"$PYTHON" "$ROOT/scripts/package/make_layer_zip.py" "$bin" "$zip"
log "layer ${zip#"$ROOT"/}: $(stat -c %s "$zip") bytes (binary $(stat -c %s "$bin") bytes)"
log "sha256 $(sha256sum "$zip" | cut -d' ' -f1)"
