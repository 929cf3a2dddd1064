"""DLRM's dot interaction as one autograd function, without copies on the hot path.

For the vectors ``X = [d, e_1, ..., e_F]`` of an example (``d``: dense-arch output,
``e_f``: pooled embedding of feature ``f``) the interaction is the upper triangle of
the Gram matrix ``G = X X^T`` (pairs ``i < j``, row-major), and the over arch sees
``[d | triu(G)]``.

The plain autograd version (``torch.stack`` of the vectors, ``bmm`` for ``G``,
``index_select`` of the triangle, ``torch.cat`` with ``d``) spends a third of a CPU
step copying and in its backward does two ``bmm`` (``dG X`` and ``dG^T X``). Here:

- the pooled embeddings are read as a ``[B, F, D]`` view of TorchRec's
  ``KeyedTensor.values()`` (no stack), and ``d`` is kept apart: the Gram matrix of
  ``X`` splits into ``E E^T`` (one ``bmm``) and ``E d`` (one batched mat-vec);
- the output ``[d | E d | triu(E E^T)]`` is written into one preallocated buffer in
  the same order as the plain version (so an over arch initialised the same way sees
  the same inputs);
- the backward uses that only ``i < j`` entries carry gradient: with ``S = dG + dG^T``
  (``dG`` scattered from the triangle), ``dE = S E + dg (x) d`` and
  ``dd = d_out[:, :D] + dg^T E`` -- one ``bmm`` of ``[F, F] x [F, D]``.

``tests/trainer/test_interaction.py`` checks forward and backward against the plain
autograd computation in float64.
"""

from __future__ import annotations

import torch


def triu_flat_index(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Flat positions of the strict upper triangle of an ``n x n`` matrix, row-major."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0] * n + iu[1]


class _DotInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dense: torch.Tensor | None, emb: torch.Tensor, triu: torch.Tensor) -> torch.Tensor:
        # dense: [B, D] or None; emb: [B, F, D]; triu: flat strict-upper positions of [F, F]
        b, f, dim = emb.shape
        n_pairs = triu.numel()
        width = (dim + f if dense is not None else 0) + n_pairs
        out = emb.new_empty((b, width))
        gram = torch.bmm(emb, emb.transpose(1, 2))  # [B, F, F]
        col = 0
        if dense is not None:
            out[:, :dim].copy_(dense)
            out[:, dim : dim + f].copy_(torch.bmm(emb, dense.unsqueeze(2)).squeeze(2))
            col = dim + f
        out[:, col:].copy_(gram.view(b, f * f).index_select(1, triu))
        ctx.save_for_backward(dense if dense is not None else emb.new_empty(0), emb, triu)
        ctx.has_dense = dense is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        dense, emb, triu = ctx.saved_tensors
        b, f, dim = emb.shape
        grad_out = grad_out.contiguous()
        col = dim + f if ctx.has_dense else 0
        d_gram = emb.new_zeros((b, f * f))
        d_gram.index_copy_(1, triu, grad_out[:, col:])
        d_gram = d_gram.view(b, f, f)
        sym = d_gram + d_gram.transpose(1, 2)
        grad_emb = torch.bmm(sym, emb)
        grad_dense = None
        if ctx.has_dense:
            dg = grad_out[:, dim : dim + f]  # d out / d (E d): [B, F]
            grad_emb.add_(dg.unsqueeze(2) * dense.unsqueeze(1))
            grad_dense = grad_out[:, :dim] + torch.bmm(dg.unsqueeze(1), emb).squeeze(1)
        return grad_dense, grad_emb, None


def dot_interaction(dense: torch.Tensor | None, emb: torch.Tensor, triu: torch.Tensor) -> torch.Tensor:
    """``[dense | E dense | triu(E E^T)]`` (or ``triu(E E^T)`` without dense) for
    ``emb`` of shape ``[B, F, D]``; ``triu`` from :func:`triu_flat_index` (F)."""
    return _DotInteraction.apply(dense, emb, triu)
