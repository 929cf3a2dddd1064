"""``sparse_l2``: L2 on the embedding rows a step activates, exactly.

FBGEMM's row-wise AdaGrad has it built in (``weight_decay`` + ``weight_decay_mode``
through ``fused_params``), with these semantics for each activated row (g: the
row's gradient summed over the batch, G: its AdaGrad accumulator)::

    L2:        g' = g + lambda * w;  G += mean_d(g'^2);  w <- w - lr * g' / (sqrt(G) + eps)
    DECOUPLE:  G += mean_d(g^2);     w <- (1 - lr * lambda) * w - lr * g / (sqrt(G) + eps)

but the CPU kernel of fbgemm-gpu-cpu 1.8 ignores ``weight_decay`` in both modes (a
silent no-op; see tests/regularizers/test_sparse_rows.py). :func:`fused_weight_decay_works`
probes the kernel once per device type and mode on a 4-row TBE; where it works the
fused path is used, else :class:`ExactSparseL2` does the same update itself: a hook
on the gradient of each TBE's pooled output (which autograd runs just before the
TBE's fused backward) rebuilds the row gradients of the rows in the batch, reads
their weights and accumulators before FBGEMM touches them, and computes the
formula above; the rows are written back after the step, replacing FBGEMM's
plain AdaGrad result for those rows only. Cost: O(ids x D) per step.

With ``gradient_clipping`` the kernel clips every *occurrence* of a row before
summing (the bag's output gradient, elementwise to [-max_gradient, max_gradient],
then mean / per-sample-weight scaling), not the summed row gradient; an id twice in
one bag, or in two bags, adds two clipped gradients. The fallback does the same.
"""

from __future__ import annotations

import functools

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    CounterBasedRegularizationDefinition,
    CounterWeightDecayMode,
    CowClipDefinition,
    GlobalWeightDecayDefinition,
    SplitTableBatchedEmbeddingBagsCodegen,
    WeightDecayMode,  # 1.6 and 1.8
)

from trainer.errors import RectrainError
from trainer.regularizers.touched import Call, TBERows
from trainer.spec import SparseL2

MODES = {
    "l2": WeightDecayMode.L2,
    "decouple": WeightDecayMode.DECOUPLE,
    "decouple_global": WeightDecayMode.DECOUPLE_GLOBAL,
    "counter": WeightDecayMode.COUNTER,
    "cowclip": WeightDecayMode.COWCLIP,
}
COUNTER_DECAY = {
    "none": CounterWeightDecayMode.NONE,
    "l2": CounterWeightDecayMode.L2,
    "decouple": CounterWeightDecayMode.DECOUPLE,
}
EXACT_MODES = ("l2", "decouple")  # the modes the fallback computes by hand


def weight_decay_mode(decouple: bool) -> WeightDecayMode:
    return WeightDecayMode.DECOUPLE if decouple else WeightDecayMode.L2


def fused_kwargs(cfg: SparseL2) -> dict:
    """FBGEMM TBE kwargs (TorchRec ``fused_params``) of ``sparse_l2`` in its mode."""
    mode = cfg.effective_mode
    kw: dict = {"weight_decay": cfg.weight, "weight_decay_mode": MODES[mode]}
    if mode == "counter":
        kw["counter_based_regularization"] = CounterBasedRegularizationDefinition(
            counter_weight_decay_mode=COUNTER_DECAY[cfg.effective_counter_decay],
            counter_halflife=cfg.counter_halflife if cfg.counter_halflife is not None else -1,
        )
    elif mode == "cowclip":
        kw["cowclip_regularization"] = CowClipDefinition(
            counter_weight_decay_mode=COUNTER_DECAY[cfg.effective_counter_decay],
            counter_halflife=cfg.counter_halflife if cfg.counter_halflife is not None else -1,
            weight_norm_coefficient=cfg.weight_norm_coefficient or 0.0,
            lower_bound=cfg.lower_bound or 0.0,
        )
    elif mode == "decouple_global":
        kw["global_weight_decay"] = GlobalWeightDecayDefinition(
            start_iter=0, lower_bound=cfg.gwd_lower_bound or 0.0
        )
    return kw


def fused_weight_decay_works(device_type: str, decouple: bool) -> bool:
    """Does this build's EXACT_ROWWISE_ADAGRAD kernel apply ``weight_decay``?"""
    return fused_mode_works(device_type, "decouple" if decouple else "l2")


