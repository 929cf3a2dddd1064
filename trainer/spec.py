"""The job spec: the one pydantic model shared by api/, services/ and trainer/.

A spec says what to train (model capacity), on what (data), how (training,
regularizers), where (scaling) and how to report (metrics). It is loaded from
YAML or JSON; unknown fields and out-of-range values are refused with a message
that names the field. This module imports no torch, so the API can use it.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.errors import CapacityError, SpecError, parse_error_line

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


# Hard bounds of the spec (the service may allow less: see services/limits.py).
MAX_LAYER_WIDTH = 16384
MAX_LAYERS = 16
MAX_ID_UNIVERSE = 1_000_000_000  # num_users / num_ads / context_cardinality
MAX_DAY = 100_000
MAX_DAYS = 1000  # train_days / test_days entries
MAX_SEED = 2**32 - 1
MAX_WALL_SECONDS = 30 * 86400


class _Strict(BaseModel):
    """Base for every spec section: unknown fields are errors, not ignored."""

    # allow_inf_nan=False: Infinity / NaN are refused in every float field of the spec
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- model


class Interaction(str, Enum):
    CONCAT = "concat"  # concatenate dense output and pooled embeddings
    DOT = "dot"  # DLRM pairwise dot products (needs dense_arch[-1] == embedding_dim)


class ModelSpec(_Strict):
    """Model capacity and dense-architecture options.

    Args:
        embedding_dim (int): width of every embedding row.
        hash_size (int): rows per embedding table; ids are hashed into it.
        num_replicas (int): independent hashed tables per sparse feature (different
            hash seeds); their pooled outputs are summed.
        dense_arch (list[int]): hidden sizes of the MLP on dense features.
        over_arch (list[int]): hidden sizes of the MLP after the interaction; a final
            1-unit logit layer is always added.
        interaction: ``concat`` or ``dot``.
        batch_norm (bool): batch norm after each hidden layer.
        xavier_init (bool): Xavier-uniform initialisation of dense weights.
    """

    embedding_dim: int = Field(16, ge=4, le=1024, multiple_of=4)
    hash_size: int = Field(100_000, ge=2, le=2**31 - 1)
    num_replicas: int = Field(1, ge=1, le=16)
    dense_arch: list[Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [64, 16], min_length=1, max_length=MAX_LAYERS
    )
    over_arch: list[Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [64, 32], max_length=MAX_LAYERS
    )
    interaction: Interaction = Interaction.DOT
    batch_norm: bool = False
    xavier_init: bool = True

    @model_validator(mode="after")
    def _dot_needs_matching_width(self) -> "ModelSpec":
        if self.interaction == Interaction.DOT and self.dense_arch[-1] != self.embedding_dim:
            raise ValueError(
                f"model.dense_arch: the last layer ({self.dense_arch[-1]}) must equal "
                f"model.embedding_dim ({self.embedding_dim}) when interaction is 'dot'; "
                "change one of them or use interaction: concat"
            )
        return self


# --------------------------------------------------------------------------- data


class Shuffle(str, Enum):
    NONE = "none"  # read in file order
    WITHIN_PARTITION = "within_partition"  # shuffle examples inside each day
    ACROSS_PARTITIONS = "across_partitions"  # shuffle the order of days, not examples
    ALL = "all"  # shuffle all training examples together


class SyntheticSpec(_Strict):
    """Generator of day-partitioned user x ad click logs.

    Args:
        num_users / num_ads (int): id universe sizes.
        examples_per_day (int): rows per day partition.
        rank (int): rank of the ground-truth low-rank click model.
        user_zipf / ad_zipf (float): power-law exponents of id frequency.
        history_length (int): max clicked-ad history ids per example (multi-hot).
        num_context_features (int): categorical context features.
        context_cardinality (int): distinct values per context feature.
        num_dense_features (int): dense features.
        base_ctr (float): average click rate of the ground truth.
        signal_scale (float): scale of the low-rank interaction logit.
        label_noise (float): std of the Gaussian logit noise.
        seed (int): generator seed (same seed -> identical data).
    """

    num_users: int = Field(20_000, ge=1, le=MAX_ID_UNIVERSE)
    num_ads: int = Field(5_000, ge=1, le=MAX_ID_UNIVERSE)
    examples_per_day: int = Field(100_000, ge=1, le=100_000_000)
    rank: int = Field(8, ge=1, le=256)
    user_zipf: float = Field(1.05, gt=0.0, le=4.0)
    ad_zipf: float = Field(1.1, gt=0.0, le=4.0)
    history_length: int = Field(5, ge=0, le=256)
    num_context_features: int = Field(3, ge=0, le=64)
    context_cardinality: int = Field(50, ge=1, le=MAX_ID_UNIVERSE)
    num_dense_features: int = Field(4, ge=0, le=1024)
    base_ctr: float = Field(0.1, gt=0.0, lt=1.0)
    signal_scale: float = Field(1.5, ge=0.0, le=100.0)
    label_noise: float = Field(0.5, ge=0.0, le=100.0)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class SparseColumn(_Strict):
    """A sparse (categorical) column of a table source.

    Args:
        name (str): column name.
        multi_valued (bool): the cell holds several ids joined by ``separator``.
        separator (str): separator for multi-valued cells.
    """

    name: str = Field(min_length=1, max_length=256)
    multi_valued: bool = False
    separator: str = Field("|", min_length=1, max_length=16)


class TableColumns(_Strict):
    """Column mapping of a Parquet/CSV table source.

    Args:
        label (str): label column.
        label_threshold (float | None): if set, label = value >= threshold (e.g. a
            rating >= 4 counts as a click); else the column must hold 0/1.
        day (str): integer day-partition column, or with ``day_seconds`` a unix
            timestamp column turned into days: ``floor((t - day_origin) / day_seconds)``.
        day_seconds (int | None): partition length in seconds for timestamp days
            (86400 for calendar days; MovieLens-100k uses e.g. 2592000, 30 days).
        day_origin (int): timestamp of the start of day 0 (with ``day_seconds``).
        sparse (list[SparseColumn | str]): categorical columns.
        dense (list[str]): numeric columns (missing values become 0).
    """

    label: str = Field(min_length=1, max_length=256)
    label_threshold: float | None = Field(None, ge=-1e12, le=1e12)
    day: str = Field(min_length=1, max_length=256)
    day_seconds: int | None = Field(None, ge=1, le=10**9)
    day_origin: int = Field(0, ge=-(10**12), le=10**12)
    sparse: list[SparseColumn] = Field(min_length=1, max_length=1024)
    dense: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=1024
    )

    @model_validator(mode="before")
    @classmethod
    def _sparse_names_as_strings(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sparse"), list):
            data = dict(data)
            data["sparse"] = [{"name": s} if isinstance(s, str) else s for s in data["sparse"]]
        return data


class DataSource(str, Enum):
    SYNTHETIC = "synthetic"
    CRITEO = "criteo"
    TABLE = "table"


CRITEO_NUM_DENSE = 13
CRITEO_NUM_SPARSE = 26


class DataSpec(_Strict):
    """Where examples come from and how they are batched.

    Args:
        source: ``synthetic``, ``criteo`` (TSV: label, I1-I13, C1-C26 hex) or
            ``table`` (Parquet or CSV).
        path (str | None): criteo: a file pattern with ``{day}`` (e.g.
            ``data/day_{day}.tsv``); table: a .parquet/.csv file (or pattern with
            ``{day}``) holding the day column.
        columns (TableColumns | None): required for ``table``.
        synthetic (SyntheticSpec): generator settings for ``synthetic``.
        train_days / test_days (list[int]): day partitions to train / evaluate on.
        validation_days (list[int]): day partitions scored after every pass to select
            the pass (lowest validation NE); never trained on. Default: none.
        validation_fraction (float | None): instead of ``validation_days``, hold out
            the chronologically last fraction of the *last* training day (its last
            rows in the source's order: file order for files, so sort a table by
            time within the day; deterministic) as validation data; those rows are
            never trained on nor counted for the strata or the sse_graph. 0 < f < 1.
        shuffle: none / within_partition / across_partitions / all.
        batch_size (int): examples per step *per worker*.
        max_examples_per_day (int | None): cap rows read per day.
        stratum_feature (str | None): the sparse feature whose id frequency in the
            training days defines the stratum (default: ``ad_id`` for synthetic,
            ``C1`` for criteo, the first sparse column for table).
        frequent_min_count (int): ids seen at least this often are "frequent".
        rare_max_count (int): ids seen at most this often are "rare".
        prefetch_batches (int): batches prepared ahead by a background thread.
    """

    source: DataSource = DataSource.SYNTHETIC
    path: str | None = Field(None, min_length=1, max_length=4096)
    columns: TableColumns | None = None
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    train_days: list[Annotated[int, Field(ge=0, le=MAX_DAY)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=MAX_DAYS
    )
    test_days: list[Annotated[int, Field(ge=0, le=MAX_DAY)]] = Field(
        default_factory=lambda: [1], max_length=MAX_DAYS
    )
    validation_days: list[Annotated[int, Field(ge=0, le=MAX_DAY)]] = Field(
        default_factory=list, max_length=MAX_DAYS
    )
    validation_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    shuffle: Shuffle = Shuffle.WITHIN_PARTITION
    batch_size: int = Field(1024, ge=1, le=1_048_576)
    max_examples_per_day: int | None = Field(None, ge=1, le=100_000_000)
    stratum_feature: str | None = Field(None, max_length=256)
    frequent_min_count: int = Field(100, ge=2, le=10**12)
    rare_max_count: int = Field(10, ge=0, le=10**12)
    prefetch_batches: int = Field(4, ge=0, le=256)

    @model_validator(mode="after")
    def _source_needs(self) -> "DataSpec":
        if self.source in (DataSource.CRITEO, DataSource.TABLE) and not self.path:
            raise ValueError(f"data.path: required when data.source is '{self.source.value}'")
        if self.source == DataSource.TABLE and self.columns is None:
            raise ValueError("data.columns: required when data.source is 'table'")
        if self.source != DataSource.TABLE and self.columns is not None:
            raise ValueError("data.columns: only allowed when data.source is 'table'")
        if self.rare_max_count >= self.frequent_min_count:
            raise ValueError(
                "data.rare_max_count: must be below data.frequent_min_count "
                f"({self.rare_max_count} >= {self.frequent_min_count})"
            )
        if self.validation_days and self.validation_fraction is not None:
            raise ValueError(
                "data.validation_fraction: set either data.validation_days (whole days) or "
                "data.validation_fraction (the last part of the last training day), not both"
            )
        sets = (
            ("train_days", self.train_days),
            ("validation_days", self.validation_days),
            ("test_days", self.test_days),
        )
        for i, (name_a, days_a) in enumerate(sets):
            for name_b, days_b in sets[i + 1 :]:
                overlap = sorted(set(days_a) & set(days_b))
                if overlap:
                    raise ValueError(
                        f"data.{name_b}: days {overlap} are also in data.{name_a}; "
                        "training, validation and test days must not overlap"
                    )
        names = self.sparse_feature_names()
        if self.stratum_feature is not None and self.stratum_feature not in names:
            raise ValueError(
                f"data.stratum_feature: '{self.stratum_feature}' is not a sparse feature; "
                f"choose one of {names}"
            )
        return self

    @property
    def has_validation(self) -> bool:
        return bool(self.validation_days) or self.validation_fraction is not None

    def sparse_feature_names(self) -> list[str]:
        """Names of the sparse features this source yields, in order."""
        if self.source == DataSource.SYNTHETIC:
            names = ["user_id", "ad_id"]
            if self.synthetic.history_length > 0:
                names.append("ad_history")
            names += [f"ctx_{i}" for i in range(self.synthetic.num_context_features)]
            return names
        if self.source == DataSource.CRITEO:
            return [f"C{i + 1}" for i in range(CRITEO_NUM_SPARSE)]
        assert self.columns is not None
        return [c.name for c in self.columns.sparse]

    def num_dense_features(self) -> int:
        if self.source == DataSource.SYNTHETIC:
            return self.synthetic.num_dense_features
        if self.source == DataSource.CRITEO:
            return CRITEO_NUM_DENSE
        assert self.columns is not None
        return len(self.columns.dense)

    def resolved_stratum_feature(self) -> str:
        if self.stratum_feature:
            return self.stratum_feature
        if self.source == DataSource.SYNTHETIC:
            return "ad_id"
        return self.sparse_feature_names()[0]


# --------------------------------------------------------------------------- training


class SparseOptimizerSpec(_Strict):
    """FBGEMM fused optimizer for embedding tables.

    Args:
        type: ``rowwise_adagrad`` (FBGEMM EXACT_ROWWISE_ADAGRAD, the fast path).
        lr (float): learning rate.
        eps (float): AdaGrad epsilon.
        gradient_clipping (bool): FBGEMM per-row gradient clipping.
        max_gradient (float): clip value when ``gradient_clipping`` is on.
    """

    type: Literal["rowwise_adagrad"] = "rowwise_adagrad"
    lr: float = Field(0.04, gt=0.0, le=100.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    gradient_clipping: bool = False
    max_gradient: float = Field(1.0, gt=0.0, le=1e6)


class DenseOptimizerType(str, Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAGRAD = "adagrad"
    RMSPROP = "rmsprop"
    ADAM = "adam"


class DenseOptimizerSpec(_Strict):
    """Torch optimizer for the dense (MLP) parameters.

    Args:
        type: sgd / momentum / adagrad / rmsprop / adam.
        lr (float): learning rate.
        momentum (float): for ``momentum`` (and rmsprop).
        eps (float): for adagrad / rmsprop / adam.
        betas (tuple[float, float]): for adam.
    """

    type: DenseOptimizerType = DenseOptimizerType.ADAM
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (
        0.9,
        0.999,
    )


class InitFrom(_Strict):
    """``training.init_from``: start from another run's model instead of fresh weights.

    Args:
        job (str | None): a job id of the same owner; the service resolves it to its
            checkpoint at submit (only your own, finished jobs) and fills ``checkpoint``.
        checkpoint (str | None): a run directory, a job's storage location or one
            checkpoint directory (path, ``file://`` or ``s3://``).
        pass_ (int | None, ``pass`` in YAML): the 0-based pass of that run whose
            end-of-pass checkpoint to load; default the run's selected pass (lowest
            validation NE), else its last.
        reset_optimizer (bool): load the weights only; the row-wise AdaGrad
            accumulators and the dense optimizer start fresh.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
    )

    job: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    checkpoint: str | None = Field(None, min_length=1, max_length=4096)
    pass_: int | None = Field(None, alias="pass", ge=0, le=1000)
    reset_optimizer: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "InitFrom":
        if self.job is None and self.checkpoint is None:
            raise ValueError(
                "training.init_from: name the model to start from: training.init_from.job (a job id) "
                "or training.init_from.checkpoint (a run directory or checkpoint URI)"
            )
        return self


