#!/usr/bin/env bash
# Install if needed, then start a demo on 127.0.0.1.
# Usage: scripts/run.sh chat|xcomposer|agent [-- app flags, e.g. --model internlm-chat-7b --num-gpus 2]
# Address and port: INTERNLM_DEMO_HOST / INTERNLM_DEMO_PORT (defaults 127.0.0.1 and 6006; the agent 6007).
set -euo pipefail
cd "$(dirname "$0")/.."
app=${1:-chat}
shift || true
[ "${1:-}" = "--" ] && shift
scripts/install.sh
VENV=${INTERNLM_DEMO_VENV:-.venv}
host=${INTERNLM_DEMO_HOST:-127.0.0.1}
case "$app" in
  chat)      exec "$VENV/bin/streamlit" run apps/chat.py --server.address "$host" \
               --server.port "${INTERNLM_DEMO_PORT:-6006}" -- "$@" ;;
  agent)     exec "$VENV/bin/streamlit" run apps/agent.py --server.address "$host" \
               --server.port "${INTERNLM_DEMO_PORT:-6007}" -- "$@" ;;
  xcomposer) exec "$VENV/bin/python" -m apps.xcomposer "$@" ;;
  *) echo "unknown app '$app': use chat, xcomposer or agent" >&2; exit 2 ;;
esac
