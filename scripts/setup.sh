#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtualenv in .venv with the exact pins.
# RECTRAIN_DEVICE=cuda|cpu|auto (default auto: CUDA when nvidia-smi lists a GPU).
# Idempotent: re-running only checks what is already there; a change of variant
# (CPU venv -> cuda, or back) reinstalls torch and FBGEMM instead of keeping the old build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup-lib.sh
. scripts/setup-lib.sh
PY=${PYTHON:-python3}
DEVICE=$(rectrain_device)
EXTRAS="$DEVICE"
[ "${RECTRAIN_DEV:-1}" = "1" ] && EXTRAS="$DEVICE,dev"
stamp=".venv/.rectrain-setup-$DEVICE-$(cat pyproject.toml requirements-torchrec.txt scripts/setup-lib.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then check_device .venv/bin/python "$DEVICE"; exit 0; fi
echo "rectrain setup: $DEVICE stack into .venv" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if variant_mismatch .venv/bin/python "$DEVICE"; then
  echo "rectrain setup: .venv has the $(installed_variant .venv/bin/python) build of torch; replacing it with the $DEVICE build" >&2
  .venv/bin/python -m pip uninstall -q -y torch fbgemm-gpu fbgemm-gpu-cpu torchrec
fi
if [ "$DEVICE" = cuda ]; then
  # torch, fbgemm-gpu and torchrec from one CUDA variant (cu130; driver R580+)
  .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "${TORCH_INDEX_URL:-$RECTRAIN_CUDA_INDEX_URL}" \
    --extra-index-url https://pypi.org/simple
elif [ "$(installed_variant .venv/bin/python)" != cpu ]; then
  # PyPI's Linux torch wheel is the CUDA build: the CPU one comes from the CPU index
  .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "${TORCH_INDEX_URL:-$RECTRAIN_CPU_INDEX_URL}"
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
.venv/bin/python -m pip install -q --no-deps -r requirements-torchrec.txt
.venv/bin/python -c "import torch, fbgemm_gpu, torchrec, ray; print('rectrain setup ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" >&2
check_device .venv/bin/python "$DEVICE"
rm -f .venv/.rectrain-setup-*
touch "$stamp"
