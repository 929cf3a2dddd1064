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
  # PyPI's Linux torch wheel is the CUDA build: the CPU one comes from the CPU index when it
  # answers; else from what pip's own configuration offers (a machine whose find-links hold
  # torch-2.13.0+cpu, as the dev and CI machines do), and the variant is checked after.
  cpu_index="${TORCH_INDEX_URL:-$RECTRAIN_CPU_INDEX_URL}"
  if index_reachable "$cpu_index"; then
    .venv/bin/python -m pip install -q "torch==2.13.0" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
  else
    echo "rectrain setup: $cpu_index is not reachable; installing torch==2.13.0 from pip's configured sources" >&2
    .venv/bin/python -m pip install -q "torch==2.13.0"
    if [ "$(installed_variant .venv/bin/python)" != cpu ]; then
      echo "rectrain setup: got the CUDA build of torch (no CPU build reachable); it runs on the CPU too, but is large." >&2
      echo "  Set TORCH_INDEX_URL to a reachable CPU index (or a mirror of $RECTRAIN_CPU_INDEX_URL) for the small CPU build." >&2
    fi
  fi
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
.venv/bin/python -m pip install -q --no-deps -r requirements-torchrec.txt
.venv/bin/python -c "import torch, fbgemm_gpu, torchrec, ray; print('rectrain setup ok: torch', torch.__version__, 'torchrec', torchrec.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" >&2
check_device .venv/bin/python "$DEVICE"
rm -f .venv/.rectrain-setup-*
touch "$stamp"
