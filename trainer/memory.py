"""The memory and capacity model of a job: what its workers (and GPUs) need, by part,
and the refusal of a spec that does not fit, with the setting to change.

The dense parameter count comes from the model's own layer shapes
(:func:`trainer.model.shapes.dense_shapes`, which :class:`trainer.model.dlrm.DLRM`
is built from). Imports no torch, so the API checks capacity at submit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from trainer.data.config import DataSource
from trainer.errors import CapacityError
from trainer.model import shapes

if TYPE_CHECKING:
    from trainer.spec import JobSpec

_BYTES_PER_FLOAT = 4
_GIB = 1024**3
# GPU memory the planner leaves free of tables: dense model, activations, the CUDA
# context and NCCL buffers. 10% of the device, at least 2 GiB.
GPU_RESERVE_FRACTION = 0.10
GPU_RESERVE_MIN_BYTES = 2 * _GIB


def gpu_reserve_bytes(total_bytes: int) -> int:
    """Bytes of a GPU with ``total_bytes`` kept out of the planner's table budget."""
    return max(GPU_RESERVE_MIN_BYTES, int(total_bytes * GPU_RESERVE_FRACTION))


# TorchRec's EmbeddingShardingPlanner keeps this fraction of the memory it is given out of
# its table plans (HeuristicalStorageReservation's default percentage in torchrec 1.8).
PLANNER_STORAGE_MARGIN = 0.15


def gpu_table_budget_bytes(hbm_cap: int) -> int:
    """Bytes of table shards the planner places on a GPU whose topology says ``hbm_cap``."""
    return int(hbm_cap * (1.0 - PLANNER_STORAGE_MARGIN))


def num_tables(spec: JobSpec) -> int:
    return len(spec.data.sparse_feature_names()) * spec.model.num_replicas


def table_bytes(spec: JobSpec) -> int:
    """Bytes of one table: fp32 weights plus the row-wise AdaGrad accumulator."""
    rows, dim = spec.model.hash_size, spec.model.embedding_dim
    return rows * dim * _BYTES_PER_FLOAT + rows * _BYTES_PER_FLOAT


def embedding_bytes_per_worker(spec: JobSpec) -> int:
    """Estimate of embedding memory on the busiest worker.

    Tables are spread over workers by the planner (table-wise or row-wise); the
    busiest worker holds at least its even share, and never less than one whole
    table under table-wise sharding. The estimate uses the even share rounded up
    to whole tables, which is what table-wise placement gives.
    """
    tables_per_worker = math.ceil(num_tables(spec) / spec.scaling.num_workers)
    return tables_per_worker * table_bytes(spec)


def gpu_embedding_bytes_per_worker(spec: JobSpec) -> int:
    """Embedding bytes on each GPU under the plan that needs the least memory: every
    table split row-wise over all workers (TorchRec's ROW_WISE, ``ceil(rows /
    workers)`` rows per GPU, the AdaGrad state with its rows).

    The planner (``trainer.model.sharding``: table-wise, row-wise or table-row-wise,
    FBGEMM's fused kernel, nothing spilled to UVM/host) places whole tables where they
    fit and splits tables row-wise where they do not, so a job fits its GPUs when this
    fits the planner's budget; a table larger than one GPU is not a reason to refuse
    (tests/trainer/test_gpu_planning.py checks this against the planner itself).
    """
    rows = math.ceil(spec.model.hash_size / spec.scaling.num_workers)
    return num_tables(spec) * rows * (spec.model.embedding_dim + 1) * _BYTES_PER_FLOAT


