"""The spec's ``data`` section: the source (synthetic generator, Criteo TSV, Parquet/CSV
table), its days and batching (read by :mod:`trainer.data.dataset`). Imports no torch."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import Field, model_validator

from trainer.config_base import MAX_DAY, MAX_DAYS, MAX_ID_UNIVERSE, MAX_SEED
from trainer.config_base import Strict as _Strict
from trainer.errors import FieldValueError


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
            raise FieldValueError(("data", "path"), f"required when data.source is '{self.source.value}'")
        if self.source == DataSource.TABLE and self.columns is None:
            raise FieldValueError(("data", "columns"), "required when data.source is 'table'")
        if self.source != DataSource.TABLE and self.columns is not None:
            raise FieldValueError(("data", "columns"), "only allowed when data.source is 'table'")
        if self.rare_max_count >= self.frequent_min_count:
            raise FieldValueError(
                ("data", "rare_max_count"),
                f"must be below data.frequent_min_count ({self.rare_max_count} >= {self.frequent_min_count})",
            )
        if self.validation_days and self.validation_fraction is not None:
            raise FieldValueError(
                ("data", "validation_fraction"),
                "set either data.validation_days (whole days) or "
                "data.validation_fraction (the last part of the last training day), not both",
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
                    raise FieldValueError(
                        ("data", name_b),
                        f"days {overlap} are also in data.{name_a}; "
                        "training, validation and test days must not overlap",
                    )
        names = self.sparse_feature_names()
        if self.stratum_feature is not None and self.stratum_feature not in names:
            raise FieldValueError(
                ("data", "stratum_feature"),
                f"'{self.stratum_feature}' is not a sparse feature; choose one of {names}",
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
