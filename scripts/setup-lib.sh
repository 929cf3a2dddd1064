# Functions shared by scripts/setup.sh and its tests (source it; it runs nothing).
#
# The CUDA stack is one triple from one CUDA variant (docs/gpu.md): torch 2.13.0
# cu130 + fbgemm-gpu 1.8.0 (PyPI's build is CUDA 13.0) + torchrec 1.8.0; it needs an
# NVIDIA driver R580 or newer. The CPU stack is torch 2.13.0+cpu + fbgemm-gpu-cpu 1.8.0.

RECTRAIN_CUDA_VARIANT=cu130
RECTRAIN_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu130
RECTRAIN_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

# rectrain_device: print "cuda" or "cpu" for RECTRAIN_DEVICE=cuda|cpu|auto (default
# auto: cuda when `nvidia-smi -L` lists a GPU). RECTRAIN_STACK is the old name.
rectrain_device() {
  local want="${RECTRAIN_DEVICE:-${RECTRAIN_STACK:-auto}}"
  case "$want" in
    cuda|cpu) echo "$want" ;;
    auto)
      if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo cuda
      else
        echo cpu
      fi ;;
    *)
      echo "rectrain setup: RECTRAIN_DEVICE='$want' is not one of cuda, cpu, auto" >&2
      return 2 ;;
  esac
}

# index_reachable URL: true (0) when a package index answers within a few seconds
# (offline machines and ones that reach only PyPI must not wait on pip's retries).
index_reachable() {
  "${PY:-python3}" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/", timeout=5)
PY
}

# installed_variant PYTHON: "cuda", "cpu" or "none" (no torch in that interpreter).
# pip treats 2.13.0+cpu as satisfying ==2.13.0, so the variant is read, not assumed.
installed_variant() {
  "$1" - <<'PY' 2>/dev/null || echo none
try:
    import torch
except ImportError:
    print("none")
else:
    print("cuda" if torch.version.cuda else "cpu")
PY
}

# variant_mismatch PYTHON DEVICE: true (0) when PYTHON has torch of the other variant, which
# must be uninstalled first: pip would keep 2.13.0+cpu for a `torch==2.13.0` request.
variant_mismatch() {
  local have
  have=$(installed_variant "$1")
  [ "$have" != none ] && [ "$have" != "$2" ]
}

# check_device PYTHON DEVICE: with DEVICE=cuda, fail loudly unless torch sees a GPU.
check_device() {
  [ "$2" = cuda ] || return 0
  if ! "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)'; then
    echo "rectrain setup: RECTRAIN_DEVICE=cuda but torch $("$1" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null) sees no GPU (torch.cuda.is_available() is False)." >&2
    echo "  The $RECTRAIN_CUDA_VARIANT build needs an NVIDIA driver R580+ (nvidia-smi shows it); or set RECTRAIN_DEVICE=cpu." >&2
    return 1
  fi
}
