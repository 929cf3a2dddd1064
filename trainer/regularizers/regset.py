"""Sparse and dense regularizers, applied where each belongs (see docs/regularizers.md).

:class:`RegularizerSet` is what the train loop talks to; it gathers every
regularizer in the spec behind a few hooks:

- ``fused_params()``      FBGEMM TBE kwargs (``sparse_l2`` -> weight_decay / mode, where
                          the kernel honours them; else the exact fallback of
                          :mod:`.sparse_l2` runs through the hooks below);
- ``dense_dropout``       dropout probability for the dense MLPs (``dropout``);
- ``pooled_train_scale``  per-feature factor on the pooled embeddings in training
                          (``sparse_dropout`` with ``rescale``: 1/(1-p));
- ``dense_param_groups``  torch optimizer param groups (``dense_l2``, never biases);
- ``transform(batch)``    rewrite the KJT before the model, training only
                          (``sparse_dropout``, ``sse_se``);
- ``attach(dmp)``         after sharding: hooks that record the rows each step reads;
- ``after_step(dmp)``     post-step updates of exactly those rows (``sparse_l1``,
                          ``max_norm``, ``const_norm``);
- ``on_pass_start(...)``  per-pass learning-rate factors, resets, freezing
                          (``lr_schedule``, ``freeze``); restarts ``shrink``'s counts;
                          re-draws the tables (``embedding_reset``);
- ``add_penalty(loss)``   loss terms of the pooled embeddings (``max_entropy``);
- ``on_step_end(k, n)``   after step k of n of a pass (``shrink``'s events);
- ``train_mode(p, dmp)``  training mode for pass p (batch norm frozen with the dense part);
- ``checkpoint_state()``  sharded state to checkpoint with the model (``freq_decay``'s
                          last-read clock per row); ``state_loaded(sd)`` after DCP loaded it.

``sse_graph`` is not here: it rewrites ids on the data path
(:mod:`trainer.data.graph`, :class:`trainer.data.dataset.RankData`); nor is
``min_count``, which maps rare ids to a shared row when the data is read
(:mod:`trainer.data.min_count`).

Modules: :mod:`.touched` (which rows a step touched), :mod:`.post_step` (row maps),
:mod:`.ids` (KJT rewrites), :mod:`.sparse_l2`, :mod:`.dense`, :mod:`.schedule`,
:mod:`.shrink`, :mod:`.entropy`, :mod:`.freq_decay`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from trainer.data.batch import Batch
from trainer.errors import RectrainError
from trainer.regularizers import dense, entropy, ids, post_step
from trainer.regularizers.freq_decay import FreqDecay
from trainer.regularizers.reset import EmbeddingResetter
from trainer.regularizers.schedule import PassSchedule
from trainer.regularizers.shrink import RowShrink
from trainer.regularizers.sparse_l2 import EXACT_MODES, ExactSparseL2, fused_kwargs, fused_mode_works
from trainer.regularizers.touched import RowFn, TouchedRows, find_tbes
from trainer.spec import (
    ConstNorm,
    DenseL2,
    Dropout,
    EmbeddingReset,
    JobSpec,
    MaxEntropy,
    MaxNorm,
    Shrink,
    SparseDropout,
    SparseL1,
    SparseL2,
    SseSe,
)
from trainer.spec import FreqDecay as FreqDecaySpec

_SALT_DROPOUT, _SALT_SSE = 0x5D, 0x55E
_ITER_KEY = "sparse_l2.tbe_iter"


class RegularizerSet:
    """Every regularizer of one spec, behind the train loop's hooks."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.by_type = {r.type: r for r in spec.regularizers}
        get = self.by_type.get
        self.sparse_l2: SparseL2 | None = get("sparse_l2")  # type: ignore[assignment]
        self.sparse_l1: SparseL1 | None = get("sparse_l1")  # type: ignore[assignment]
        self.max_norm: MaxNorm | None = get("max_norm")  # type: ignore[assignment]
        self.const_norm: ConstNorm | None = get("const_norm")  # type: ignore[assignment]
        self.sparse_dropout: SparseDropout | None = get("sparse_dropout")  # type: ignore[assignment]
        self.dropout: Dropout | None = get("dropout")  # type: ignore[assignment]
        self.dense_l2: DenseL2 | None = get("dense_l2")  # type: ignore[assignment]
        self.sse_se: SseSe | None = get("sse_se")  # type: ignore[assignment]
        self.max_entropy: MaxEntropy | None = get("max_entropy")  # type: ignore[assignment]
        shrink_cfg: Shrink | None = get("shrink")  # type: ignore[assignment]
        self.shrink = RowShrink(shrink_cfg) if shrink_cfg is not None else None
        fd_cfg: FreqDecaySpec | None = get("freq_decay")  # type: ignore[assignment]
        self.freq_decay = FreqDecay(fd_cfg) if fd_cfg is not None else None
        reset_cfg: EmbeddingReset | None = get("embedding_reset")  # type: ignore[assignment]
        self.reset = EmbeddingResetter(reset_cfg, spec) if reset_cfg is not None else None
        self.schedule = PassSchedule(spec, get("freeze"), get("lr_schedule"))  # type: ignore[arg-type]
        self.sparse_lr = spec.training.sparse_optimizer.lr  # current fused learning rate
        self.touched: TouchedRows | None = None
        # sparse_l2 through FBGEMM's fused weight decay, or (kernel ignores it) exactly by hand
        l2 = self.sparse_l2
        self.sparse_l2_fused = l2 is not None and fused_mode_works(
            "cuda" if spec.scaling.use_gpu else "cpu", l2.effective_mode
        )
        if l2 is not None and not self.sparse_l2_fused and l2.effective_mode not in EXACT_MODES:
            raise RectrainError(
                f"sparse_l2: mode {l2.effective_mode} needs FBGEMM's kernel, which does not apply it on "
                f"this device ({'cuda' if spec.scaling.use_gpu else 'cpu'}); rectrain computes only "
                f"{' and '.join(EXACT_MODES)} by hand: use one of those"
            )
        self.exact_l2 = (
            ExactSparseL2(l2.weight, l2.effective_mode == "decouple")
            if l2 is not None and not self.sparse_l2_fused
            else None
        )
        self._dmp: torch.nn.Module | None = None
        self._rank = 0
        self._keys: list[str] | None = None
        self._dropout_rates: list[float] = []
        self._sse_rates: list[float] = []

    @property
    def has_post_step(self) -> bool:
        return any(r is not None for r in (self.sparse_l1, self.max_norm, self.const_norm))

    # ---- configuration hooks (before sharding / optimizer creation)

    def fused_params(self) -> dict[str, Any]:
        l2 = self.sparse_l2
        if l2 is None or not self.sparse_l2_fused:
            return {}
        return fused_kwargs(l2)

    @property
    def dense_dropout(self) -> float:
        return self.dropout.p if self.dropout is not None else 0.0

    def pooled_train_scale(self, features: list[str]) -> dict[str, float]:
        """``sparse_dropout`` with ``rescale``: feature -> 1/(1-p) (features with p > 0).

        Kept ids count 1/(1-p) in their bag, so a training bag's expected sum equals the
        test bag's (inverted dropout, as ``torch.nn.Dropout``). The factor is one per
        feature (all its replicas share the rate) and pooling is SUM, so scaling the
        feature's pooled embedding is exactly the per-id ``per_sample_weights``
        rescale, without a weighted EBC and a weights tensor in the input all-to-all."""
        d = self.sparse_dropout
        if d is None or not d.rescale:
            return {}
        rates = {f: d.per_feature.get(f, d.p) for f in features}
        return {f: 1.0 / (1.0 - p) for f, p in rates.items() if p > 0}

    def dense_param_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[dict[str, Any]]:
        return dense.param_groups(named, self.dense_l2.weight if self.dense_l2 else None)

    # ---- per-step / per-pass hooks

    def _seed(self, step: int, salt: int) -> int:
        s = self.spec.training.seed
        return ((((s * 1_000_003) ^ self._rank) * 1_000_033 + step) * 131 + salt) % (2**62)

    def transform(self, batch: Batch, *, step: int) -> Batch:
        """Training only: ``sparse_dropout`` then ``sse_se`` on the batch's KJT (a new
        Batch; the input is not modified). Identity when the model is in eval mode."""
        if self.sparse_dropout is None and self.sse_se is None:
            return batch
        if self._dmp is not None and not self._dmp.training:
            return batch
        kjt = batch.sparse
        if self._keys != kjt.keys():
            self._keys = list(kjt.keys())
            if self.sparse_dropout is not None:
                self._dropout_rates = ids.rates_per_key(
                    self._keys, self.sparse_dropout.p, self.sparse_dropout.per_feature
                )
            if self.sse_se is not None:
                self._sse_rates = ids.rates_per_key(self._keys, self.sse_se.p, self.sse_se.per_feature)
        dev = kjt.values().device
        if self.sparse_dropout is not None:
            kjt = ids.sparse_dropout(
                kjt, self._dropout_rates, ids.make_generator(dev, self._seed(step, _SALT_DROPOUT))
            )
        if self.sse_se is not None:
            kjt = ids.sse_se(
                kjt,
                self._sse_rates,
                self.spec.model.hash_size,
                ids.make_generator(dev, self._seed(step, _SALT_SSE)),
            )
        return Batch(batch.dense, kjt, batch.labels, batch.weights, batch.strata)

    def attach(self, dmp: torch.nn.Module) -> None:
        """Called once after sharding (post-step regularizers install hooks here)."""
        self._dmp = dmp
        self._rank = dist.get_rank() if dist.is_initialized() else 0
        if (
            self.has_post_step
            or self.exact_l2 is not None
            or self.shrink is not None
            or self.freq_decay is not None
        ) and self.touched is None:
            self.touched = TouchedRows(
                dmp,
                grad_hook=self.exact_l2,
                forward_hook=self.freq_decay.on_forward if self.freq_decay is not None else None,
            )
            if self.freq_decay is not None:
                world = dist.get_world_size() if dist.is_initialized() else 1
                self.freq_decay.attach(dmp, self.touched, self.spec.data.batch_size * world)
        if self.max_entropy is not None:
            getattr(dmp, "module", dmp).keep_pooled = True

    def row_fn(self) -> RowFn | None:
        """The composed post-step row map at the current sparse learning rate."""
        fns: list[RowFn] = []
        if self.sparse_l1 is not None:
            t = self.sparse_lr * self.sparse_l1.weight
            fns.append(lambda w: post_step.soft_threshold(w, t))
        if self.max_norm is not None:
            c = self.max_norm.c
            fns.append(lambda w: post_step.clip_norm(w, c))
        if self.const_norm is not None:
            c2 = self.const_norm.c
            fns.append(lambda w: post_step.set_norm(w, c2))
        if not fns:
            return None

        def composed(w: torch.Tensor) -> torch.Tensor:
            for f in fns:
                w = f(w)
            return w

        return composed

    def add_penalty(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the ``max_entropy`` term of this step's pooled embeddings."""
        if self.max_entropy is None or self._dmp is None:
            return loss
        model = getattr(self._dmp, "module", self._dmp)
        pooled: dict[str, torch.Tensor] | None = model.last_pooled  # type: ignore[assignment]  # torch types nn.Module.__getattr__ as Tensor | Module
        model.last_pooled = None
        if not pooled:
            return loss
        term = entropy.penalty(pooled, self.max_entropy.weight, self.max_entropy.per_feature)
        return loss if term is None else loss + term

    def after_step(self, dmp: torch.nn.Module) -> None:
        if self.touched is None:
            return
        if self.shrink is not None:  # count this step's reads before they are cleared
            self.shrink.count(self.touched)
        # embeddings frozen (lr 0): the post-step maps must not change them either
        self.touched.finish(self.row_fn() if self.sparse_lr != 0.0 else None)
        if self.freq_decay is not None:
            self.freq_decay.end_step()

    def train_mode(self, pass_idx: int, dmp: torch.nn.Module) -> None:
        """``dmp.train()`` for pass ``pass_idx``; while ``freeze`` holds the dense part,
        its batch-norm layers stay in eval mode (normalise with the running statistics
        and leave them unchanged), so the frozen dense part is a fixed function."""
        dmp.train()
        if self.schedule.dense_frozen(pass_idx):
            for m in dmp.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def on_pass_start(
        self, pass_idx: int, dmp: torch.nn.Module, dense_opt: torch.optim.Optimizer, resumed: bool = False
    ) -> None:
        """Learning rates of pass ``pass_idx`` (and ``lr_schedule.reset`` and
        ``embedding_reset``, except when ``resumed`` inside the pass from a checkpoint)."""
        if self.reset is not None and not resumed and self.reset.due(pass_idx):
            self.reset.apply(pass_idx, dmp)
            if self.freq_decay is not None:  # re-drawn rows have never been read
                self.freq_decay.forget(self.reset.tables)
        if self.schedule.active:
            self.sparse_lr = self.schedule.apply(pass_idx, dmp, dense_opt, resumed)
        if self.shrink is not None:  # counts are per pass (and restart on resume)
            self.shrink.reset()
        if self.freq_decay is not None:  # no decay (and no reads counted) while frozen
            self.freq_decay.active = self.sparse_lr != 0.0

    # ---- state checkpointed with the model (DCP)

    def checkpoint_state(self) -> dict[str, Any]:
        """Regularizer state to save (and reshard) with the sharded model; {} if none."""
        out = self.freq_decay.state_dict() if self.freq_decay is not None else {}
        if self._kernel_iter_matters():
            # FBGEMM's COUNTER / COWCLIP / DECOUPLE_GLOBAL compare each row's prev_iter
            # (checkpointed with the AdaGrad state) with the TBE's iteration counter, which
            # TorchRec does not checkpoint: keep it here (equal on every TBE of every rank:
            # one count per forward, training and evaluation alike)
            iters = [int(m.iter.item()) for m in find_tbes(self._dmp)] if self._dmp is not None else []
            out[_ITER_KEY] = torch.tensor(max(iters, default=0), dtype=torch.int64)
        return out

    def _kernel_iter_matters(self) -> bool:
        l2 = self.sparse_l2
        return l2 is not None and self.sparse_l2_fused and l2.effective_mode not in EXACT_MODES

    def state_loaded(self, sd: dict[str, Any]) -> None:
        """``sd`` (from :meth:`checkpoint_state`, keys absent from the checkpoint left
        out) was loaded in place by DCP."""
        if _ITER_KEY in sd and self._dmp is not None:
            for m in find_tbes(self._dmp):
                m.iter.fill_(int(sd[_ITER_KEY]))
                m.iter_cpu.fill_(int(sd[_ITER_KEY]))
        if self.freq_decay is not None:
            if any(k.startswith("freq_decay.") for k in sd):
                self.freq_decay.loaded(sd)
            else:  # the checkpoint had no freq_decay state: start it afresh
                self.freq_decay.reset()

    def on_step_end(self, step_in_pass: int, steps_per_pass: int) -> int:
        """After step ``step_in_pass`` (1-based) of a pass of ``steps_per_pass``:
        ``shrink``'s events; returns how many rows were shrunk on this rank."""
        if self.shrink is None or self.touched is None or self.sparse_lr == 0.0:
            return 0
        if not self.shrink.due(step_in_pass, steps_per_pass):
            return 0
        return self.shrink.apply(self.touched)