def gpu_fit_problem(spec: JobSpec, hbm_cap: int, where: str) -> str | None:
    """Why the tables cannot fit GPUs whose planner topology says ``hbm_cap`` bytes
    (``where`` names the source of that figure), with the smallest
    ``scaling.num_workers`` that would fit; None when they fit. The problem is the
    ``model`` field's (:data:`GPU_FIT_FIELD`); :func:`gpu_fit_error` is its line."""
    budget = gpu_table_budget_bytes(hbm_cap)
    need = gpu_embedding_bytes_per_worker(spec)
    if need <= budget:
        return None
    m, w = spec.model, spec.scaling.num_workers
    row_bytes = num_tables(spec) * (m.embedding_dim + 1) * _BYTES_PER_FLOAT
    rows_per_gpu = budget // row_bytes
    more = ""
    if rows_per_gpu > 0:
        more = f"raise scaling.num_workers to at least {math.ceil(m.hash_size / rows_per_gpu)} GPUs, or "
    total = num_tables(spec) * table_bytes(spec)
    return (
        f"the embedding tables need {total / _GIB:.2f} GiB ({num_tables(spec)} tables x "
        f"{m.hash_size} rows x {m.embedding_dim} dims, with their AdaGrad state); split row-wise "
        f"over {w} GPU{'s' if w != 1 else ''} that is {need / _GIB:.2f} GiB per GPU, but {where} "
        f"({budget / _GIB:.1f} GiB for tables after the reserve and the planner's "
        f"{PLANNER_STORAGE_MARGIN:.0%} margin); tables are not spilled to UVM/host memory (the "
        f"row-level regularizers need them on the device): {more}lower model.hash_size, "
        "model.embedding_dim or model.num_replicas"
    )


GPU_FIT_FIELD = ("model",)


def gpu_fit_error(spec: JobSpec, hbm_cap: int, where: str) -> str | None:
    """:func:`gpu_fit_problem` as one line naming its field (``model: ...``)."""
    why = gpu_fit_problem(spec, hbm_cap, where)
    return None if why is None else CapacityError.at(GPU_FIT_FIELD, why).message


def dense_param_count(spec: JobSpec) -> int:
    """Parameters of the dense part: the dense arch MLP and the over arch (with its
    1-unit logit layer), from the shapes :class:`trainer.model.dlrm.DLRM` is built from."""
    d = spec.data
    return shapes.dense_param_count(
        shapes.dense_shapes(spec.model, d.num_dense_features(), len(d.sparse_feature_names()))
    )


def _ids_per_example(spec: JobSpec) -> int:
    """Sparse ids one example carries (multi-hot history counted at its maximum)."""
    if spec.data.source == DataSource.SYNTHETIC:
        syn = spec.data.synthetic
        return 2 + syn.history_length + syn.num_context_features
    return len(spec.data.sparse_feature_names())


def _batch_bytes(spec: JobSpec) -> int:
    """One host batch: labels, weights, strata, dense floats, and per replica
    hashed ids (int64) with their lengths (int32)."""
    ids = _ids_per_example(spec) * spec.model.num_replicas
    per_row = 3 * 8 + spec.data.num_dense_features() * _BYTES_PER_FLOAT + ids * 8
    per_row += len(spec.data.sparse_feature_names()) * spec.model.num_replicas * 4
    return spec.data.batch_size * per_row


def memory_estimate_per_worker(spec: JobSpec) -> dict[str, int]:
    """Bytes the busiest worker needs, by part (a lower bound, not an exact figure).

    - ``embeddings``: its tables' fp32 rows plus the row-wise AdaGrad state;
    - ``dense``: dense parameters, their gradients and the dense optimizer state
      (Adam 2 slots, momentum/adagrad/rmsprop 1, sgd 0);
    - ``activations``: the MLP activations of one batch, kept for backward
      (doubled for their gradients);
    - ``data``: this worker's slice of the train and test days held in memory
      (synthetic: ``examples_per_day``; files: ``max_examples_per_day`` when set);
    - ``generator``: the synthetic source's ground truth (user, ad and context
      factors and frequency tables, float64);
    - ``prefetch``: ``prefetch_batches`` batches prepared ahead.
    """
    m, d, t = spec.model, spec.data, spec.training
    dense = dense_param_count(spec)
    slots = {"sgd": 0, "momentum": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}[t.dense_optimizer.type.value]
    widths = [*m.dense_arch, *m.over_arch, 1]
    n_vec = len(d.sparse_feature_names()) * (1 + m.num_replicas)
    act_per_row = sum(widths) * (2 if m.batch_norm else 1) + n_vec * m.embedding_dim + n_vec * n_vec
    activations = 2 * d.batch_size * act_per_row * _BYTES_PER_FLOAT
    rows_per_day: int | None = None
    generator = 0
    if d.source == DataSource.SYNTHETIC:
        syn = d.synthetic
        rows_per_day = syn.examples_per_day
        # users/ads factors (rank floats) + bias, cluster, order, probability
        generator = 8 * (syn.num_users + syn.num_ads) * (syn.rank + 5)
        generator += 8 * max(syn.num_context_features, 1) * syn.context_cardinality
    if d.max_examples_per_day is not None:
        rows_per_day = min(rows_per_day or d.max_examples_per_day, d.max_examples_per_day)
    data = 0
    if rows_per_day is not None:
        days = len(d.train_days) + len(d.test_days) + len(d.validation_days)
        row_bytes = _batch_bytes(spec) // d.batch_size
        data = math.ceil(rows_per_day * days / spec.scaling.num_workers) * row_bytes
    return {
        "embeddings": (
            gpu_embedding_bytes_per_worker(spec) if spec.scaling.use_gpu else embedding_bytes_per_worker(spec)
        ),
        "dense": dense * _BYTES_PER_FLOAT * (2 + slots),
        "activations": activations,
        "data": data,
        "generator": generator,
        "prefetch": _batch_bytes(spec) * (d.prefetch_batches + 1),
    }


