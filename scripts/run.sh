#!/usr/bin/env bash
# Install if needed, then start a demo on 127.0.0.1.
# Usage: scripts/run.sh chat|xcomposer|agent [-- app flags, e.g. --model internlm-chat-7b --num-gpus 2]
set -euo pipefail
cd "$(dirname "$0")/.."
app=${1:-chat}
shift || true
[ "${1:-}" = "--" ] && shift
scripts/install.sh
VENV=${INTERNLM_DEMO_VENV:-.venv}
case "$app" in
  chat)      exec "$VENV/bin/streamlit" run apps/chat.py -- "$@" ;;
  agent)     exec "$VENV/bin/streamlit" run apps/agent.py --server.port 6007 -- "$@" ;;
  xcomposer) exec "$VENV/bin/python" apps/xcomposer.py "$@" ;;
  *) echo "unknown app '$app': use chat, xcomposer or agent" >&2; exit 2 ;;
esac
