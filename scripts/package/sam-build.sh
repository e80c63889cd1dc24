#!/usr/bin/env bash
# Usage: scripts/package/sam-build.sh [BUILD_DIR]
# `sam build` of template.yaml (default BUILD_DIR .aws-sam/build, where sam deploy looks):
# bundles examples/nodejs-function with esbuild into handler.mjs. sam installs only the
# function's production dependencies, so esbuild, a devDependency, is taken from the
# example's own node_modules/.bin, put on PATH here.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_dir="${1:-$ROOT/.aws-sam/build}"
example="$ROOT/examples/nodejs-function"
ensure_sam
log "npm ci in examples/nodejs-function"
(cd "$example" && npm ci --no-audit --no-fund --loglevel=error > /dev/null)
cd "$ROOT"
PATH="$example/node_modules/.bin:$PATH" "$SAM_VENV/bin/sam" build --template-file "$ROOT/template.yaml" --build-dir "$build_dir"
