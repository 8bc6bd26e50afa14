#!/usr/bin/env bash
# One command on a fresh machine: install, build the tiny base model once, import the demo
# shop's knowledge base once, serve the bot with gunicorn (one worker process holding the model,
# request threads; `--dev` for Werkzeug's development server instead).
# The bot listens on http://127.0.0.1:8000 (`--host`/`--port` to change).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
loopdesk bootstrap            # skipped when the base model exists or LOOPDESK_BASE_MODEL is set
loopdesk kb import sim/northwind/knowledge --if-empty   # the demo shop's help articles, on first start
exec loopdesk serve "$@"
