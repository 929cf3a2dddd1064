"""DLRM-style model: dense arch, TorchRec EmbeddingBagCollection, interaction, over arch.

One embedding table per sparse feature per replica; the replicas' pooled outputs
of a feature are summed. The EBC is built on the ``meta`` device and materialised
by DistributedModelParallel on the shards each rank owns (see ``sharding.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.data.dataset import table_feature_name
from trainer.spec import Interaction, JobSpec


def table_name(feature: str, replica: int) -> str:
    return f"t_{feature}__r{replica}"


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout] per hidden layer."""

    def __init__(
        self,
        in_features: int,
        sizes: list[int],
        *,
        batch_norm: bool,
        dropout: float,
        xavier: bool,
        final_activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        for i, out in enumerate(sizes):
            lin = nn.Linear(in_features, out)
            if xavier:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            layers.append(lin)
            last = i == len(sizes) - 1
            if not last or final_activation:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(out))
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            in_features = out
        super().__init__(*layers)


class DLRM(nn.Module):
    """logit = over_arch(interaction(dense_arch(dense), pooled embeddings))."""

    def __init__(
        self, spec: JobSpec, *, dense_dropout: float = 0.0, dense_device: torch.device | None = None
    ) -> None:
        super().__init__()
        m = spec.model
        self.features = spec.data.sparse_feature_names()
        self.replicas = m.num_replicas
        self.dim = m.embedding_dim
        self.interaction = m.interaction
        num_dense = spec.data.num_dense_features()
        tables = [
            EmbeddingBagConfig(
                name=table_name(f, r),
                embedding_dim=m.embedding_dim,
                num_embeddings=m.hash_size,
                feature_names=[table_feature_name(f, r)],
                pooling=PoolingType.SUM,
            )
            for f in self.features
            for r in range(m.num_replicas)
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        with torch.device(dense_device or torch.device("cpu")):
            self.dense_arch = (
                MLP(
                    num_dense,
                    m.dense_arch,
                    batch_norm=m.batch_norm,
                    dropout=dense_dropout,
                    xavier=m.xavier_init,
                )
                if num_dense > 0
                else None
            )
            dense_out = m.dense_arch[-1] if num_dense > 0 else 0
            n_vec = len(self.features) + (1 if dense_out else 0)
            if self.interaction == Interaction.DOT:
                inter_out = dense_out + n_vec * (n_vec - 1) // 2
            else:
                inter_out = dense_out + len(self.features) * m.embedding_dim
            self.over_arch = MLP(
                inter_out,
                [*m.over_arch, 1],
                batch_norm=m.batch_norm,
                dropout=dense_dropout,
                xavier=m.xavier_init,
                final_activation=False,
            )
            if self.interaction == Interaction.DOT:
                triu = torch.triu_indices(n_vec, n_vec, offset=1)
                # flat upper-triangle positions: index_select's backward is a plain
                # index_add (faster than advanced indexing's accumulating index_put)
                self.register_buffer("_triu_flat", triu[0] * n_vec + triu[1], persistent=False)

    def init_output_bias(self, ctr: float) -> None:
        """Start the logit at the training CTR instead of 0.5 (saves the first
        hundreds of steps that would otherwise only learn the base rate)."""
        ctr = min(max(ctr, 1e-4), 1 - 1e-4)
        last = [m for m in self.over_arch if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.fill_(math.log(ctr / (1 - ctr)))

    # max_entropy: when set, a training forward keeps its pooled embeddings (per KJT
    # key, with grad) in ``last_pooled`` for the loss term (see regularizers/entropy.py)
    keep_pooled: bool = False
    last_pooled: dict[str, torch.Tensor] | None = None

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).to_dict()
        if self.keep_pooled and self.training:
            self.last_pooled = pooled
        embs = []
        for f in self.features:
            e = pooled[table_feature_name(f, 0)]
            for r in range(1, self.replicas):
                e = e + pooled[table_feature_name(f, r)]
            embs.append(e)
        parts = []
        if self.dense_arch is not None:
            d = self.dense_arch(dense)
            parts.append(d)
            vecs = [d, *embs]
        else:
            vecs = embs
        if self.interaction == Interaction.DOT:
            stacked = torch.stack(vecs, dim=1)  # [B, n, D]
            gram = torch.bmm(stacked, stacked.transpose(1, 2))
            parts.append(gram.flatten(1).index_select(1, self._triu_flat))
        else:
            parts.extend(embs)
        return self.over_arch(torch.cat(parts, dim=1)).squeeze(1)