class TrainingSpec(_Strict):
    """How to train.

    Args:
        num_passes (int): passes over the training days.
        sparse_optimizer / dense_optimizer: see their sections.
        reset_lr_each_pass (bool): reset the AdaGrad accumulators (and dense optimizer
            state) at the start of every pass.
        dense_grad_clip_norm (float | None): clip dense gradients by global norm.
        seed (int): model init and shuffling seed.
        checkpoint_every_steps (int | None): also checkpoint every N steps (a
            checkpoint is always written at the end of every pass).
        max_failures (int): worker-group restarts Ray Train may do (resuming from
            the last checkpoint) before the run fails.
        max_wall_seconds (int | None): wall-clock limit of the job; past it the
            service cancels the job with the reason (the service's
            ``RECTRAIN_MAX_WALL_SECONDS`` bounds it and applies when unset).
        on_divergence: ``fail`` (default): a non-finite training loss or NE stops
            the job as failed ("diverged at step N (loss = nan)"); ``continue``
            keeps training and only reports it.
        init_from (InitFrom | None): warm start from another run's model (see
            :class:`InitFrom`); default: fresh weights.
        compile (bool): ``torch.compile`` the dense part (dense arch, interaction,
            over arch; never the sharded embeddings).
        pipeline: ``auto`` | ``sparse_dist`` | ``none``: overlap the next batches' copy
            and input distribution with the step (trainer/pipeline.py).
    """

    num_passes: int = Field(1, ge=1, le=1000)
    sparse_optimizer: SparseOptimizerSpec = Field(default_factory=SparseOptimizerSpec)
    dense_optimizer: DenseOptimizerSpec = Field(default_factory=DenseOptimizerSpec)
    reset_lr_each_pass: bool = False
    dense_grad_clip_norm: float | None = Field(None, gt=0.0, le=1e6)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10**9)
    max_failures: int = Field(0, ge=0, le=100)
    max_wall_seconds: int | None = Field(None, ge=1, le=MAX_WALL_SECONDS)
    on_divergence: Literal["fail", "continue"] = "fail"
    init_from: InitFrom | None = None
    compile: bool = Field(
        False,
        description=(
            "torch.compile (inductor, static shapes) the dense part: dense arch, interaction and "
            "over arch; the sharded embedding tables stay eager. Each worker compiles once for "
            "training and once for evaluation on its first batches (about 30 s on a cold inductor "
            "cache, 2-7 s on a warm one, on 2 CPU cores); same losses as eager to float32 "
            "rounding, but dropout draws its masks from inductor's generator. On the CPU at "
            "26 x 100k x 64, batch 2048, dot interaction: about 1.07x the eager step "
            "(BENCHMARKS.md, 'torch.compile'); measured on the CPU only."
        ),
    )
    pipeline: Literal["auto", "sparse_dist", "none"] = Field(
        "auto",
        description=(
            "How training steps run. 'sparse_dist': TorchRec's TrainPipelineSparseDist, which "
            "overlaps the next batch's device copy and input all-to-all with the current step "
            "(same results as 'none': the lookups still read the embeddings after the previous "
            "step's update); 'none': one step at a time; 'auto' (default): sparse_dist on CUDA, "
            "none on the CPU, where it did not pay (BENCHMARKS.md, 'Sparse-dist pipeline')."
        ),
    )
    pass_checkpoints: Literal["every", "selected"] | None = Field(
        None,
        description=(
            "Which pass ends are checkpointed: 'every' pass, or only a pass that can be the "
            "validation-selected one ('selected'; without validation data, the last pass). "
            "Unset: 'every' for a job run on its own, 'selected' for a study run on a warm "
            "worker group (docs/studies.md, 'Warm execution')."
        ),
    )


