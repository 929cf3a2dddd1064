"""DLRM-style model: dense arch, TorchRec EmbeddingBagCollection, interaction, over arch.

One embedding table per sparse feature per replica; the replicas' pooled outputs
of a feature are summed. The EBC is built on the ``meta`` device and materialised
by DistributedModelParallel on the shards each rank owns (see ``sharding.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torchrec.distributed.types import LazyAwaitable
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.data.batch import table_feature_name
from trainer.model.interaction import dot_interaction, triu_flat_index
from trainer.model.shapes import dense_shapes
from trainer.spec import Interaction, JobSpec

DenseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def batch_norm_statistics(module: nn.Module) -> list[torch.Tensor]:
    """The running mean and variance buffers of every batch-norm layer in ``module``."""
    out: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            assert m.running_mean is not None and m.running_var is not None  # tracked: present
            out += [m.running_mean, m.running_var]
    return out


class DLRM(nn.Module):
    _triu_flat: torch.Tensor  # a buffer (DOT interaction only)

    """logit = over_arch(interaction(dense_arch(dense), pooled embeddings))."""

    def __init__(
        self,
        spec: JobSpec,
        *,
        dense_dropout: float = 0.0,
        dense_device: torch.device | None = None,
        pooled_train_scale: dict[str, float] | None = None,
        ebc_device: torch.device | None = None,
    ) -> None:
        super().__init__()
        # training.compile: the compiled dense_forward (set by compile_dense); None: eager
        self._dense_compiled: DenseFn | None = None
        m = spec.model
        self.features = spec.data.sparse_feature_names()
        self.replicas = m.num_replicas
        self.dim = m.embedding_dim
        self.interaction = m.interaction
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
        # meta: DistributedModelParallel materialises each rank's shards; an exported
        # model (trainer/export.py) builds whole tables on the CPU instead
        self.ebc = EmbeddingBagCollection(tables=tables, device=ebc_device or torch.device("meta"))
        with torch.device(dense_device or torch.device("cpu")):
            shapes = dense_shapes(m, spec.data.num_dense_features(), len(self.features))
            self.dense_arch = (
                MLP(
                    shapes.num_dense,
                    list(shapes.dense_arch),
                    batch_norm=m.batch_norm,
                    dropout=dense_dropout,
                    xavier=m.xavier_init,
                )
                if shapes.dense_arch
                else None
            )
            self.over_arch = MLP(
                shapes.interaction_out,
                list(shapes.over_arch),
                batch_norm=m.batch_norm,
                dropout=dense_dropout,
                xavier=m.xavier_init,
                final_activation=False,
            )
            if self.interaction == Interaction.DOT:
                # flat strict-upper-triangle positions of the embeddings' Gram matrix
                self.register_buffer("_triu_flat", triu_flat_index(len(self.features)), persistent=False)
        # the order in which TorchRec's KeyedTensor lays the pooled tables out when it
        # matches the config (checked per batch: a different order takes the slow path)
        self._keys = [table_feature_name(f, r) for f in self.features for r in range(self.replicas)]
        self._perm_cache: dict[tuple[str, ...], torch.Tensor] = {}
        # training only: feature -> factor on its pooled embedding (sparse_dropout rescale)
        self.pooled_train_scale = dict(pooled_train_scale or {})
        self._train_scale: torch.Tensor | None = None
        if self.pooled_train_scale:
            scale = [self.pooled_train_scale.get(f, 1.0) for f in self.features]
            self._train_scale = torch.tensor(scale, device=dense_device).view(1, -1, 1)

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

    def pooled(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Pooled embeddings ``[B, F, D]`` (replicas of a feature summed).

        Read as a view of the KeyedTensor's values when its keys come in config
        order (one worker), else with one gather: no per-feature copies either way."""
        kt = self.ebc(sparse)
        if isinstance(kt, LazyAwaitable):
            kt = kt.wait()
        if self.keep_pooled and self.training:
            self.last_pooled = kt.to_dict()  # per-key views of the values: same graph
        v = kt.values()
        b, k = v.shape[0], len(self._keys)
        keys = kt.keys()
        if keys == self._keys:
            emb = v.reshape(b, k, self.dim)
        else:
            # the sharded module lays tables out grouped by sharding type: one gather
            # puts them back in config order (cached per key order)
            perm = self._perm_cache.get(tuple(keys))
            if perm is None:
                pos = {name: i for i, name in enumerate(keys)}
                perm = torch.tensor([pos[name] for name in self._keys], device=v.device)
                self._perm_cache[tuple(keys)] = perm
            emb = v.reshape(b, k, self.dim).index_select(1, perm)
        if self.replicas == 1:
            return emb
        return emb.reshape(b, len(self.features), self.replicas, self.dim).sum(2)

    def compile_dense(self) -> None:
        """``torch.compile`` (inductor, static shapes) the dense part only: dense arch,
        interaction, over arch. The sharded EBC stays eager (DMP owns it); no module is
        wrapped, so parameter names and ``state_dict`` keys are unchanged. Dynamo caches by
        code object, parameters as graph inputs: models of the same shapes in one process
        share a graph; past ``torch._dynamo.config.recompile_limit`` (8) distinct shapes
        or modes in one process it runs eager (same results, no speed-up)."""
        self._dense_compiled = cast(DenseFn, torch.compile(self.dense_forward, dynamic=False))

    def dense_forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The logit from the dense features and the pooled embeddings ``[B, F, D]``."""
        if self.training and self._train_scale is not None:
            emb = emb * self._train_scale.to(emb.device)
        d = self.dense_arch(dense) if self.dense_arch is not None else None
        if self.interaction == Interaction.DOT:
            x = dot_interaction(d, emb, self._triu_flat)
        else:
            flat = emb.reshape(emb.shape[0], -1)
            x = torch.cat([d, flat], dim=1) if d is not None else flat
        return self.over_arch(x).squeeze(1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.pooled(sparse)
        fn = self._dense_compiled or self.dense_forward
        return fn(dense, emb)
