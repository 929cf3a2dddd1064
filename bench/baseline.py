"""The plain-PyTorch baseline path: what a user writes without TorchRec/FBGEMM
(``nn.EmbeddingBag(sparse=True)`` per table, ``torch.optim.Adagrad`` + Adam), timed
on the same batches as the other paths (:mod:`bench.paths`)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.paths import Workload, sync_device


class PlainDLRM(nn.Module):
    """What a user writes without TorchRec/FBGEMM: one ``nn.EmbeddingBag(sparse=True)``
    per table, the same dense arch, interaction and over arch as rectrain's DLRM
    (``dot``: the strict upper triangle of the Gram matrix of [dense out, pooled...]
    beside the dense output; ``concat``: the dense output and every pooled embedding
    side by side, as trainer/model/dlrm.py)."""

    def __init__(self, w: Workload) -> None:
        super().__init__()
        self.embs = nn.ModuleList(
            nn.EmbeddingBag(w.rows, w.dim, mode="sum", sparse=True) for _ in range(w.tables)
        )
        layers: list[nn.Module] = []
        d_in = w.dense
        for h in (*w.dense_arch, w.dim):
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        self.dense_arch = nn.Sequential(*layers)
        n_vec = w.tables + 1
        self.concat = w.interaction == "concat"
        self.register_buffer("triu", torch.triu_indices(n_vec, n_vec, offset=1), persistent=False)
        layers = []
        d_in = w.dim + (w.tables * w.dim if self.concat else n_vec * (n_vec - 1) // 2)
        for h in w.over_arch:
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        layers.append(nn.Linear(d_in, 1))
        self.over_arch = nn.Sequential(*layers)
        self.T, self.B = w.tables, w.batch

    def forward(
        self, dense: torch.Tensor, idx: torch.Tensor, per_table_offsets: torch.Tensor
    ) -> torch.Tensor:
        d = self.dense_arch(dense)
        ix = idx.view(self.T, -1)
        vecs = [d] + [emb(ix[t], per_table_offsets) for t, emb in enumerate(self.embs)]
        if self.concat:
            return self.over_arch(torch.cat(vecs, dim=1)).squeeze(1)
        stacked = torch.stack(vecs, dim=1)
        gram = torch.bmm(stacked, stacked.transpose(1, 2))
        triu: torch.Tensor = self.triu  # type: ignore[assignment]  # a buffer
        return self.over_arch(torch.cat([d, gram[:, triu[0], triu[1]]], dim=1)).squeeze(1)


class BaselinePath:
    """PlainDLRM + ``torch.optim.Adagrad`` on the embeddings (sparse gradients) + Adam on
    the dense layers (rectrain's default dense optimizer)."""

    def __init__(self, w: Workload, device: str) -> None:
        self.w, self.device = w, device
        self.model = PlainDLRM(w).to(device)
        self.sparse_opt = torch.optim.Adagrad(list(self.model.embs.parameters()), lr=0.04, eps=1e-8)
        dense = [p for n, p in self.model.named_parameters() if not n.startswith("embs.")]
        self.dense_opt = torch.optim.Adam(dense, lr=1e-3)
        self.offsets = torch.arange(w.batch, device=device)
        self.inputs: list[tuple[torch.Tensor, ...]] = []

    def set_batches(self, batches: list[Any]) -> None:
        self.inputs = [
            (b.dense.to(self.device), b.sparse.values().to(self.device), b.labels.to(self.device))
            for b in batches
        ]

    def loop(self, n: int) -> tuple[int, float]:
        sync_device(self.device)
        t0 = time.perf_counter()
        for i in range(n):
            dense, idx, labels = self.inputs[i % len(self.inputs)]
            logits = self.model(dense, idx, self.offsets)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            self.sparse_opt.zero_grad(set_to_none=True)
            self.dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.sparse_opt.step()
            self.dense_opt.step()
        sync_device(self.device)
        return n * self.w.batch, time.perf_counter() - t0
