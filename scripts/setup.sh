#!/usr/bin/env bash
# Install loopdesk and its Python stack into the current Python (torch's CPU build first, so
# that nothing pulls a multi-GB CUDA build). Usage: bash scripts/setup.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m pip install --quiet "torch==2.13.0"
if [ -n "$extras" ]; then
  python3 -m pip install --quiet -e ".[$extras]"
else
  python3 -m pip install --quiet -e .
fi