# what to change when a part is the largest, and the field the refusal names
_ADVICE = {
    "embeddings": "lower model.hash_size, model.embedding_dim or model.num_replicas, "
    "or raise scaling.num_workers",
    "dense": "narrow model.dense_arch / model.over_arch",
    "activations": "lower data.batch_size or narrow model.dense_arch / model.over_arch",
    "data": "lower data.synthetic.examples_per_day / data.max_examples_per_day, use fewer "
    "days, or raise scaling.num_workers",
    "generator": "lower data.synthetic.num_users / num_ads / context_cardinality",
    "prefetch": "lower data.prefetch_batches or data.batch_size",
}
_ADVICE_FIELD = {
    "embeddings": "model",
    "dense": "model",
    "activations": "data.batch_size",
    "data": "data",
    "generator": "data.synthetic",
    "prefetch": "data.prefetch_batches",
}


def check_capacity(spec: JobSpec) -> None:
    """Refuse a spec whose memory estimate does not fit the workers' memory (and, with
    ``use_gpu`` and ``gpu_memory_gb`` set, whose tables do not fit their GPUs': no
    UVM/host spill)."""
    gpu = spec.scaling.gpu_memory_gb
    if spec.scaling.use_gpu and gpu is not None:
        declared = int(gpu * _GIB)
        why = gpu_fit_problem(
            spec, declared - gpu_reserve_bytes(declared), f"each GPU has {gpu:g} GiB (scaling.gpu_memory_gb)"
        )
        if why:
            raise CapacityError.at(GPU_FIT_FIELD, why)
    parts = memory_estimate_per_worker(spec)
    if spec.scaling.use_gpu:
        # tables, dense parameters and activations live in GPU memory (unset
        # gpu_memory_gb: checked on the worker's GPU); the host holds the rest
        for k in ("embeddings", "dense", "activations"):
            parts.pop(k)
    need = sum(parts.values())
    have = spec.scaling.memory_per_worker_gb * _GIB
    if need <= have:
        return
    top = max(parts, key=lambda k: parts[k])
    breakdown = ", ".join(f"{k} {v / _GIB:.2f}" for k, v in parts.items() if v >= 0.005 * _GIB)
    advice, field = _ADVICE[top], _ADVICE_FIELD[top]
    detail = ""
    if top == "embeddings":
        detail = (
            f" ({num_tables(spec)} tables x {spec.model.hash_size} rows x "
            f"{spec.model.embedding_dim} dims over {spec.scaling.num_workers} workers)"
        )
    raise CapacityError.at(
        field,
        f"the job needs about {need / _GIB:.2f} GiB per worker, most of it "
        f"{top}{detail} (GiB by part: {breakdown}), but each worker has "
        f"{spec.scaling.memory_per_worker_gb:g} GiB (scaling.memory_per_worker_gb); {advice}",
    )
