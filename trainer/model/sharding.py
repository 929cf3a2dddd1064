"""Shard the model with TorchRec's planner and DistributedModelParallel.

Embeddings get FBGEMM's fused EXACT_ROWWISE_ADAGRAD through the sharder's
``fused_params`` (the optimizer step runs inside the backward kernel; no embedding
gradient tensor ever exists). Dense parameters get the spec's torch optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.spec import DenseOptimizerType, JobSpec

_GIB = 1024**3


def fused_params(spec: JobSpec, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """FBGEMM TBE kwargs for the sparse optimizer (+ regularizers' fused settings)."""
    so = spec.training.sparse_optimizer
    params: dict[str, Any] = {
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "learning_rate": so.lr,
        "eps": so.eps,
        "weight_decay": 0.0,
        "weight_decay_mode": WeightDecayMode.NONE,
    }
    if so.gradient_clipping:
        params["gradient_clipping"] = True
        params["max_gradient"] = so.max_gradient
    params.update(extra or {})
    return params


def shard_model(
    model: torch.nn.Module, spec: JobSpec, device: torch.device, extra_fused: dict[str, Any] | None = None
) -> DistributedModelParallel:
    """Plan (collectively, so all ranks agree) and wrap in DMP."""
    world = dist.get_world_size()
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(spec, extra_fused))
    mem = int(spec.scaling.memory_per_worker_gb * _GIB)
    topology = Topology(
        world_size=world,
        compute_device=device.type,
        local_world_size=world if device.type == "cpu" else None,
        **({"ddr_cap": mem} if device.type == "cpu" else {}),
    )
    # Whole rows on one rank, always with the fused FBGEMM kernel: the planner would
    # otherwise pick data_parallel for small tables (dense grads, no fused AdaGrad)
    # and column-wise splits rows (post-step row norms need whole rows).
    allowed = [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
    constraints = {
        cfg.name: ParameterConstraints(sharding_types=allowed) for cfg in model.ebc.embedding_bag_configs()
    }
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    return DistributedModelParallel(module=model, device=device, plan=plan, sharders=[sharder])


def dense_named_parameters(dmp: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters not updated by a fused in-backward optimizer."""
    return list(in_backward_optimizer_filter(dmp.named_parameters()))


def make_dense_optimizer(param_groups: list[dict[str, Any]], spec: JobSpec) -> torch.optim.Optimizer:
    o = spec.training.dense_optimizer
    if o.type == DenseOptimizerType.SGD:
        return torch.optim.SGD(param_groups, lr=o.lr)
    if o.type == DenseOptimizerType.MOMENTUM:
        return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum)
    if o.type == DenseOptimizerType.ADAGRAD:
        return torch.optim.Adagrad(param_groups, lr=o.lr, eps=o.eps)
    if o.type == DenseOptimizerType.RMSPROP:
        return torch.optim.RMSprop(param_groups, lr=o.lr, eps=o.eps, momentum=0.0)
    # fused: one multi-tensor kernel per step instead of a loop of small ops; equal to
    # the default implementation within float32 rounding (tests/trainer/test_interaction.py),
    # about 3x faster per step on the CPU for rectrain's MLPs (BENCHMARKS.md)
    return torch.optim.Adam(param_groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)
