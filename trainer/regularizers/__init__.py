"""Sparse and dense regularizers, applied where each belongs (see DESIGN.md).

:class:`RegularizerSet` is what the train loop talks to; it gathers every
regularizer in the spec behind a few hooks:

- ``fused_params()``      FBGEMM TBE kwargs (e.g. ``sparse_l2`` -> weight_decay);
- ``dense_dropout``       dropout probability for the dense MLPs;
- ``dense_param_groups``  torch optimizer param groups (weight decay, never biases);
- ``transform(batch)``    rewrite the KJT before the model (training only);
- ``after_step(dmp)``     post-step row updates on the rows this step touched;
- ``on_pass_start(...)``  per-pass learning-rate factors, resets, freezing.
"""

from __future__ import annotations

from typing import Any

import torch
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

from trainer.data.dataset import Batch
from trainer.spec import JobSpec, SparseL2


class RegularizerSet:
    """Every regularizer of one spec, behind the train loop's hooks."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.by_type = {r.type: r for r in spec.regularizers}

    # ---- configuration hooks (before sharding / optimizer creation)

    def fused_params(self) -> dict[str, Any]:
        l2 = self.by_type.get("sparse_l2")
        if isinstance(l2, SparseL2):
            return {
                "weight_decay": l2.weight,
                "weight_decay_mode": WeightDecayMode.DECOUPLE if l2.decouple else WeightDecayMode.L2,
            }
        return {}

    @property
    def dense_dropout(self) -> float:
        return 0.0

    def dense_param_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[dict[str, Any]]:
        return [{"params": [p for _, p in named]}]

    # ---- per-step / per-pass hooks

    def transform(self, batch: Batch, *, step: int) -> Batch:
        return batch

    def attach(self, dmp: torch.nn.Module) -> None:
        """Called once after sharding (post-step regularizers install hooks here)."""

    def after_step(self, dmp: torch.nn.Module) -> None:
        pass

    def on_pass_start(self, pass_idx: int, dmp: torch.nn.Module, dense_opt: torch.optim.Optimizer) -> None:
        pass
