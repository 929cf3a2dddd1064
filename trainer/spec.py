"""The job spec: the one pydantic model shared by api/, services/ and trainer/.

A spec says what to train (model capacity), on what (data), how (training,
regularizers), where (scaling) and how to report (metrics). It is loaded from
YAML or JSON; unknown fields and out-of-range values are refused with a message
that names the field. This module imports no torch, so the API can use it.

Each section's models live next to the code they configure (:mod:`trainer.model.config`,
:mod:`trainer.data.config`, :mod:`trainer.training_config`,
:mod:`trainer.regularizers.config`, :mod:`trainer.scaling_config`,
:mod:`trainer.metrics.config`); the memory and capacity model is :mod:`trainer.memory`.
This module assembles :class:`JobSpec`, loads it, and re-exports every section's
public names, so ``from trainer.spec import X`` works for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from trainer import memory
from trainer.config_base import (
    MAX_DAY,
    MAX_DAYS,
    MAX_ID_UNIVERSE,
    MAX_LAYER_WIDTH,
    MAX_LAYERS,
    MAX_SEED,
    MAX_WALL_SECONDS,
)
from trainer.config_base import Strict as _Strict
from trainer.data.config import (
    CRITEO_NUM_DENSE,
    CRITEO_NUM_SPARSE,
    DataSource,
    DataSpec,
    Shuffle,
    SparseColumn,
    SyntheticSpec,
    TableColumns,
)
from trainer.errors import CapacityError, FieldError, FieldPath, FieldValueError, SpecError, parse_error_line
from trainer.memory import (
    GPU_RESERVE_FRACTION,
    GPU_RESERVE_MIN_BYTES,
    PLANNER_STORAGE_MARGIN,
    gpu_reserve_bytes,
    gpu_table_budget_bytes,
)
from trainer.metrics.config import MetricsSpec, MlflowSpec
from trainer.model.config import Interaction, ModelSpec
from trainer.regularizers.config import (
    REGULARIZER_TYPES,
    SYNTHETIC_GRAPH_FEATURES,
    ConstNorm,
    DenseL2,
    Dropout,
    EmbeddingReset,
    Freeze,
    FreezeWhat,
    FreqDecay,
    LrSchedule,
    MaxEntropy,
    MaxNorm,
    MinCount,
    Regularizer,
    Shrink,
    SparseDropout,
    SparseL1,
    SparseL2,
    SseGraph,
    SseSe,
    check_regularizers,
)
from trainer.scaling_config import ScalingSpec
from trainer.training_config import (
    DenseOptimizerSpec,
    DenseOptimizerType,
    InitFrom,
    SparseOptimizerSpec,
    TrainingSpec,
)

__all__ = [
    "CRITEO_NUM_DENSE",
    "CRITEO_NUM_SPARSE",
    "FIELD_PATHS",
    "GPU_RESERVE_FRACTION",
    "GPU_RESERVE_MIN_BYTES",
    "MAX_DAY",
    "MAX_DAYS",
    "MAX_ID_UNIVERSE",
    "MAX_LAYERS",
    "MAX_LAYER_WIDTH",
    "MAX_SEED",
    "MAX_WALL_SECONDS",
    "PLANNER_STORAGE_MARGIN",
    "REGULARIZER_TYPES",
    "SYNTHETIC_GRAPH_FEATURES",
    "CapacityError",
    "ConstNorm",
    "DataSource",
    "DataSpec",
    "DenseL2",
    "DenseOptimizerSpec",
    "DenseOptimizerType",
    "Dropout",
    "EmbeddingReset",
    "Freeze",
    "FreezeWhat",
    "FreqDecay",
    "InitFrom",
    "Interaction",
    "JobSpec",
    "LrSchedule",
    "MaxEntropy",
    "MaxNorm",
    "MetricsSpec",
    "MinCount",
    "MlflowSpec",
    "ModelSpec",
    "Regularizer",
    "ScalingSpec",
    "Shrink",
    "Shuffle",
    "SparseColumn",
    "SparseDropout",
    "SparseL1",
    "SparseL2",
    "SparseOptimizerSpec",
    "SpecError",
    "SseGraph",
    "SseSe",
    "SyntheticSpec",
    "TableColumns",
    "TrainingSpec",
    "format_validation_error",
    "is_spec_field",
    "validation_errors",
    "gpu_reserve_bytes",
    "gpu_table_budget_bytes",
    "load_spec",
    "parse_error_line",
    "parse_spec",
    "spec_to_yaml",
]


class JobSpec(_Strict):
    """A complete training job."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    regularizers: list[Regularizer] = Field(default_factory=list)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobSpec":
        per_rank_window = self.metrics.window_size // self.scaling.num_workers
        if per_rank_window < self.data.batch_size:
            raise FieldValueError(
                ("metrics", "window_size"),
                f"{self.metrics.window_size} gives "
                f"{per_rank_window} examples per worker, below data.batch_size "
                f"({self.data.batch_size}); raise it to at least "
                f"{self.data.batch_size * self.scaling.num_workers}",
            )
        check_regularizers(self.regularizers, self.data, self.training.num_passes, self.scaling.use_gpu)
        return self

    # ---- the memory and capacity model (trainer.memory) ---------------------

    def num_tables(self) -> int:
        return memory.num_tables(self)

    def table_bytes(self) -> int:
        """Bytes of one table: fp32 weights plus the row-wise AdaGrad accumulator."""
        return memory.table_bytes(self)

    def embedding_bytes_per_worker(self) -> int:
        """Embedding memory on the busiest worker (:func:`trainer.memory.embedding_bytes_per_worker`)."""
        return memory.embedding_bytes_per_worker(self)

    def gpu_embedding_bytes_per_worker(self) -> int:
        """Embedding bytes on each GPU, tables split row-wise over all workers."""
        return memory.gpu_embedding_bytes_per_worker(self)

    def gpu_fit_error(self, hbm_cap: int, where: str) -> str | None:
        """Why the tables cannot fit GPUs of ``hbm_cap`` bytes; None when they fit."""
        return memory.gpu_fit_error(self, hbm_cap, where)

    def dense_param_count(self) -> int:
        """Parameters of the dense arch and the over arch (with its logit layer)."""
        return memory.dense_param_count(self)

    def memory_estimate_per_worker(self) -> dict[str, int]:
        """Bytes the busiest worker needs, by part (:func:`trainer.memory.memory_estimate_per_worker`)."""
        return memory.memory_estimate_per_worker(self)

    def check_capacity(self) -> None:
        """Raise :class:`CapacityError` when the spec does not fit its workers (or GPUs)."""
        memory.check_capacity(self)


