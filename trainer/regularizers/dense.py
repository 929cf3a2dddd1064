"""Dense-side regularizers: ``dense_l2`` param groups and ``dropout``.

``dense_l2`` puts every dense weight matrix (``ndim >= 2``) in a group with the
optimizer's ``weight_decay = lambda`` and everything else -- biases, batch-norm
scales and shifts, any 1-D parameter -- in a group with ``weight_decay = 0``.
Embedding tables never reach the dense optimizer (their update is fused), and are
refused here should one ever be passed.
"""

from __future__ import annotations

from typing import Any

import torch


def is_decayed(name: str, p: torch.nn.Parameter) -> bool:
    """Weights are decayed; biases (and every 1-D parameter) never are."""
    return p.ndim >= 2 and not name.endswith("bias") and "embedding" not in name and ".ebc." not in f".{name}"


def param_groups(named: list[tuple[str, torch.nn.Parameter]], weight: float | None) -> list[dict[str, Any]]:
    if not weight:
        return [{"params": [p for _, p in named], "name": "dense"}]
    decay = [p for n, p in named if is_decayed(n, p)]
    keep = [p for n, p in named if not is_decayed(n, p)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight, "name": "dense_decay"})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0, "name": "dense_no_decay"})
    return groups
