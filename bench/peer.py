"""The peer: TorchRec's own DLRM training loop on the same model and batches.

What a user who picks TorchRec directly would run: ``torchrec.models.dlrm.DLRM``
wrapped in ``DLRMTrain``, sharded by ``DistributedModelParallel`` with the same fused
EXACT_ROWWISE_ADAGRAD (lr, eps) on the embeddings, Adam on the dense part through
``KeyedOptimizerWrapper`` + ``CombinedOptimizer``, driven by TorchRec's
``TrainPipelineSparseDist`` (which overlaps the next batch's copy and input
distribution with the current step).

The peer starts from rectrain's weights (embedding rows and every dense layer are
copied from the rectrain trainer it is compared with), so :func:`equal_work` can
check that both reach the same loss after N steps on the same batches: the speed
comparison is then of equal work.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch
from torch import nn

from bench.paths import TrainerPaths, Workload, sync_device


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _local(t: Any) -> torch.Tensor:
    """The single local shard of a world-1 ShardedTensor (or the tensor itself)."""
    shards = getattr(t, "local_shards", None)
    return shards()[0].tensor if shards is not None else t


class PeerPath:
    """TorchRec DLRM + ``TrainPipelineSparseDist`` (world 1, same device and process
    group as the trainer it is built from)."""

    def __init__(self, w: Workload, tp: TrainerPaths) -> None:
        from torchrec.datasets.utils import Batch as TRBatch
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
        from torchrec.models.dlrm import DLRM, DLRMTrain
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        from trainer.model.sharding import fused_params

        self.w, self.device = w, torch.device(tp.device)
        self._TRBatch = TRBatch
        spec = tp.spec
        src = tp.trainer.dmp.module  # rectrain's DLRM
        tables = [
            EmbeddingBagConfig(
                name=name,
                embedding_dim=w.dim,
                num_embeddings=w.rows,
                feature_names=[key],
                pooling=PoolingType.SUM,
            )
            for name, key in zip(_table_names(src), src._keys, strict=True)
        ]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        model = DLRMTrain(
            DLRM(
                embedding_bag_collection=ebc,
                dense_in_features=w.dense,
                dense_arch_layer_sizes=[*w.dense_arch, w.dim],
                over_arch_layer_sizes=[*w.over_arch, 1],
                dense_device=self.device,
            )
        )
        sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(spec))
        self.dmp = DistributedModelParallel(module=model, device=self.device, sharders=[sharder])
        self._copy_weights_from(tp)
        o = spec.training.dense_optimizer
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(self.dmp.named_parameters())),
            lambda params: torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps),
        )
        self.opt = CombinedOptimizer([self.dmp.fused_optimizer, dense])
        self.pipeline = TrainPipelineSparseDist(self.dmp, self.opt, self.device)
        self._it: Any = None
        self.last_losses: list[float] = []

    def _copy_weights_from(self, tp: TrainerPaths) -> None:
        """Same starting point as the rectrain trainer: every embedding table and every
        dense Linear (dense arch, over arch, in order) copied over."""
        src = tp.trainer.dmp.module
        src_sd = tp.trainer.dmp.state_dict()
        dst_sd = self.dmp.state_dict()
        with torch.no_grad():
            for name in _table_names(src):
                s = next(v for k, v in src_sd.items() if k.endswith(f"embedding_bags.{name}.weight"))
                d = next(v for k, v in dst_sd.items() if k.endswith(f"embedding_bags.{name}.weight"))
                _local(d).copy_(_local(s))
            dlrm = self.dmp.module.model
            for a, b in (
                (src.dense_arch, dlrm.dense_arch),
                (src.over_arch, dlrm.over_arch),
            ):
                la, lb = _linears(a), _linears(b)
                assert [x.weight.shape for x in la] == [x.weight.shape for x in lb], "dense shapes differ"
                for x, y in zip(la, lb, strict=True):
                    y.weight.copy_(x.weight)
                    y.bias.copy_(x.bias)

    def set_batches(self, batches: list[Any]) -> None:
        tb = [
            self._TRBatch(dense_features=b.dense, sparse_features=b.sparse, labels=b.labels) for b in batches
        ]
        self._it = itertools.cycle(tb)

    def loop(self, n: int) -> tuple[int, float]:
        sync_device(self.device.type)
        t0 = time.perf_counter()
        for _ in range(n):
            self.pipeline.progress(self._it)
        sync_device(self.device.type)
        return n * self.w.batch, time.perf_counter() - t0

    def losses(self, n: int) -> list[float]:
        """``n`` pipeline steps, returning each step's training loss."""
        out = []
        for _ in range(n):
            loss, _logits, _labels = self.pipeline.progress(self._it)
            out.append(float(loss))
        return out


def _table_names(src: nn.Module) -> list[str]:
    from trainer.model.dlrm import table_name

    features: list[str] = src.features  # type: ignore[assignment]  # DLRM attributes
    replicas: int = src.replicas  # type: ignore[assignment]
    return [table_name(f, r) for f in features for r in range(replicas)]


def equal_work(tp: TrainerPaths, peer: PeerPath, batches: list[Any], steps: int) -> dict[str, Any]:
    """Call right after building ``peer`` from ``tp``. Train both from the same weights on the same ``steps`` batches (cycled) and
    compare the losses: the same model and optimizers must give the same curve up to
    float32 rounding (the two forwards sum in another order)."""
    import torch.nn.functional as F

    from trainer.regularizers.schedule import reset_sparse_optimizer_state

    # the peer was just built from the trainer's weights with fresh optimizer state:
    # give the trainer fresh state too (zero AdaGrad accumulators, no Adam moments)
    reset_sparse_optimizer_state(tp.trainer.dmp)
    tp.trainer.dense_opt.state.clear()
    ours = []
    for i in range(steps):
        b = batches[i % len(batches)].to(tp.trainer.device)
        logits = tp.trainer.train_step(b)
        ours.append(float(F.binary_cross_entropy_with_logits(logits.detach(), b.labels)))
    # the pipeline runs one batch ahead: it sees batch i at progress i like the loop above
    peer.set_batches(batches)
    theirs = peer.losses(steps)
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs, strict=True)]
    return {"steps": steps, "rectrain_loss": ours, "peer_loss": theirs, "max_rel_diff": max(rel)}