# --------------------------------------------------------------------------- loading


def validation_errors(err: ValidationError) -> list[FieldError]:
    """The field errors of a pydantic refusal of a job spec: a validator's own field
    (:class:`FieldValueError`) where it names one, else pydantic's location (a
    regularizer's union tag dropped: ``regularizers.0.max_norm.c`` -> ``regularizers.0.c``)."""
    out = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):
            out.append(cause.error)
            continue
        loc = list(e["loc"])
        if len(loc) > 2 and loc[0] == "regularizers" and loc[2] in REGULARIZER_TYPES:
            del loc[2]
        # a ValueError's own text, without pydantic's "Value error, " prefix
        msg = str(cause) if isinstance(cause, ValueError) else e["msg"]
        is_reg = bool(loc) and loc[0] == "regularizers"
        if is_reg and e["type"] == "union_tag_invalid":
            loc.append("type")
            msg = (
                f"unknown regularizer type '{e['ctx']['tag']}'; choose one of {', '.join(REGULARIZER_TYPES)}"
            )
        elif is_reg and e["type"] == "union_tag_not_found":
            loc.append("type")
            msg = f"required (one of {', '.join(REGULARIZER_TYPES)})"
        out.append(FieldError(tuple(loc), msg))
    return out


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path."""
    return "\n".join(e.line for e in validation_errors(err))


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, path + ".")
    return out


# every dotted field path of a job spec (the list of regularizers: "regularizers" only)
FIELD_PATHS = _field_paths(JobSpec) | {"regularizers", "model", "data"}
_FIELD_LOCS = frozenset(tuple(p.split(".")) for p in FIELD_PATHS)


def is_spec_field(loc: FieldPath) -> bool:
    """Whether ``loc`` is a field of the job spec's sections (one regularizer's field is
    not: the API reports those at the spec)."""
    return tuple(loc) in _FIELD_LOCS


def parse_spec(data: dict[str, Any], *, check_capacity: bool = True) -> JobSpec:
    """Validate a spec dict; raise :class:`SpecError` naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError("spec: the top level must be a mapping of sections (model, data, ...)")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(errors=validation_errors(e)) from None
    if check_capacity:
        spec.check_capacity()
    return spec


def load_spec(path: str | Path, *, check_capacity: bool = True) -> JobSpec:
    """Load a spec from a YAML (.yaml/.yml) or JSON (.json) file."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {p} does not exist")
    text = p.read_text()
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError(
            f"spec file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {parse_error_line(e)}"
        ) from None
    return parse_spec(data or {}, check_capacity=check_capacity)


def spec_to_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
