"""Shard the model with TorchRec's planner and DistributedModelParallel.

Embeddings get FBGEMM's fused EXACT_ROWWISE_ADAGRAD through the sharder's
``fused_params`` (the optimizer step runs inside the backward kernel; no embedding
gradient tensor ever exists). Dense parameters get the spec's torch optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode  # 1.6 and 1.8
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingType
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.errors import CapacityError
from trainer.memory import GPU_FIT_FIELD, gpu_fit_problem
from trainer.spec import DenseOptimizerType, JobSpec, gpu_reserve_bytes

_GIB = 1024**3
# Kernels that keep every table in the device's own memory: no UVM / host spill
# (FBGEMM's fused_uvm / fused_uvm_caching), which the row-level regularizers refuse
# and which the submit-time capacity check does not model.
_DEVICE_KERNELS = ["fused"]


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


def local_world_size(world: int, env: Mapping[str, str] | None = None) -> int:
    """Workers on this node: ``LOCAL_WORLD_SIZE`` as Ray Train (and torchrun) set it, else
    ``world`` (one node). TorchRec's table-row-wise plans group ranks into nodes by it."""
    env = os.environ if env is None else env
    raw = env.get("LOCAL_WORLD_SIZE")
    if not raw:
        return world
    n = int(raw)
    if n < 1 or world % n:
        raise CapacityError(
            f"LOCAL_WORLD_SIZE={raw} does not divide the world size {world}: the GPU planner needs "
            "the same number of workers on every node (scaling.num_workers a multiple of the GPUs per node)"
        )
    return n


def device_hbm_cap(spec: JobSpec, device: torch.device) -> int:
    """Bytes of GPU memory the planner may fill with tables on ``device``: the device's
    real memory minus a reserve (dense model, activations, CUDA context, NCCL buffers),
    and no more than ``scaling.gpu_memory_gb`` minus the reserve where that is set.
    Raises :class:`CapacityError` when the busiest worker's tables do not fit."""
    total = int(torch.cuda.get_device_properties(device).total_memory)
    cap = total - gpu_reserve_bytes(total)
    src = f"{torch.cuda.get_device_name(device)} has {total / _GIB:.1f} GiB"
    if spec.scaling.gpu_memory_gb is not None:
        declared = int(spec.scaling.gpu_memory_gb * _GIB)
        if declared - gpu_reserve_bytes(declared) < cap:
            cap = declared - gpu_reserve_bytes(declared)
            src = f"scaling.gpu_memory_gb is {spec.scaling.gpu_memory_gb:g}"
    # by the plan the planner can make (row-wise splits a table over the GPUs), not by
    # whole tables per worker: a table larger than one GPU is split, not refused
    why = gpu_fit_problem(spec, cap, src)
    if why:
        raise CapacityError.at(GPU_FIT_FIELD, why)
    return cap


def make_topology(
    spec: JobSpec, device: torch.device, world: int, env: dict[str, str] | None = None
) -> Topology:
    """The planner's view of the cluster: world size, GPUs per node and the memory each
    device really has (CPU: ``scaling.memory_per_worker_gb``; CUDA: :func:`device_hbm_cap`)."""
    caps: dict[str, int] = {}
    if device.type == "cuda":
        caps["hbm_cap"] = device_hbm_cap(spec, device)
    else:
        caps["ddr_cap"] = int(spec.scaling.memory_per_worker_gb * _GIB)
    return Topology(
        world_size=world,
        compute_device=device.type,
        # CPU plans are table-wise only: node grouping does not matter (and uneven CPU
        # placements over Ray nodes stay allowed)
        local_world_size=local_world_size(world, env) if device.type == "cuda" else world,
        **caps,
    )


def shard_model(
    model: torch.nn.Module, spec: JobSpec, device: torch.device, extra_fused: dict[str, Any] | None = None
) -> DistributedModelParallel:
    """Plan (collectively, so all ranks agree) and wrap in DMP."""
    world = dist.get_world_size()
    sharder = EmbeddingBagCollectionSharder(fused_params=fused_params(spec, extra_fused))
    planner = sharding_planner(model, make_topology(spec, device, world))
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    return DistributedModelParallel(module=model, device=device, plan=plan, sharders=[sharder])


def sharding_planner(model: torch.nn.Module, topology: Topology) -> EmbeddingShardingPlanner:
    """TorchRec's planner with rectrain's constraints for every table of ``model.ebc``."""
    # Whole rows on one rank, always with the fused FBGEMM kernel: the planner would
    # otherwise pick data_parallel for small tables (dense grads, no fused AdaGrad)
    # and column-wise splits rows (post-step row norms need whole rows). Row-wise
    # splits exist only on CUDA (TorchRec's CPU sharders offer table-wise alone).
    allowed = [ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
    constraints = {
        cfg.name: ParameterConstraints(sharding_types=allowed, compute_kernels=_DEVICE_KERNELS)
        for cfg in model.ebc.embedding_bag_configs()  # type: ignore[operator,union-attr]  # torch types nn.Module.__getattr__ as Tensor | Module
    }
    return EmbeddingShardingPlanner(topology=topology, constraints=constraints)


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
