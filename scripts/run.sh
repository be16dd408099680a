#!/usr/bin/env bash
# Install if needed, then start a demo on 127.0.0.1.
# Usage: scripts/run.sh chat|agent|xcomposer|server [-- app flags, e.g. --model internlm2_5-7b-chat --num-gpus 2]
# Ports: chat 6006, agent 6007, xcomposer 6008, server 23333; --port / INTERNLM_DEMO_PORT and --host /
# INTERNLM_DEMO_HOST change them (127.0.0.1 by default). A taken port is reported before any model loads.
set -euo pipefail
cd "$(dirname "$0")/.."
app=${1:-chat}
shift || true
[ "${1:-}" = "--" ] && shift
scripts/install.sh
exec "${INTERNLM_DEMO_VENV:-.venv}/bin/python" -m apps.launch "$app" "$@"
