"""Per-pass optimizer control: ``freeze`` and ``lr_schedule``.

At the start of pass k (and again when a run resumes inside pass k) the learning
rates become ``base_lr * factor_k * (0 if frozen)`` for the sparse (FBGEMM fused)
and the dense optimizer (a frozen dense part also keeps its batch-norm layers in eval
mode while training: running statistics used, not updated; see
``RegularizerSet.train_mode``); ``lr_schedule.reset`` zeroes the row-wise AdaGrad
accumulators (and the dense optimizer's state) at the start of every pass after the
first. A learning rate of 0 leaves FBGEMM's row-wise AdaGrad update an exact no-op
on the weights (``w <- 1 * w - 0 * g``), also with ``sparse_l2`` in either mode.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from trainer.regularizers.touched import find_tbes
from trainer.spec import Freeze, FreezeWhat, JobSpec, LrSchedule


def _factor(factors: list[float], pass_idx: int) -> float:
    if not factors:
        return 1.0
    return factors[min(pass_idx, len(factors) - 1)]


class PassSchedule:
    def __init__(self, spec: JobSpec, freeze: Freeze | None, lr: LrSchedule | None) -> None:
        self.sparse_base = spec.training.sparse_optimizer.lr
        self.dense_base = spec.training.dense_optimizer.lr
        self.freeze = freeze
        self.lr = lr

    @property
    def active(self) -> bool:
        return self.freeze is not None or self.lr is not None

    def dense_frozen(self, pass_idx: int) -> bool:
        f = self.freeze
        return f is not None and pass_idx >= f.from_pass and f.what in (FreezeWhat.DENSE, FreezeWhat.BOTH)

    def factors(self, pass_idx: int) -> tuple[float, float]:
        """(sparse, dense) learning-rate factors of pass ``pass_idx``."""
        sparse = _factor(self.lr.sparse, pass_idx) if self.lr else 1.0
        dense = _factor(self.lr.dense, pass_idx) if self.lr else 1.0
        f = self.freeze
        if f is not None and pass_idx >= f.from_pass:
            if f.what in (FreezeWhat.EMBEDDINGS, FreezeWhat.BOTH):
                sparse = 0.0
            if f.what in (FreezeWhat.DENSE, FreezeWhat.BOTH):
                dense = 0.0
        return sparse, dense

    def apply(
        self, pass_idx: int, dmp: torch.nn.Module, dense_opt: torch.optim.Optimizer, resumed: bool
    ) -> float:
        """Set this pass's learning rates (and resets); return the sparse lr."""
        if self.lr is not None and self.lr.reset and pass_idx > 0 and not resumed:
            reset_optimizer_state(dmp, dense_opt)
        sparse, dense = self.factors(pass_idx)
        sparse_lr = self.sparse_base * sparse
        set_sparse_lr(dmp, sparse_lr)
        for g in dense_opt.param_groups:
            g["lr"] = self.dense_base * dense
        return sparse_lr


def set_sparse_lr(dmp: torch.nn.Module, lr: float) -> None:
    """The fused optimizer's param groups and every TBE's learning-rate tensor (the
    loop never calls ``fused_optimizer.step()``, which would otherwise sync them)."""
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is not None:
        for g in fused.param_groups:
            g["lr"] = lr
    for m in find_tbes(dmp):
        m.set_learning_rate(lr)


def reset_sparse_optimizer_state(dmp: torch.nn.Module, tables: Collection[str] | None = None) -> None:
    """Zero the fused row-wise AdaGrad accumulators (local shards, in place); with
    ``tables``, only those of the tables so named (``t_<feature>__r<replica>``)."""
    with torch.no_grad():
        # DistributedModelParallel.fused_optimizer (torch types Module.__getattr__ as Tensor | Module)
        for key, states in dmp.fused_optimizer.state_dict()["state"].items():  # type: ignore[union-attr]
            if (
                tables is not None and key.rsplit(".", 2)[-2] not in tables
            ):  # "ebc.embedding_bags.<table>.weight"
                continue
            for st in states.values():
                for shard in getattr(st, "local_shards", lambda: [])():
                    shard.tensor.zero_()


def reset_optimizer_state(dmp: torch.nn.Module, dense_opt: torch.optim.Optimizer) -> None:
    """Start both optimizers' state afresh (the fused AdaGrad accumulators and the dense
    optimizer's moments), keeping every weight: what ``lr_schedule.reset`` and
    ``training.reset_lr_each_pass`` both do at the start of each pass after the first."""
    reset_sparse_optimizer_state(dmp)
    dense_opt.state.clear()
