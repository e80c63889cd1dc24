#!/usr/bin/env bash
# Usage: scripts/package/ensure-sam.sh
# Installs the AWS SAM CLI (and with it cfn-lint) into .venv-sam when missing or outdated.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_sam
log "sam: $("$SAM_VENV/bin/sam" --version)"
