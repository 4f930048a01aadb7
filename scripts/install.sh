#!/usr/bin/env bash
# Create .venv and install hopelm into it (editable, with the test extra).
# On a machine without an NVIDIA GPU, torch comes from PyTorch's CPU index when it is reachable
# (a ~200 MB wheel instead of a multi-GB CUDA build); with a GPU, pip picks the default CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch>=2.4"
elif ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # Offline machines with a local package mirror cannot reach PyTorch's index; pip would retry it
  # for every dependency (minutes), so it is only added when it answers.
  cpu_index=()
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" >/dev/null 2>&1; then
    cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
  .venv/bin/python -m pip install -q "torch==2.13.0" ${cpu_index[@]+"${cpu_index[@]}"}
fi
.venv/bin/python -m pip install -q -e ".[test,plot]"
.venv/bin/python -c "import torch, hopelm; print(f'hopelm installed in .venv (torch {torch.__version__}, cuda available: {torch.cuda.is_available()})')"
