#!/usr/bin/env bash
# Usage: scripts/package/deploy.sh [sam deploy arguments...]
# Deploys template.yaml with the layer zips in dist/: sam build, then sam deploy. With no
# arguments and no saved parameters in samconfig.toml, runs `sam deploy --guided` (asks
# for JwtSecretArn and the other parameters, then saves them). Needs AWS credentials.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for arch in arm64 x86_64; do
  [ -f "$DIST_DIR/lambda-sidecar-$arch.zip" ] || die "dist/lambda-sidecar-$arch.zip missing: run make layer-$arch"
done
"$ROOT/scripts/package/sam-build.sh"
args=("$@")
if [ "${#args[@]}" -eq 0 ] && ! grep -q '^parameter_overrides' "$ROOT/samconfig.toml"; then
  args=(--guided)
fi
cd "$ROOT"
"$SAM_VENV/bin/sam" deploy "${args[@]}"
