"""Helpers for the regularizer tests: a tiny spec, a single-process Trainer (real
TorchRec DMP + FBGEMM fused TBE, gloo world of size 1), and an independent plain
PyTorch reference of one step (EmbeddingBag forward of the same DLRM, autograd
gradients, row-wise AdaGrad written out by hand)."""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedTensor

from trainer.data.batch import Batch
from trainer.loop import Trainer
from trainer.model.dlrm import DLRM
from trainer.model.sharding import dense_named_parameters
from trainer.regularizers.touched import embedding_kernels
from trainer.spec import JobSpec, parse_spec

logging.getLogger("torchrec").setLevel(logging.ERROR)
logging.getLogger().setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

HASH = 400
DIM = 8
LR = 0.1
EPS = 1e-8


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def spec_dict(regularizers: list[dict] | None = None, **over: Any) -> dict:
    base = {
        "model": {"embedding_dim": DIM, "hash_size": HASH, "dense_arch": [8, DIM], "over_arch": [8]},
        "data": {
            "synthetic": {
                "examples_per_day": 512,
                "num_users": 300,
                "num_ads": 150,
                "num_context_features": 1,
                "history_length": 3,
                "num_dense_features": 4,
                "seed": 3,
            },
            "batch_size": 64,
            "prefetch_batches": 0,
            "shuffle": "none",
            "frequent_min_count": 20,
            "rare_max_count": 2,
        },
        "training": {
            "num_passes": 2,
            "sparse_optimizer": {"lr": LR, "eps": EPS},
            "dense_optimizer": {"type": "sgd", "lr": 0.05},
            "seed": 7,
        },
        "metrics": {"window_size": 128, "report_every_steps": 1000},
        "regularizers": regularizers or [],
    }
    return _merge(base, over)


def make_spec(regularizers: list[dict] | None = None, **over: Any) -> JobSpec:
    return parse_spec(spec_dict(regularizers, **over))


# --------------------------------------------------------------------------- live state


