"""File sources: the Criteo TSV layout and declared Parquet/CSV tables.

Both stream from disk in bounded chunks (pandas ``chunksize`` / Parquet row
groups), hash ids as they go and never hold the raw text in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.data.chunk import Chunk
from trainer.data.hashing import MISSING, base_hash_column, base_hash_strings
from trainer.errors import DataError
from trainer.spec import CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE, TableColumns

_CHUNK_ROWS = 1 << 17

CRITEO_DENSE = [f"I{i + 1}" for i in range(CRITEO_NUM_DENSE)]
CRITEO_SPARSE = [f"C{i + 1}" for i in range(CRITEO_NUM_SPARSE)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]


def day_path(pattern: str, day: int) -> Path:
    p = Path(pattern.replace("{day}", str(day)))
    if not p.exists():
        raise DataError(f"data.path: no file for day {day}: {p} does not exist")
    return p


def _log_dense(values: np.ndarray) -> np.ndarray:
    """DLRM's transform: log(1 + max(x, 0)); missing -> 0."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(v, 0.0)).astype(np.float32)


class CriteoTSV:
    """Criteo layout: ``label \\t I1..I13 \\t C1..C26`` (hex), one file per day."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def read_day(self, day: int, max_rows: int | None = None) -> Iterator[Chunk]:
        path = day_path(self.pattern, day)
        reader = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=CRITEO_COLUMNS,
            chunksize=_CHUNK_ROWS,
            dtype={c: "string" for c in CRITEO_SPARSE},
            na_values=[""],
            keep_default_na=False,
            nrows=max_rows,
            on_bad_lines="error",
            engine="c",
        )
        try:
            for df in reader:
                yield self._chunk(df, path)
        except (ValueError, pd.errors.ParserError) as e:
            raise DataError(f"{path}: not in the Criteo TSV layout (label, I1-I13, C1-C26): {e}") from None

    @staticmethod
    def _chunk(df: pd.DataFrame, path: Path) -> Chunk:
        n = len(df)
        label = pd.to_numeric(df["label"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(label).any() or not np.isin(label, (0.0, 1.0)).all():
            raise DataError(f"{path}: the label column (first) must hold 0 or 1 on every line")
        dense = np.stack(
            [
                pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                for c in CRITEO_DENSE
            ],
            axis=1,
        )
        sparse = {}
        ones = np.ones(n, dtype=np.int32)
        for c in CRITEO_SPARSE:
            sparse[c] = (base_hash_strings(df[c].to_numpy(dtype=object, na_value=None)), ones)
        return Chunk(label.astype(np.float32), _log_dense(dense), sparse)


class Table:
    """Parquet or CSV with declared label, day, sparse and dense columns."""

    def __init__(self, pattern: str, columns: TableColumns) -> None:
        self.pattern = pattern
        self.columns = columns

    def _path(self, day: int) -> Path:
        if "{day}" in self.pattern:
            return day_path(self.pattern, day)
        p = Path(self.pattern)
        if not p.exists():
            raise DataError(f"data.path: {p} does not exist")
        return p

    def _frames(self, path: Path) -> Iterator[pd.DataFrame]:
        cols = self.columns
        wanted = [cols.label, cols.day, *[s.name for s in cols.sparse], *cols.dense]
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            f = pq.ParquetFile(path)
            missing = [c for c in wanted if c not in f.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: columns {missing} declared in data.columns are not in the file")
            for batch in f.iter_batches(batch_size=_CHUNK_ROWS, columns=wanted):
                yield batch.to_pandas()
        elif suffix in (".csv", ".tsv", ".txt", ".data", ".inter"):
            sep = "\t" if suffix in (".tsv", ".inter", ".data") else ","
            try:
                head = pd.read_csv(path, sep=sep, nrows=0)
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file is empty") from None
            # tolerate RecBole-style "name:type" headers
            rename = {h: h.split(":")[0] for h in head.columns}
            missing = [c for c in wanted if c not in rename.values()]
            if missing:
                raise DataError(f"{path}: columns {missing} declared in data.columns are not in the file")
            for df in pd.read_csv(path, sep=sep, chunksize=_CHUNK_ROWS, dtype=str, keep_default_na=True):
                yield df.rename(columns=rename)
        else:
            raise DataError(f"data.path: {path} must end in .parquet, .csv or .tsv")

    def read_day(self, day: int, max_rows: int | None = None) -> Iterator[Chunk]:
        cols = self.columns
        path = self._path(day)
        seen = 0
        for df in self._frames(path):
            days = pd.to_numeric(df[cols.day], errors="coerce")
            if cols.day_seconds is not None:
                days = np.floor((days - cols.day_origin) / cols.day_seconds)
            df = df[(days == day).to_numpy()]
            if max_rows is not None:
                df = df.iloc[: max_rows - seen]
            if len(df) == 0:
                continue
            seen += len(df)
            yield self._chunk(df, path)
            if max_rows is not None and seen >= max_rows:
                return

    def _chunk(self, df: pd.DataFrame, path: Path) -> Chunk:
        cols = self.columns
        n = len(df)
        raw = pd.to_numeric(df[cols.label], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(raw).any():
            raise DataError(f"{path}: label column '{cols.label}' has missing or non-numeric values")
        if cols.label_threshold is not None:
            label = (raw >= cols.label_threshold).astype(np.float32)
        else:
            if not np.isin(raw, (0.0, 1.0)).all():
                raise DataError(
                    f"{path}: label column '{cols.label}' must hold 0/1; set data.columns.label_threshold "
                    "to turn a rating into a click (e.g. 4)"
                )
            label = raw.astype(np.float32)
        if cols.dense:
            dense = np.stack(
                [
                    pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                    for c in cols.dense
                ],
                axis=1,
            )
            dense = np.nan_to_num(dense, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        else:
            dense = np.zeros((n, 0), dtype=np.float32)
        sparse = {}
        for sc in cols.sparse:
            col = df[sc.name]
            if sc.multi_valued:
                lists = col.astype("string").fillna("").str.split(sc.separator, regex=False)
                lists = lists.map(lambda xs: [x for x in xs if x != ""])
                lengths = lists.map(len).to_numpy(dtype=np.int32)
                flat = lists.explode().dropna()
                values = (
                    base_hash_strings(flat.to_numpy(dtype=object)) if len(flat) else np.zeros(0, np.uint64)
                )
                sparse[sc.name] = (values, lengths)
            else:
                h = base_hash_column(col) if len(col) else np.zeros(0, np.uint64)
                h = np.where(col.isna().to_numpy(), MISSING, h).astype(np.uint64)
                sparse[sc.name] = (h, np.ones(n, dtype=np.int32))
        return Chunk(label, dense, sparse)
