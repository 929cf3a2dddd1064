#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtualenv in .venv with the exact pins.
# Picks the CUDA stack when an NVIDIA GPU is visible (or RECTRAIN_STACK=cuda), else CPU.
# Idempotent: re-running only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STACK=${RECTRAIN_STACK:-}
if [ -z "$STACK" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then STACK=cuda; else STACK=cpu; fi
fi
EXTRAS="$STACK"
[ "${RECTRAIN_DEV:-1}" = "1" ] && EXTRAS="$STACK,dev"
stamp=".venv/.rectrain-setup-$STACK-$(cat pyproject.toml requirements-torchrec.txt | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
echo "rectrain setup: $STACK stack into .venv" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$STACK" = cuda ]; then
  # CUDA torch build from the PyTorch index; FBGEMM pins one torch per release.
  .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
.venv/bin/python -m pip install -q --no-deps -r requirements-torchrec.txt
.venv/bin/python -c "import torch, fbgemm_gpu, torchrec, ray; print('rectrain setup ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" >&2
rm -f .venv/.rectrain-setup-*
touch "$stamp"