def tbe_tables(dmp: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """KJT key -> (live weight view [rows, D], live row-wise AdaGrad state view [rows])."""
    out = {}
    for m in embedding_kernels(dmp):
        emb, cfg = m._emb_module, m.config
        weights = emb.split_embedding_weights()
        states = emb.split_optimizer_states()
        for t, table in enumerate(cfg.embedding_tables):
            (key,) = table.feature_names
            out[key] = (weights[t], states[t][0])
    return out


def snapshot(dmp: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: w.detach().clone() for k, (w, _) in tbe_tables(dmp).items()}


def momenta(dmp: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: s.detach().clone() for k, (_, s) in tbe_tables(dmp).items()}


def dense_snapshot(tr: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in dense_named_parameters(tr.dmp)}


def train_losses(tr: Trainer, steps: int) -> list[float]:
    """``steps`` training steps of pass 0; the (unweighted) BCE loss of each."""
    out = []
    for i, batch in enumerate(tr.data.train_batches(0)):
        if i == steps:
            break
        logits = tr.train_step(batch)
        out.append(float(F.binary_cross_entropy_with_logits(logits, batch.labels)))
    return out


def first_batch(tr: Trainer, index: int = 0) -> Batch:
    for i, b in enumerate(tr.data.train_batches(0)):
        if i == index:
            return b
    raise IndexError(index)


def rows_of(batch: Batch, key: str) -> torch.Tensor:
    return torch.unique(batch.sparse[key].values().long())


# --------------------------------------------------------------------------- reference


class RefEBC(torch.nn.Module):
    """Plain torch EmbeddingBag(sum) per KJT key, on copies of the tables; ``id_weight``
    (key -> w): every id of that key enters its bag with per-sample weight w."""

    def __init__(self, tables: dict[str, torch.Tensor], id_weight: dict[str, float] | None = None) -> None:
        super().__init__()
        self.w = {k: v.detach().clone().requires_grad_(True) for k, v in tables.items()}
        self.id_weight = id_weight or {}

    def forward(self, kjt) -> KeyedTensor:
        """The pooled outputs as TorchRec's EBC returns them: a KeyedTensor."""
        out = {}
        for k, jt in kjt.to_dict().items():
            values = jt.values().long()
            psw = None
            if k in self.id_weight:
                psw = torch.full((values.numel(),), self.id_weight[k], dtype=self.w[k].dtype)
            out[k] = F.embedding_bag(
                values,
                self.w[k],
                jt.offsets().long(),
                mode="sum",
                include_last_offset=True,
                per_sample_weights=psw,
            )
        return KeyedTensor.from_tensor_list(list(out), list(out.values()))


def dropout_id_weights(spec: JobSpec, keys: list[str]) -> dict[str, float]:
    """Per-sample weight of a kept id per KJT key in training: 1/(1-p) of its feature
    under ``sparse_dropout`` with ``rescale``, else none."""
    reg = next((r for r in spec.regularizers if r.type == "sparse_dropout"), None)
    if reg is None or not reg.rescale:
        return {}
    out = {}
    for key in keys:
        p = reg.per_feature.get(key.rsplit("__r", 1)[0], reg.p)
        if p > 0:
            out[key] = 1.0 / (1.0 - p)
    return out


def reference_model(tr: Trainer, train: bool = True) -> DLRM:
    """A plain-torch DLRM (``RefEBC`` tables) with the trainer's *current* weights, no
    dropout; ``train=False``: eval-mode batch norm and no sparse_dropout rescale, with
    ``train`` the kept ids of a rescaled ``sparse_dropout`` enter their bags with
    per-sample weight 1/(1-p)."""
    ref = DLRM(tr.spec, dense_dropout=0.0)
    tables = snapshot(tr.dmp)
    ref.ebc = RefEBC(tables, dropout_id_weights(tr.spec, list(tables)) if train else None)
    live = dict(dense_named_parameters(tr.dmp))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(live[n])
    ref.train(train)
    return ref


def reference_grads(
    tr: Trainer, batch: Batch, train: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Embedding-table and dense gradients of the train loss, computed in plain torch
    from the trainer's *current* weights (see :func:`reference_model`)."""
    ref = reference_model(tr, train)
    logits = ref(batch.dense, batch.sparse)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights)
    loss.backward()
    emb = {k: w.grad.detach().clone() for k, w in ref.ebc.w.items()}
    dense = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    return emb, dense


def rowwise_adagrad(
    w: torch.Tensor,
    g: torch.Tensor,
    G: torch.Tensor,
    *,
    lr: float,
    eps: float = EPS,
    wd: float = 0.0,
    mode: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One EXACT_ROWWISE_ADAGRAD step on rows ``w`` with summed row gradients ``g``.

    G += mean_d(g'^2); w -= lr * g' / (sqrt(G) + eps) with g' = g + wd * w for mode
    ``l2``; for ``decouple``: w <- (1 - lr * wd) * w - lr * g / (sqrt(G) + eps)."""
    w, g, G = w.double(), g.double(), G.double()
    if mode == "l2":
        g = g + wd * w
    G_new = G + (g * g).mean(dim=1)
    step = (lr / (G_new.sqrt() + eps))[:, None] * g
    if mode == "decouple":
        w_new = (1 - lr * wd) * w - step
    else:
        w_new = w - step
    return w_new, G_new


def assert_rows(actual: torch.Tensor, expected: torch.Tensor, atol: float = 2e-6, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- 2 ranks by hand

TWO_RANK_DATA = {"synthetic": {"examples_per_day": 1280}, "test_days": []}  # 10 steps a pass per rank


def two_rank_dict(regularizers: list[dict]) -> dict:
    """The tiny spec on 2 workers (its 4 tables table-wise over both ranks)."""
    return spec_dict(regularizers, data=TWO_RANK_DATA, scaling={"num_workers": 2})


def rank_passes(data):
    """A rank's training batches, pass after pass (as tests/regularizers/two_rank_worker.py reads them)."""
    p = 0
    while True:
        yield from data.train_batches(p)
        p += 1


def two_rank_reference(spec: JobSpec, init_tables, init_dense, world: int, steps: int, update) -> dict:
    """Plain float64 PyTorch: the same DLRM trained on every rank's batches by hand. Per
    step, the gradient of the mean of the ranks' losses (dense and embeddings alike, as
    the trainer's DDP + TorchRec give it), SGD on the dense part, and for every table
    ``k`` the rows read by any rank: ``w[rows] <- update(k, rows, w[rows], g[rows], t)``
    (t: the 1-based step). Returns the tables."""
    from trainer.data.dataset import RankData

    model = DLRM(spec, dense_dropout=0.0)
    model.ebc = RefEBC({k: v.double() for k, v in init_tables.items()})
    model.double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in init_dense:
                p.copy_(init_dense[n])
    model.train()
    w = model.ebc.w
    streams = [rank_passes(RankData(spec, r, world)) for r in range(world)]
    dense = [p for n, p in model.named_parameters() if n in init_dense]
    lr_dense = spec.training.dense_optimizer.lr
    assert spec.training.dense_optimizer.type.value == "sgd"
    for t in range(1, steps + 1):
        batches = [next(s) for s in streams]
        for p in [*model.parameters(), *w.values()]:  # RefEBC's tables are not module parameters
            p.grad = None
        losses = []
        for b in batches:
            logits = model(b.dense.double(), b.sparse)
            wt = None if b.weights is None else b.weights.double()
            losses.append(F.binary_cross_entropy_with_logits(logits, b.labels.double(), weight=wt))
        (sum(losses) / world).backward()
        with torch.no_grad():
            for p in dense:
                p -= lr_dense * p.grad
            for k, table in w.items():
                rows = torch.unique(torch.cat([b.sparse[k].values().long() for b in batches]))
                table[rows] = update(k, rows, table[rows], table.grad[rows], t)
    return {k: v.detach() for k, v in w.items()}
