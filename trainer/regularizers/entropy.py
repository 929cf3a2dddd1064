"""``max_entropy``: a loss term that rewards spreading embedding energy over all
dimensions.

For every table t (each replica of each feature) and the worker's training batch,
with e_t,b the pooled (sum) embedding of example b from table t (for a single-valued
feature: the row of its id)::

    E_t,d = sum_b e_t,b,d^2                      (energy of dimension d)
    p_t,d = (E_t,d + tiny) / sum_d' (E_t,d' + tiny)
    H_t   = - sum_d p_t,d log p_t,d              (0 <= H_t <= log D)
    loss += sum_t lambda_t * (log D - H_t)       (0 when the energy is uniform)

The term is a function of the pooled embeddings, so ``loss.backward()`` carries its
gradient through TorchRec's output all-to-all into each TBE's fused backward: the
rows get it inside FBGEMM's row-wise AdaGrad update together with the loss's, like
any other part of the loss -- no extra hook or post-step. ``tiny`` (1e-12) keeps
log finite for an empty dimension (zero energy everywhere: p uniform, H = log D).

Sharding: the pooled embeddings each rank sees are those of its own batch for
every table, whatever the sharding plan (row-wise shards are reduce-scattered to
full sums first), so the term is the same under any plan; its row gradients from
all ranks are summed on the row's owner exactly like the loss's.
"""

from __future__ import annotations

import math

import torch

from trainer.regularizers.ids import feature_of

TINY = 1e-12


def entropy_gap(pooled: torch.Tensor) -> torch.Tensor:
    """log D - H(p) of one table's pooled embeddings ``[B, D]`` (scalar, differentiable)."""
    energy = (pooled.float() ** 2).sum(dim=0) + TINY
    p = energy / energy.sum()
    return math.log(pooled.shape[1]) + (p * p.log()).sum()


def penalty(
    pooled: dict[str, torch.Tensor], weight: float, per_feature: dict[str, float]
) -> torch.Tensor | None:
    """sum over tables (KJT keys) of lambda_feature * (log D - H)."""
    total: torch.Tensor | None = None
    for key, e in pooled.items():
        lam = per_feature.get(feature_of(key), weight)
        if lam == 0.0 or e.numel() == 0:
            continue
        term = lam * entropy_gap(e)
        total = term if total is None else total + term
    return total
