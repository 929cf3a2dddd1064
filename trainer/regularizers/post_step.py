"""Post-step sparse regularizers: row maps applied to the rows a step touched.

Each is a function of a ``[n, D]`` block of touched rows (see :mod:`.touched`);
they run after the fused FBGEMM update, in this order: ``sparse_l1``, ``max_norm``,
``const_norm``.
"""

from __future__ import annotations

import torch


def soft_threshold(rows: torch.Tensor, t: float) -> torch.Tensor:
    """sparse_l1: ``sign(w) * max(|w| - t, 0)`` per element (towards 0, never across)."""
    return rows.sign() * (rows.abs() - t).clamp_min(0.0)


def clip_norm(rows: torch.Tensor, c: float) -> torch.Tensor:
    """max_norm: rows with L2 norm > c are rescaled to norm c; others unchanged."""
    norm = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    over = norm > c
    if not bool(over.any()):
        return rows
    return torch.where(over, rows * (c / norm.clamp_min(torch.finfo(rows.dtype).tiny)), rows)


def set_norm(rows: torch.Tensor, c: float) -> torch.Tensor:
    """const_norm: every non-zero row is rescaled to L2 norm exactly c."""
    norm = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return torch.where(norm > 0, rows * (c / norm.clamp_min(torch.finfo(rows.dtype).tiny)), rows)