@functools.cache
def fused_mode_works(device_type: str, mode: str) -> bool:
    """Does this build's EXACT_ROWWISE_ADAGRAD kernel on ``device_type`` apply
    ``sparse_l2`` in ``mode`` (a 4-row TBE, one step with and without the decay)?"""
    probe = SparseL2(
        type="sparse_l2",
        weight=0.5,
        mode=mode,
        counter_halflife=2,
        weight_norm_coefficient=0.1,  # type: ignore[arg-type]
    )
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    dev = torch.device(device_type)
    loc, cdev = (
        (EmbeddingLocation.DEVICE, ComputeDevice.CUDA)
        if device_type == "cuda"
        else (EmbeddingLocation.HOST, ComputeDevice.CPU)
    )

    def step(wd: float) -> torch.Tensor:
        kw = fused_kwargs(probe) if wd else {}
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(4, 4, loc, cdev)],
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
            learning_rate=0.5,
            eps=1e-8,
            device=dev,
            **kw,
        )
        with torch.no_grad():
            tbe.split_embedding_weights()[0].copy_(torch.full((4, 4), 0.5))
        out = tbe(torch.tensor([1], device=dev), torch.tensor([0, 1], device=dev))
        out.sum().backward()
        return tbe.split_embedding_weights()[0][1].detach().cpu().clone()

    try:
        return not torch.equal(step(0.0), step(0.5))
    except Exception:  # no kernel for this device: use the exact fallback
        return False


class ExactSparseL2:
    """The row-wise AdaGrad update with L2 / decoupled decay, for the rows of one
    TBE call, computed from the pooled-output gradient (see the module docstring)."""

    def __init__(self, weight: float, decouple: bool) -> None:
        self.weight = weight
        self.decouple = decouple

    def __call__(self, entry: TBERows, call: Call, grad_output: torch.Tensor) -> None:
        tbe = entry.module
        if call.bspr is not None:
            raise RectrainError("sparse_l2: variable batch size per feature (VBE) is not supported")
        if len(entry.calls) != 1:
            raise RectrainError("sparse_l2: a TBE was called more than once in one training step")
        lin = entry.linear(call)
        if lin.numel() == 0:
            return
        rows, inverse = torch.unique(lin, return_inverse=True)
        with torch.no_grad():
            g_ids = self._grad_per_id(entry, call, grad_output)
            g = torch.zeros(rows.numel(), g_ids.shape[1], dtype=torch.float32, device=g_ids.device)
            g.index_add_(0, inverse, g_ids.float())
            w0, state0 = entry.read(rows)
            args = tbe.optimizer_args
            lr = float(tbe.learning_rate_tensor.item())
            lam = self.weight
            g_state = g if self.decouple else g + lam * w0
            state = state0 + (g_state * g_state).mean(dim=1)
            mult = (lr / (state.sqrt() + args.eps)).unsqueeze(1)
            correction = (1.0 - lr * lam) if self.decouple else (1.0 - mult * lam)
            w = correction * w0 - mult * g
            entry.pending.append((rows, w.to(w0.dtype), state.to(state0.dtype)))

    @staticmethod
    def _grad_per_id(entry: TBERows, call: Call, grad_output: torch.Tensor) -> torch.Tensor:
        """[ids, D]: the gradient each id's row receives from its bag (clipped like
        the kernel clips it when ``gradient_clipping`` is on)."""
        tbe = entry.module
        num_features = entry.feature_base.numel()
        d_offsets = tbe.D_offsets.tolist()
        dims = {d_offsets[f + 1] - d_offsets[f] for f in range(num_features)}
        if len(dims) != 1:
            raise RectrainError("sparse_l2: tables of one TBE with different embedding_dim")
        (d,) = dims
        batch = grad_output.shape[0]
        lengths = (call.offsets[1:] - call.offsets[:-1]).long()
        bag = torch.arange(lengths.numel(), device=lengths.device).repeat_interleave(
            lengths, output_size=call.indices.numel()
        )  # bag = f * B + b
        per_bag = grad_output.reshape(batch, num_features, d).transpose(0, 1).reshape(num_features * batch, d)
        args = tbe.optimizer_args
        if args.gradient_clipping:
            # as FBGEMM's kernel: clip each occurrence's gradient (its bag's output
            # gradient, before the mean / per-sample-weight scaling), then sum per row
            per_bag = per_bag.clamp(-args.max_gradient, args.max_gradient)
        g = per_bag.index_select(0, bag)
        if tbe.pooling_mode == PoolingMode.MEAN:
            g = g / lengths.index_select(0, bag).clamp_min(1).unsqueeze(1).to(g.dtype)
        elif tbe.pooling_mode != PoolingMode.SUM:
            raise RectrainError(f"sparse_l2: pooling {tbe.pooling_mode} is not supported")
        if call.per_sample_weights is not None:
            g = g * call.per_sample_weights.unsqueeze(1).to(g.dtype)
        return g
