"""The physical ceiling: warm copy bandwidth, bytes per example, and a compiled
random-row gather + row-wise AdaGrad update loop.

The gather loop does what a fused embedding step must do at the least, on the same
ids and over tables of the same size: forward (copy each looked-up row into the
pooled output) then backward (row-wise AdaGrad on each looked-up row: read the
gradient, update the accumulator, write the row back). Rows are prefetched a
fixed distance ahead, tables are split over threads (no two threads touch one
table, so hot rows never race). Duplicate ids in a batch are *not* merged, so the
loop does at least as many row updates as FBGEMM's exact (deduplicated) kernel.

Implementation: a small C file compiled with the system C compiler at run time
(``-O3 -march=native -fopenmp``) and called through ctypes; numba is the fallback
when no compiler works; on CUDA a torch ``index_select`` / ``index_add_`` loop.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_C_SRC = r"""
#include <stdint.h>
#include <math.h>
#include <string.h>

/* tables[t]: row-major [rows_t, D] fp32; mom[t]: [rows_t] fp32 row-wise AdaGrad state.
   idx: int64 [T * B], table-major (idx[t * B + b]); out / grad: fp32 [B, T, D]. */
void gather_step(float **tables, float **mom, const int64_t *idx, int64_t T, int64_t B, int64_t D,
                 float *out, const float *grad, float lr, float eps, int64_t pf, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t t = 0; t < T; t++) {
        const int64_t *ix = idx + t * B;
        float *W = tables[t];
        /* forward: pooled[b, t, :] = W[ix[b], :] */
        for (int64_t b = 0; b < B; b++) {
            if (b + pf < B) {
                const char *p = (const char *)(W + ix[b + pf] * D);
                for (int64_t o = 0; o < D * 4; o += 64) __builtin_prefetch(p + o, 0, 0);
            }
            memcpy(out + (b * T + t) * D, W + ix[b] * D, (size_t)D * sizeof(float));
        }
    }
    #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t t = 0; t < T; t++) {
        const int64_t *ix = idx + t * B;
        float *W = tables[t];
        float *M = mom[t];
        /* backward + row-wise AdaGrad on every looked-up row */
        for (int64_t b = 0; b < B; b++) {
            if (b + pf < B) {
                int64_t r = ix[b + pf];
                const char *p = (const char *)(W + r * D);
                for (int64_t o = 0; o < D * 4; o += 64) __builtin_prefetch(p + o, 1, 0);
                __builtin_prefetch(M + r, 1, 0);
            }
            int64_t r = ix[b];
            const float *g = grad + (b * T + t) * D;
            float *w = W + r * D;
            float s = 0.f;
            for (int64_t d = 0; d < D; d++) s += g[d] * g[d];
            M[r] += s / (float)D;
            float mult = lr / (sqrtf(M[r]) + eps);
            for (int64_t d = 0; d < D; d++) w[d] -= mult * g[d];
        }
    }
}
"""

_MADV_HUGEPAGE = 14
_HUGE = 2 << 20


# --------------------------------------------------------------------------- bandwidth


def memcpy_bandwidth(device: str = "cpu", mbytes: int = 256, repeats: int = 5) -> float:
    """Warm copy bandwidth in bytes/s, counting read + write (best of ``repeats``)."""
    n = mbytes * (1 << 20) // 4
    if device == "cuda":
        a = torch.ones(n, device="cuda")
        b = torch.empty_like(a)
        b.copy_(a)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            b.copy_(a)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return 2 * a.numel() * 4 / best
    a = torch.ones(n)
    b = torch.empty_like(a)
    b.copy_(a)  # warm: fault every page in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def bytes_per_lookup(dim: int) -> int:
    """Least memory traffic of one one-hot lookup in a fused row-wise AdaGrad step.

    forward: read the row, write it to the pooled output (2 x D x 4);
    backward: read the output gradient, read + write the row, read + write the
    row's accumulator (3 x D x 4 + 2 x 4).
    """
    return 5 * dim * 4 + 8


def bytes_per_example(num_tables: int, dim: int, ids_per_table: int = 1) -> int:
    return num_tables * ids_per_table * bytes_per_lookup(dim)


# --------------------------------------------------------------------------- the gather loop


def _compile_c() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    key = hashlib.sha256((_C_SRC + cc).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "rectrain-bench"
    d.mkdir(parents=True, exist_ok=True)
    so = d / f"gather_{key}.so"
    if not so.exists():
        src = d / f"gather_{key}.c"
        src.write_text(_C_SRC)
        tmp = d / f"gather_{key}.{os.getpid()}.so"
        for flags in (["-march=native", "-fopenmp"], ["-fopenmp"], []):
            r = subprocess.run(
                [cc, "-O3", *flags, "-shared", "-fPIC", "-o", str(tmp), str(src), "-lm"], capture_output=True
            )
            if r.returncode == 0:
                os.replace(tmp, so)
                break
        else:
            return None
    try:
        lib = ctypes.CDLL(str(so))
    except OSError:
        return None
    fn = lib.gather_step
    fn.restype = None
    fn.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_float,
        ctypes.c_float,
        ctypes.c_int64,
        ctypes.c_int,
    ]
    return lib


def _numba_step():
    import numba

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def step(tables, mom, idx, out, grad, lr, eps):  # pragma: no cover - compiled
        T, B = idx.shape
        D = out.shape[2]
        for t in numba.prange(T):
            W = tables[t]
            for b in range(B):
                out[b, t, :] = W[idx[t, b]]
        for t in numba.prange(T):
            W = tables[t]
            M = mom[t]
            for b in range(B):
                r = idx[t, b]
                s = 0.0
                for d in range(D):
                    s += grad[b, t, d] * grad[b, t, d]
                M[r] += s / D
                mult = lr / (np.sqrt(M[r]) + eps)
                for d in range(D):
                    W[r, d] -= mult * grad[b, t, d]

    return step


def alloc_huge(shape: tuple[int, ...]) -> torch.Tensor:
    """An fp32 tensor whose pages are advised as transparent huge pages before first touch."""
    n = int(np.prod(shape))
    raw = torch.empty(n + _HUGE // 4, dtype=torch.float32)
    addr = raw.data_ptr()
    start = (addr + _HUGE - 1) // _HUGE * _HUGE
    t = raw[(start - addr) // 4 : (start - addr) // 4 + n]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(n * 4 // _HUGE * _HUGE), _MADV_HUGEPAGE)
    except (OSError, AttributeError):
        pass
    t.zero_()
    return t.view(shape)


class GatherCeiling:
    """Runs the gather + row-wise AdaGrad loop over given tables (views are fine).

    Args:
        tables: per table a contiguous fp32 [rows, D] tensor (e.g. the FBGEMM kernel's
            own weight views, so the ceiling walks the very same memory).
        moms: per table a contiguous fp32 [rows] accumulator.
        batch: examples per step.
    """

    def __init__(
        self,
        tables: list[torch.Tensor],
        moms: list[torch.Tensor],
        batch: int,
        device: str = "cpu",
        threads: int | None = None,
        prefetch: int = 16,
    ) -> None:
        self.tables, self.moms = tables, moms
        self.T, self.B, self.D = len(tables), batch, tables[0].shape[1]
        self.device = device
        self.threads = threads or torch.get_num_threads()
        self.prefetch = prefetch
        self.out = torch.empty(batch, self.T, self.D, device=device)
        self.grad = (torch.rand(batch, self.T, self.D, device=device) - 0.5) * 1e-2
        self.impl = "torch-cuda"  # the CPU paths below name themselves
        self._lib = None
        self._numba: Callable[..., Any] | None = None
        if device != "cuda":
            self._lib = _compile_c()
            if self._lib is not None:
                self.impl = "C (gcc -O3, OpenMP, prefetch)"
                self._tp = (ctypes.c_void_p * self.T)(*[t.data_ptr() for t in tables])
                self._mp = (ctypes.c_void_p * self.T)(*[m.data_ptr() for m in moms])
            else:
                self._numba = _numba_step()
                self.impl = "numba (njit parallel, fastmath)"
                self._nt = numba_list(tables)
                self._nm = numba_list(moms)

    def step(self, idx: torch.Tensor) -> None:
        """One step over ``idx`` (int64 [T * B], table-major, as in a KJT / TBE input)."""
        if self.device == "cuda":
            ix = idx.view(self.T, self.B)
            for t in range(self.T):
                w, m = self.tables[t], self.moms[t]
                self.out[:, t] = w.index_select(0, ix[t])
            for t in range(self.T):
                w, m = self.tables[t], self.moms[t]
                g = self.grad[:, t]
                m.index_add_(0, ix[t], g.pow(2).mean(1))
                mult = 0.04 / (m[ix[t]].sqrt() + 1e-8)
                w.index_add_(0, ix[t], -mult[:, None] * g)
            return
        if self._lib is not None:
            self._lib.gather_step(
                self._tp,
                self._mp,
                ctypes.c_void_p(idx.data_ptr()),
                self.T,
                self.B,
                self.D,
                ctypes.c_void_p(self.out.data_ptr()),
                ctypes.c_void_p(self.grad.data_ptr()),
                0.04,
                1e-8,
                self.prefetch,
                self.threads,
            )
        else:
            import numba

            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # set at import
            assert self._numba is not None  # neither C nor CUDA: numba
            self._numba(
                self._nt,
                self._nm,
                idx.view(self.T, self.B).numpy(),
                self.out.numpy(),
                self.grad.numpy(),
                np.float32(0.04),
                np.float32(1e-8),
            )

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def numba_list(tensors: list[torch.Tensor]):
    from numba.typed import List

    out = List()
    for t in tensors:
        out.append(t.numpy())
    return out