# --------------------------------------------------------------------------- regularizers


_Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
_Factor = Annotated[float, Field(ge=0.0, le=100.0)]


class SparseL2(_Strict):
    """``sparse_l2``: adds lambda * w to the gradient of each embedding row activated
    in the batch (FBGEMM ``weight_decay`` with mode L2), or, with ``decouple``,
    shrinks those rows by lr * lambda * w after the step (mode DECOUPLE). ``mode``
    selects any of FBGEMM's WeightDecayMode: ``l2``, ``decouple``, ``counter`` (decay
    scaled by counter_halflife / the row's decayed read count), ``cowclip`` (gradient
    clipped to the row's count x max(weight_norm_coefficient x |w|, lower_bound)),
    ``decouple_global`` (every row decays every step, lazily; CUDA only). Formulas and
    where each runs: docs/regularizers.md."""

    type: Literal["sparse_l2"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")
    decouple: bool = False
    # FBGEMM's WeightDecayMode (issue 25; docs/regularizers.md, "sparse_l2 modes"):
    # unset = ``l2``, or ``decouple`` with ``decouple: true``
    mode: Literal["l2", "decouple", "decouple_global", "counter", "cowclip"] | None = None
    counter_halflife: int | None = Field(
        None,
        ge=-1,
        le=10**9,
        description="counter (required, >= 1) / cowclip (default -1): steps to halve a row's count; "
        "0: the count is 1; -1: the raw count",
    )
    # the modes' own parameters are unset (None) unless given, so a spec that does not use
    # a mode does not carry its defaults around (the dashboard lists a regularizer's set
    # parameters); the effective values are the properties below
    counter_decay: Literal["none", "l2", "decouple"] | None = Field(
        None,
        description="counter/cowclip: how lambda is applied (FBGEMM CounterWeightDecayMode; default decouple)",
    )
    weight_norm_coefficient: float | None = Field(
        None, ge=0.0, le=1e6, description="cowclip: clip ratio to the row norm (default 0)"
    )
    lower_bound: float | None = Field(
        None, ge=0.0, le=1e6, description="cowclip: smallest clip threshold (default 0)"
    )
    gwd_lower_bound: float | None = Field(
        None, ge=0.0, le=1.0, description="decouple_global: floor of the lazy decay (default 0)"
    )

    @model_validator(mode="after")
    def _mode(self) -> "SparseL2":
        if self.mode is not None and self.decouple and self.mode != "decouple":
            raise ValueError(f"sparse_l2: decouple: true contradicts mode: {self.mode}; drop decouple")
        if self.mode == "counter" and (self.counter_halflife is None or self.counter_halflife < 1):
            raise ValueError(
                "sparse_l2: mode counter scales the decay by counter_halflife / (the row's decayed count): "
                "set counter_halflife >= 1 (steps)"
            )
        if self.mode == "cowclip" and not self.weight_norm_coefficient and not self.lower_bound:
            raise ValueError(
                "sparse_l2: mode cowclip clips every gradient to 0 without weight_norm_coefficient "
                "or lower_bound; set one of them > 0"
            )
        return self

    @property
    def effective_mode(self) -> str:
        return self.mode or ("decouple" if self.decouple else "l2")

    @property
    def effective_counter_decay(self) -> str:
        return self.counter_decay or "decouple"


class SparseL1(_Strict):
    """``sparse_l1``: after each step, soft-threshold every element of each activated
    row towards zero by lr * lambda without crossing it:
    w <- sign(w) * max(|w| - lr * lambda, 0) (lr: the current sparse learning rate)."""

    type: Literal["sparse_l1"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")


class MaxNorm(_Strict):
    """``max_norm``: after each step, every activated row with L2 norm > c is
    rescaled to norm c."""

    type: Literal["max_norm"]
    c: float = Field(gt=0.0, le=1e6, description="maximum row norm")


class ConstNorm(_Strict):
    """``const_norm``: after each step, every activated (non-zero) row is rescaled
    to L2 norm exactly c."""

    type: Literal["const_norm"]
    c: float = Field(gt=0.0, le=1e6, description="row norm")


class SparseDropout(_Strict):
    """``sparse_dropout``: training only, each sparse id is dropped with probability
    p (``per_feature`` overrides p for the named sparse features). All replicas of a
    feature drop the same ids. ``rescale`` (default true): kept ids count 1/(1-p) in
    their (sum-pooled) bag, so training bags match test bags in expectation (inverted
    dropout, like ``dropout``); false: kept ids count 1, training bags are smaller."""

    type: Literal["sparse_dropout"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)
    rescale: bool = True


class Dropout(_Strict):
    """``dropout``: training only, dropout with probability p on the hidden units of
    the dense and over arch."""

    type: Literal["dropout"]
    p: _Prob


class DenseL2(_Strict):
    """``dense_l2``: weight decay lambda on dense weight matrices (the dense
    optimizer's ``weight_decay``); biases and other 1-D parameters are never decayed."""

    type: Literal["dense_l2"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")


class SseSe(_Strict):
    """``sse_se``: Stochastic Shared Embeddings, training only: each id is replaced
    with probability p by a uniformly random row of the same table (after hashing);
    ``per_feature`` overrides p for the named sparse features."""

    type: Literal["sse_se"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)


class FreezeWhat(str, Enum):
    EMBEDDINGS = "embeddings"
    DENSE = "dense"
    BOTH = "both"


class Freeze(_Strict):
    """``freeze``: from pass ``from_pass`` on (0-based, as the ``pass`` of the
    results: 1 = from the second pass), stop updating the embeddings, the dense
    part or both (learning rate 0)."""

    type: Literal["freeze"]
    from_pass: int = Field(ge=0, le=1000)
    what: FreezeWhat = FreezeWhat.EMBEDDINGS


class LrSchedule(_Strict):
    """``lr_schedule``: per-pass learning-rate factors for the sparse and dense
    optimizers (``sparse[k]`` multiplies the sparse lr during pass k; passes beyond
    the list keep its last factor; an empty list means 1), and with ``reset`` the
    AdaGrad accumulators (and dense optimizer state) are zeroed at every pass start
    after the first."""

    type: Literal["lr_schedule"]
    sparse: list[_Factor] = Field(default_factory=list)
    dense: list[_Factor] = Field(default_factory=list)
    reset: bool = False


class Shrink(_Strict):
    """``shrink``: embedding shrinkage. At the end of every pass (``at_pass_end``) and
    after every ``every_steps``-th step of a pass, each embedding row that training
    read in the current pass so far (on any worker; count c >= 1), and with
    ``max_count`` K only rows with c < K, is multiplied by 1 - s. Rows not read in
    the pass are never touched. The row-wise AdaGrad accumulator of a shrunk row is
    left as is unless ``reset_state`` (then it is set to 0). Nothing happens while
    the embeddings are frozen (sparse learning rate 0)."""

    type: Literal["shrink"]
    s: float = Field(gt=0.0, le=1.0, description="shrink factor: w <- (1 - s) * w")
    at_pass_end: bool = True
    every_steps: int | None = Field(None, ge=1, le=10**9)
    max_count: int | None = Field(None, ge=1, le=10**12, description="K: only rows read fewer than K times")
    reset_state: bool = False


class MaxEntropy(_Strict):
    """``max_entropy``: adds to the loss, per table t (every replica), lambda_t *
    (log D - H(p_t)) with p_t,d = E_t,d / sum_d' E_t,d' and E_t,d = sum over the
    worker's batch of the squared pooled embedding e_t,b,d^2: rewards spreading the
    embedding energy over all D dimensions. ``per_feature`` overrides lambda (0
    turns it off for a feature). Its gradient reaches the rows through the fused
    optimizer like the loss's."""

    type: Literal["max_entropy"]
    weight: float = Field(gt=0.0, le=100.0, description="lambda")
    per_feature: dict[str, Annotated[float, Field(ge=0.0, le=100.0)]] = Field(default_factory=dict)


class SseGraph(_Strict):
    """``sse_graph``: SSE-Graph, training only: each id of a listed feature is
    replaced with probability p by a neighbour in a graph built once from the
    training days. Synthetic source: ids of the same ground-truth cluster
    (``features`` default: user_id, ad_id, ad_history). Table source: ids of a
    feature that share a value of ``graph_column`` (a declared sparse column) in
    some training row; ``features`` is required. Criteo has no graph (refused)."""

    type: Literal["sse_graph"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)
    features: list[str] | None = Field(None, min_length=1)
    graph_column: str | None = Field(None, min_length=1)

    def graph_features(self, data: DataSpec) -> list[str]:
        """The features whose ids are replaced (the synthetic default: those with clusters)."""
        if self.features is not None:
            return list(self.features)
        names = data.sparse_feature_names()
        return [f for f in SYNTHETIC_GRAPH_FEATURES if f in names]

    def rate(self, feature: str) -> float:
        return self.per_feature.get(feature, self.p)


SYNTHETIC_GRAPH_FEATURES = ("user_id", "ad_id", "ad_history")


class FreqDecay(_Strict):
    """``freq_decay``: frequency-aware decoupled decay (AdagradAR, Li & Lyu, ICLR 2026,
    arXiv 2511.06374). When a training step reads an embedding row last read at clock
    t0, its update becomes w <- (1 - lambda) * w - lr * g / (sqrt(G) + eps) with
    lambda = min(1, alpha * (t - t0)), w the pre-step weight (decoupled: the AdaGrad
    state sees only the loss gradient). The clock counts training steps (``interval:
    steps``) or training examples over all workers (``examples``); a row's first read
    counts one step. Rare rows are shrunk most, rows read every step by alpha."""

    type: Literal["freq_decay"]
    alpha: float = Field(gt=0.0, le=1.0, description="decay per unit of interval (step or example)")
    interval: Literal["steps", "examples"] = "steps"


class EmbeddingReset(_Strict):
    """``embedding_reset`` (MEDA, arXiv 2305.19531): at the start of the chosen passes
    (``every`` k-th pass after the first: passes k, 2k, ...; or the 0-based ``passes``
    listed), every embedding table (or the tables of the listed ``features``, all their
    replicas) is drawn again from the job's initialiser, with a seed derived from
    (training.seed, pass), and its row-wise AdaGrad state is zeroed; the dense layers
    and the dense optimizer keep their state. Default: every pass after the first."""

    type: Literal["embedding_reset"]
    every: int | None = Field(None, ge=1, le=1000, description="reset at passes k, 2k, ...")
    passes: list[Annotated[int, Field(ge=1, le=1000)]] | None = Field(None, min_length=1, max_length=1000)
    features: list[str] | None = Field(None, min_length=1)

    def reset_passes(self, num_passes: int) -> list[int]:
        """The 0-based passes at whose start the tables are reset."""
        if self.passes is not None:
            return sorted(p for p in set(self.passes) if p < num_passes)
        k = self.every or 1
        return list(range(k, num_passes, k))


class MinCount(_Strict):
    """``min_count`` (frequency admission, Zhang et al., arXiv 2209.06053): ids of a
    sparse feature seen fewer than ``k`` times in the training days (raw ids, counted
    once before training over every worker's rows) share one row of the feature's
    table(s); at evaluation, ids unseen or rare in training read that same row.
    ``per_feature`` overrides k for the named features (1 turns it off)."""

    type: Literal["min_count"]
    k: int = Field(ge=1, le=10**9, description="ids seen fewer than k times share a row")
    per_feature: dict[str, Annotated[int, Field(ge=1, le=10**9)]] = Field(default_factory=dict)

    def threshold(self, feature: str) -> int:
        return self.per_feature.get(feature, self.k)


Regularizer = Annotated[
    Union[
        SparseL2,
        SparseL1,
        MaxNorm,
        ConstNorm,
        SparseDropout,
        Dropout,
        DenseL2,
        SseSe,
        Freeze,
        LrSchedule,
        Shrink,
        MaxEntropy,
        SseGraph,
        FreqDecay,
        EmbeddingReset,
        MinCount,
    ],
    Field(discriminator="type"),
]
REGULARIZER_TYPES = (
    "sparse_l2",
    "sparse_l1",
    "max_norm",
    "const_norm",
    "sparse_dropout",
    "dropout",
    "dense_l2",
    "sse_se",
    "freeze",
    "lr_schedule",
    "shrink",
    "max_entropy",
    "sse_graph",
    "freq_decay",
    "embedding_reset",
    "min_count",
)


# --------------------------------------------------------------------------- scaling / metrics


class ScalingSpec(_Strict):
    """Where to run.

    Args:
        num_workers (int): Ray Train workers (data-parallel dense, model-parallel
            sparse).
        use_gpu (bool): one GPU per worker, CUDA + NCCL; else CPU + gloo.
        cpus_per_worker (float): Ray CPUs reserved per worker; also the worker's torch
            intra-op threads (rounded down, at least 1).
        memory_per_worker_gb (float): memory each worker has; specs whose embedding
            estimate exceeds it are refused.
        gpu_memory_gb (float | None): memory of each worker's GPU (``use_gpu`` only).
            Set, the embedding estimate is checked against it (minus a reserve) at
            submit; unset, against the GPU the worker gets, when it starts. Tables
            always stay in GPU memory: a model that would need UVM/host spill is refused.
    """

    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0, le=256.0)
    memory_per_worker_gb: float = Field(8.0, gt=0.0, le=4096.0)
    gpu_memory_gb: float | None = Field(None, gt=0.0, le=4096.0)


class MlflowSpec(_Strict):
    """Where rank 0 logs the run in MLflow (:mod:`trainer.metrics.tracking`).

    Args:
        tracking_uri (str): the MLflow tracking server (``http://mlflow:5000``, or a
            ``file:`` store for one machine).
        experiment (str): the MLflow experiment, created if missing.
        run_name (str): the MLflow run's name (default: the job id or run directory).
        parent_run_id (str): nest the run under this MLflow run (a study's parent run).
        tags (dict): extra MLflow tags.
    """

    tracking_uri: str = Field(min_length=1, max_length=2048)
    experiment: str = Field("rectrain", min_length=1, max_length=256)
    run_name: str | None = Field(None, max_length=256)
    parent_run_id: str | None = Field(None, max_length=64)
    tags: dict[str, str] = Field(default_factory=dict, max_length=64)


class MetricsSpec(_Strict):
    """Metric cadence, and the trackers that also receive the run's metrics.

    Args:
        window_size (int): examples (over all workers) in the windowed train NE.
        report_every_steps (int): emit windowed train NE every N steps.
        tensorboard (bool): also write TensorBoard event files to ``<run dir>/tensorboard``;
            unset: the service's default (``RECTRAIN_TENSORBOARD``), off for ``rectrain run``.
        mlflow (MlflowSpec): also log the run to this MLflow tracking server; unset: the
            service's ``RECTRAIN_MLFLOW_TRACKING_URI`` when set, else none.
    """

    window_size: int = Field(100_000, ge=1, le=100_000_000)
    report_every_steps: int = Field(50, ge=1, le=10**9)
    tensorboard: bool | None = None
    mlflow: MlflowSpec | None = None


# --------------------------------------------------------------------------- the spec


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
            raise ValueError(
                f"metrics.window_size: {self.metrics.window_size} gives "
                f"{per_rank_window} examples per worker, below data.batch_size "
                f"({self.data.batch_size}); raise it to at least "
                f"{self.data.batch_size * self.scaling.num_workers}"
            )
        kinds = [r.type for r in self.regularizers]
        dup = sorted({k for k in kinds if kinds.count(k) > 1})
        if dup:
            raise ValueError(f"regularizers: each type may appear once; repeated: {dup}")
        self._check_regularizers()
        return self

    def _check_regularizers(self) -> None:
        """Cross-checks of regularizer parameters against the data and training."""
        names = self.data.sparse_feature_names()
        passes = self.training.num_passes
        for i, r in enumerate(self.regularizers):
            if isinstance(r, SparseL2) and r.mode == "decouple_global" and not self.scaling.use_gpu:
                raise ValueError(
                    f"regularizers.{i}.mode: decouple_global runs in FBGEMM's CUDA kernel only "
                    "(fbgemm-gpu-cpu has no CPU kernel for it and rectrain no exact fallback); "
                    "set scaling.use_gpu: true or use mode: decouple"
                )
            if isinstance(r, (SparseDropout, SseSe)):
                for f in r.per_feature:
                    if f not in names:
                        raise ValueError(
                            f"regularizers.{i}.per_feature: '{f}' is not a sparse feature; "
                            f"choose among {names}"
                        )
            elif isinstance(r, Freeze) and r.from_pass >= passes:
                raise ValueError(
                    f"regularizers.{i}.from_pass: {r.from_pass} is beyond training.num_passes "
                    f"({passes}); passes are numbered from 0, so use 0..{passes - 1}"
                )
            elif isinstance(r, Shrink) and not r.at_pass_end and r.every_steps is None:
                raise ValueError(
                    f"regularizers.{i}.every_steps: shrink never runs with at_pass_end false and "
                    "no every_steps; set every_steps or at_pass_end: true"
                )
            elif isinstance(r, MaxEntropy):
                for f in r.per_feature:
                    if f not in names:
                        raise ValueError(
                            f"regularizers.{i}.per_feature: '{f}' is not a sparse feature; "
                            f"choose among {names}"
                        )
            elif isinstance(r, SseGraph):
                self._check_sse_graph(i, r, names)
            elif isinstance(r, EmbeddingReset):
                self._check_embedding_reset(i, r, names)
            elif isinstance(r, MinCount):
                for f in r.per_feature:
                    if f not in names:
                        raise ValueError(
                            f"regularizers.{i}.per_feature: '{f}' is not a sparse feature; "
                            f"choose among {names}"
                        )
            elif isinstance(r, LrSchedule):
                for field in ("sparse", "dense"):
                    n = len(getattr(r, field))
                    if n > passes:
                        raise ValueError(
                            f"regularizers.{i}.{field}: {n} factors for training.num_passes "
                            f"= {passes}; give at most one factor per pass"
                        )

    def _check_embedding_reset(self, i: int, r: EmbeddingReset, names: list[str]) -> None:
        passes = self.training.num_passes
        if r.every is not None and r.passes is not None:
            raise ValueError(
                f"regularizers.{i}.passes: give either every (reset every k-th pass) or passes "
                "(the list of passes), not both"
            )
        if r.passes is not None:
            late = sorted(p for p in r.passes if p >= passes)
            if late:
                raise ValueError(
                    f"regularizers.{i}.passes: {late} are beyond training.num_passes ({passes}); "
                    f"passes are numbered from 0 and pass 0 starts fresh anyway, so use 1..{passes - 1}"
                )
            if len(set(r.passes)) != len(r.passes):
                raise ValueError(f"regularizers.{i}.passes: each pass may appear once")
        elif r.every is not None and r.every >= passes:
            raise ValueError(
                f"regularizers.{i}.every: {r.every} never resets with training.num_passes = {passes} "
                f"(resets happen at passes every, 2*every, ... below num_passes); use 1..{max(passes - 1, 1)}"
            )
        elif r.every is None and passes < 2:
            raise ValueError(
                f"regularizers.{i}.type: embedding_reset resets at the start of passes after the "
                "first, and training.num_passes is 1; raise num_passes"
            )
        for f in r.features or []:
            if f not in names:
                raise ValueError(
                    f"regularizers.{i}.features: '{f}' is not a sparse feature; choose among {names}"
                )
        if r.features is not None and len(set(r.features)) != len(r.features):
            raise ValueError(f"regularizers.{i}.features: each feature may appear once")

    def _check_sse_graph(self, i: int, r: SseGraph, names: list[str]) -> None:
        src = self.data.source
        if src == DataSource.CRITEO:
            raise ValueError(
                f"regularizers.{i}.type: sse_graph needs a graph between ids, and the criteo "
                "source has none (its 26 columns are anonymous hashed categories); use sse_se "
                "(uniform replacement) instead, or a table source with a graph_column"
            )
        if src == DataSource.SYNTHETIC:
            if r.graph_column is not None:
                raise ValueError(
                    f"regularizers.{i}.graph_column: only for data.source 'table'; the synthetic "
                    "source's graph is its ground-truth clusters (remove graph_column)"
                )
            allowed = [f for f in SYNTHETIC_GRAPH_FEATURES if f in names]
            what = "have ground-truth clusters"
        else:
            if r.graph_column is None:
                raise ValueError(
                    f"regularizers.{i}.graph_column: required for data.source 'table': the sparse "
                    f"column whose shared values link ids (e.g. a genre); choose among {names}"
                )
            if r.graph_column not in names:
                raise ValueError(
                    f"regularizers.{i}.graph_column: '{r.graph_column}' is not a sparse column of "
                    f"data.columns; choose among {names}"
                )
            if r.features is None:
                raise ValueError(
                    f"regularizers.{i}.features: required for data.source 'table': the sparse "
                    f"features whose ids are replaced by neighbours through graph_column "
                    f"'{r.graph_column}'"
                )
            allowed = [f for f in names if f != r.graph_column]
            what = "can be linked through graph_column"
        for f in r.features or []:
            if f not in allowed:
                raise ValueError(
                    f"regularizers.{i}.features: '{f}' is not a sparse feature that {what}; "
                    f"choose among {allowed}"
                )
        if r.features is not None and len(set(r.features)) != len(r.features):
            raise ValueError(f"regularizers.{i}.features: each feature may appear once")
        graph = r.features if r.features is not None else allowed
        for f in r.per_feature:
            if f not in graph:
                raise ValueError(
                    f"regularizers.{i}.per_feature: '{f}' is not one of the sse_graph features {graph}"
                )

    # ---- capacity estimate -------------------------------------------------

    def num_tables(self) -> int:
        return len(self.data.sparse_feature_names()) * self.model.num_replicas

    def table_bytes(self) -> int:
        """Bytes of one table: fp32 weights plus the row-wise AdaGrad accumulator."""
        rows, dim = self.model.hash_size, self.model.embedding_dim
        return rows * dim * _BYTES_PER_FLOAT + rows * _BYTES_PER_FLOAT

    def embedding_bytes_per_worker(self) -> int:
        """Estimate of embedding memory on the busiest worker.

        Tables are spread over workers by the planner (table-wise or row-wise); the
        busiest worker holds at least its even share, and never less than one whole
        table under table-wise sharding. The estimate uses the even share rounded up
        to whole tables, which is what table-wise placement gives.
        """
        tables_per_worker = math.ceil(self.num_tables() / self.scaling.num_workers)
        return tables_per_worker * self.table_bytes()

    def gpu_embedding_bytes_per_worker(self) -> int:
        """Embedding bytes on each GPU under the plan that needs the least memory: every
        table split row-wise over all workers (TorchRec's ROW_WISE, ``ceil(rows /
        workers)`` rows per GPU, the AdaGrad state with its rows).

        The planner (``trainer.model.sharding``: table-wise, row-wise or table-row-wise,
        FBGEMM's fused kernel, nothing spilled to UVM/host) places whole tables where they
        fit and splits tables row-wise where they do not, so a job fits its GPUs when this
        fits the planner's budget; a table larger than one GPU is not a reason to refuse
        (tests/trainer/test_gpu_planning.py checks this against the planner itself).
        """
        rows = math.ceil(self.model.hash_size / self.scaling.num_workers)
        return self.num_tables() * rows * (self.model.embedding_dim + 1) * _BYTES_PER_FLOAT

    def gpu_fit_error(self, hbm_cap: int, where: str) -> str | None:
        """Why the tables cannot fit GPUs whose planner topology says ``hbm_cap`` bytes
        (``where`` names the source of that figure), with the smallest
        ``scaling.num_workers`` that would fit; None when they fit."""
        budget = gpu_table_budget_bytes(hbm_cap)
        need = self.gpu_embedding_bytes_per_worker()
        if need <= budget:
            return None
        m, w = self.model, self.scaling.num_workers
        row_bytes = self.num_tables() * (m.embedding_dim + 1) * _BYTES_PER_FLOAT
        rows_per_gpu = budget // row_bytes
        more = ""
        if rows_per_gpu > 0:
            more = f"raise scaling.num_workers to at least {math.ceil(m.hash_size / rows_per_gpu)} GPUs, or "
        total = self.num_tables() * self.table_bytes()
        return (
            f"model: the embedding tables need {total / _GIB:.2f} GiB ({self.num_tables()} tables x "
            f"{m.hash_size} rows x {m.embedding_dim} dims, with their AdaGrad state); split row-wise "
            f"over {w} GPU{'s' if w != 1 else ''} that is {need / _GIB:.2f} GiB per GPU, but {where} "
            f"({budget / _GIB:.1f} GiB for tables after the reserve and the planner's "
            f"{PLANNER_STORAGE_MARGIN:.0%} margin); tables are not spilled to UVM/host memory (the "
            f"row-level regularizers need them on the device): {more}lower model.hash_size, "
            "model.embedding_dim or model.num_replicas"
        )

    def dense_param_count(self) -> int:
        """Parameters of the dense part: the dense arch MLP and the over arch (with its
        1-unit logit layer), as :class:`trainer.model.dlrm.DLRM` builds them."""
        m = self.model
        num_dense = self.data.num_dense_features()
        n_feat = len(self.data.sparse_feature_names())
        count, fan_in = 0, num_dense
        if num_dense > 0:
            for w in m.dense_arch:
                count += fan_in * w + w + (2 * w if m.batch_norm else 0)
                fan_in = w
        dense_out = m.dense_arch[-1] if num_dense > 0 else 0
        n_vec = n_feat + (1 if dense_out else 0)
        if m.interaction == Interaction.DOT:
            fan_in = dense_out + n_vec * (n_vec - 1) // 2
        else:
            fan_in = dense_out + n_feat * m.embedding_dim
        for w in [*m.over_arch, 1]:
            count += fan_in * w + w + (2 * w if m.batch_norm else 0)
            fan_in = w
        return count

    def _ids_per_example(self) -> int:
        """Sparse ids one example carries (multi-hot history counted at its maximum)."""
        if self.data.source == DataSource.SYNTHETIC:
            syn = self.data.synthetic
            return 2 + syn.history_length + syn.num_context_features
        return len(self.data.sparse_feature_names())

    def _batch_bytes(self) -> int:
        """One host batch: labels, weights, strata, dense floats, and per replica
        hashed ids (int64) with their lengths (int32)."""
        ids = self._ids_per_example() * self.model.num_replicas
        per_row = 3 * 8 + self.data.num_dense_features() * _BYTES_PER_FLOAT + ids * 8
        per_row += len(self.data.sparse_feature_names()) * self.model.num_replicas * 4
        return self.data.batch_size * per_row

    def memory_estimate_per_worker(self) -> dict[str, int]:
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
        m, d, t = self.model, self.data, self.training
        dense = self.dense_param_count()
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
            row_bytes = self._batch_bytes() // d.batch_size
            data = math.ceil(rows_per_day * days / self.scaling.num_workers) * row_bytes
        return {
            "embeddings": (
                self.gpu_embedding_bytes_per_worker()
                if self.scaling.use_gpu
                else self.embedding_bytes_per_worker()
            ),
            "dense": dense * _BYTES_PER_FLOAT * (2 + slots),
            "activations": activations,
            "data": data,
            "generator": generator,
            "prefetch": self._batch_bytes() * (d.prefetch_batches + 1),
        }

    def check_capacity(self) -> None:
        """Refuse a spec whose memory estimate does not fit the workers' memory (and, with
        ``use_gpu`` and ``gpu_memory_gb`` set, whose tables do not fit their GPUs': no
        UVM/host spill)."""
        gpu = self.scaling.gpu_memory_gb
        if self.scaling.use_gpu and gpu is not None:
            declared = int(gpu * _GIB)
            why = self.gpu_fit_error(
                declared - gpu_reserve_bytes(declared), f"each GPU has {gpu:g} GiB (scaling.gpu_memory_gb)"
            )
            if why:
                raise CapacityError(why)
        parts = self.memory_estimate_per_worker()
        if self.scaling.use_gpu:
            # tables, dense parameters and activations live in GPU memory (unset
            # gpu_memory_gb: checked on the worker's GPU); the host holds the rest
            for k in ("embeddings", "dense", "activations"):
                parts.pop(k)
        need = sum(parts.values())
        have = self.scaling.memory_per_worker_gb * _GIB
        if need <= have:
            return
        top = max(parts, key=lambda k: parts[k])
        breakdown = ", ".join(f"{k} {v / _GIB:.2f}" for k, v in parts.items() if v >= 0.005 * _GIB)
        advice = {
            "embeddings": "lower model.hash_size, model.embedding_dim or model.num_replicas, "
            "or raise scaling.num_workers",
            "dense": "narrow model.dense_arch / model.over_arch",
            "activations": "lower data.batch_size or narrow model.dense_arch / model.over_arch",
            "data": "lower data.synthetic.examples_per_day / data.max_examples_per_day, use fewer "
            "days, or raise scaling.num_workers",
            "generator": "lower data.synthetic.num_users / num_ads / context_cardinality",
            "prefetch": "lower data.prefetch_batches or data.batch_size",
        }[top]
        field = {
            "embeddings": "model",
            "dense": "model",
            "activations": "data.batch_size",
            "data": "data",
            "generator": "data.synthetic",
            "prefetch": "data.prefetch_batches",
        }[top]
        detail = ""
        if top == "embeddings":
            detail = (
                f" ({self.num_tables()} tables x {self.model.hash_size} rows x "
                f"{self.model.embedding_dim} dims over {self.scaling.num_workers} workers)"
            )
        raise CapacityError(
            f"{field}: the job needs about {need / _GIB:.2f} GiB per worker, most of it "
            f"{top}{detail} (GiB by part: {breakdown}), but each worker has "
            f"{self.scaling.memory_per_worker_gb:g} GiB (scaling.memory_per_worker_gb); {advice}"
        )


# --------------------------------------------------------------------------- loading


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path."""
    lines = []
    for e in err.errors():
        loc_parts = list(e["loc"])
        # a regularizer's own fields: drop pydantic's union tag from the path
        # (regularizers.0.max_norm.c -> regularizers.0.c)
        if len(loc_parts) > 2 and loc_parts[0] == "regularizers" and loc_parts[2] in REGULARIZER_TYPES:
            del loc_parts[2]
        msg = e["msg"]
        is_reg = bool(loc_parts) and loc_parts[0] == "regularizers"
        if is_reg and e["type"] == "union_tag_invalid":
            loc_parts.append("type")
            msg = (
                f"unknown regularizer type '{e['ctx']['tag']}'; choose one of {', '.join(REGULARIZER_TYPES)}"
            )
        elif is_reg and e["type"] == "union_tag_not_found":
            loc_parts.append("type")
            msg = f"required (one of {', '.join(REGULARIZER_TYPES)})"
        loc = ".".join(str(p) for p in loc_parts)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        # model validators already name their field; avoid "x: x: ..."
        lines.append(msg if (not loc or msg.split(":", 1)[0] in FIELD_PATHS) else f"{loc}: {msg}")
    return "\n".join(lines)


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.add(path)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, path + ".")
    return out


# every dotted field path of a job spec: validation messages that start with one are
# reported at that field (here and by the API)
FIELD_PATHS = _field_paths(JobSpec) | {"regularizers", "model", "data"}


def parse_spec(data: dict[str, Any], *, check_capacity: bool = True) -> JobSpec:
    """Validate a spec dict; raise :class:`SpecError` naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError("spec: the top level must be a mapping of sections (model, data, ...)")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None
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
