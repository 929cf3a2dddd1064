"""File sources: the Criteo TSV layout and declared Parquet/CSV tables.

Both stream in bounded chunks (pandas ``chunksize`` / Parquet row groups), hash ids
as they go and never hold the raw text in memory. ``data.path`` is a local path or a
URI (``s3://bucket/logs/day={day}/*.parquet``), read through :mod:`trainer.storage`;
``{day}`` is replaced by the day and wildcards may match several files per day.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from trainer.data.chunk import Chunk
from trainer.data.hashing import MISSING, base_hash_column, base_hash_strings
from trainer.errors import DataError
from trainer.spec import CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE, TableColumns
from trainer.storage import StorageError, expand, open_input_file

_CHUNK_ROWS = 1 << 17

CRITEO_DENSE = [f"I{i + 1}" for i in range(CRITEO_NUM_DENSE)]
CRITEO_SPARSE = [f"C{i + 1}" for i in range(CRITEO_NUM_SPARSE)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]


def data_files(pattern: str, day: int | None = None) -> list[str]:
    """The files of ``data.path`` (for ``day`` when it holds ``{day}``): one path or URI,
    or every match of its wildcards."""
    loc = pattern.replace("{day}", str(day)) if day is not None else pattern
    try:
        return expand(loc, "data.path")
    except StorageError as e:
        what = f" (day {day})" if day is not None and "{day}" in pattern else ""
        raise DataError(f"{e}{what}") from None


def _suffix(location: str) -> str:
    name = location.partition("?")[0].rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _log_dense(values: np.ndarray) -> np.ndarray:
    """DLRM's transform: log(1 + max(x, 0)); missing -> 0."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(v, 0.0)).astype(np.float32)


class CriteoTSV:
    """Criteo layout: ``label \\t I1..I13 \\t C1..C26`` (hex), one file per day."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def read_day(self, day: int, max_rows: int | None = None) -> Iterator[Chunk]:
        seen = 0
        for path in data_files(self.pattern, day):
            for chunk in self._read_file(path, None if max_rows is None else max_rows - seen):
                seen += len(chunk)
                yield chunk
            if max_rows is not None and seen >= max_rows:
                return

    def _read_file(self, path: str, max_rows: int | None) -> Iterator[Chunk]:
        f = open_input_file(path)
        reader = pd.read_csv(
            f,
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
        finally:
            f.close()

    @staticmethod
    def _chunk(df: pd.DataFrame, path: str) -> Chunk:
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

    def _paths(self, day: int) -> list[str]:
        return data_files(self.pattern, day if "{day}" in self.pattern else None)

    def _frames(self, path: str) -> Iterator[pd.DataFrame]:
        cols = self.columns
        wanted = [cols.label, cols.day, *[s.name for s in cols.sparse], *cols.dense]
        suffix = _suffix(path)
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            with open_input_file(path) as raw:
                f = pq.ParquetFile(raw)
                missing = [c for c in wanted if c not in f.schema_arrow.names]
                if missing:
                    raise DataError(f"{path}: columns {missing} declared in data.columns are not in the file")
                for batch in f.iter_batches(batch_size=_CHUNK_ROWS, columns=wanted):
                    yield batch.to_pandas()
        elif suffix in (".csv", ".tsv", ".txt", ".data", ".inter"):
            sep = "\t" if suffix in (".tsv", ".inter", ".data") else ","
            try:
                with open_input_file(path) as f:
                    head = pd.read_csv(f, sep=sep, nrows=0)
            except pd.errors.EmptyDataError:
                raise DataError(f"{path}: the file is empty") from None
            # tolerate RecBole-style "name:type" headers
            rename = {h: h.split(":")[0] for h in head.columns}
            missing = [c for c in wanted if c not in rename.values()]
            if missing:
                raise DataError(f"{path}: columns {missing} declared in data.columns are not in the file")
            with open_input_file(path) as f:
                for df in pd.read_csv(f, sep=sep, chunksize=_CHUNK_ROWS, dtype=str, keep_default_na=True):
                    yield df.rename(columns=rename)
        else:
            raise DataError(f"data.path: {path} must end in .parquet, .csv or .tsv")

    def read_day(self, day: int, max_rows: int | None = None) -> Iterator[Chunk]:
        for path in self._paths(day):
            for chunk in self._read_file(path, day, max_rows):
                if max_rows is not None:
                    max_rows -= len(chunk)
                yield chunk
            if max_rows is not None and max_rows <= 0:
                return

    def _read_file(self, path: str, day: int, max_rows: int | None) -> Iterator[Chunk]:
        cols = self.columns
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

    def _chunk(self, df: pd.DataFrame, path: str) -> Chunk:
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
