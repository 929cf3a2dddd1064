"""``rectrain predict``: score data with an exported model on the CPU (no Ray, no process group).

What to score (``DATA``):

- ``day:N`` (or ``day:N,M``): those days of the model's own data source (the synthetic
  generator with the model's settings, or its ``data.path`` pattern);
- a ``.yaml``/``.json`` file with a job spec's ``data`` section (or the section alone):
  its ``test_days``, read the way a job reads them;
- a data file (``.parquet``/``.csv``/``.tsv``, path or URI): for a model trained on a
  table, every row of the file with the model's ``data.columns`` (the label column may
  be missing: then nothing is measured); for a Criteo model, a Criteo TSV file.

Predictions go to a Parquet file (``row``, ``day``, ``prediction`` = click probability,
``logit``, and ``label`` where known). With labels, NE and calibration come from the
same ``torchrec.metrics`` module the trainer uses and AUC from its exact AUC, so on a
job's own test days they equal the trainer's test metrics for that pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.batch import Batch, BatchBuilder
from trainer.data.chunk import Chunk
from trainer.data.part import Part
from trainer.data.shard import make_source
from trainer.errors import DataError, RectrainError
from trainer.export import ExportedModel, load_model
from trainer.spec import DataSource, DataSpec, JobSpec

DEFAULT_BATCH = 4096


def _parse_days(text: str) -> list[int]:
    try:
        days = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        days = []
    if not days or any(d < 0 for d in days):
        raise DataError(f"data: {text!r}: expected day:N or day:N,M (0-based day numbers)")
    return days


def resolve_data(model: ExportedModel, data: str) -> tuple[DataSpec, list[int] | None, str | None]:
    """(the data section to read, the days to read or None for a whole file, the file)."""
    spec = model.spec
    if data.startswith(("day:", "days:")):
        return spec.data, _parse_days(data.split(":", 1)[1]), None
    suffix = data.partition("?")[0].rsplit(".", 1)[-1].lower() if "." in data else ""
    if suffix in ("yaml", "yml", "json"):
        import json

        import yaml

        p = Path(data)
        if not p.exists():
            raise DataError(f"data: {data} does not exist")
        raw = json.loads(p.read_text()) if suffix == "json" else yaml.safe_load(p.read_text())
        raw = (raw or {}).get("data", raw)
        try:
            section = DataSpec.model_validate(raw)
        except Exception as e:
            raise DataError(f"data: {data}: not a data section: {e}") from None
        if not section.test_days:
            raise DataError(f"data: {data}: set data.test_days to the days to score")
        return section, list(section.test_days), None
    if spec.data.source == DataSource.SYNTHETIC:
        raise DataError(
            f"data: {data}: this model was trained on synthetic data; score days of its generator "
            "with day:N (e.g. day:2)"
        )
    if spec.data.source == DataSource.TABLE and suffix not in ("parquet", "pq", "csv", "tsv", "txt", "data"):
        raise DataError(f"data: {data} must be a .parquet or .csv table (or day:N)")
    return spec.data, None, data


def _chunks(section: DataSpec, days: list[int] | None, file: str | None) -> Iterator[tuple[int, Chunk, bool]]:
    """(day or -1, chunk, has labels)."""
    if file is None:
        source = make_source(section)
        for day in days or []:
            n = 0
            for chunk in source.read_day(day, section.max_examples_per_day):
                n += len(chunk)
                yield day, chunk, True
            if n == 0:
                raise DataError(f"data: day {day} has no examples")
        return
    if section.source == DataSource.CRITEO:
        from trainer.data.files import CriteoTSV

        for chunk in CriteoTSV(file).read_day(0):
            yield -1, chunk, True
        return
    yield from _table_chunks(section, file)


def _table_chunks(section: DataSpec, file: str) -> Iterator[tuple[int, Chunk, bool]]:
    """Every row of a table file with the model's columns; the day and label may be missing."""
    from trainer.data.files import Table

    cols = section.columns
    assert cols is not None
    table = Table(file, cols)
    import pandas as pd

    for path in table._paths(0):
        for df in _frames_lenient(path, cols):
            has_label = cols.label in df.columns
            if not has_label:
                df = df.assign(**{cols.label: 0})
            day = -1
            if cols.day in df.columns:
                days = pd.to_numeric(df[cols.day], errors="coerce")
                if cols.day_seconds is not None:
                    days = np.floor((days - cols.day_origin) / cols.day_seconds)
                vals = days.dropna().unique()
                day = int(vals[0]) if len(vals) == 1 else -1
            yield day, table._chunk(df, path), has_label


def _frames_lenient(path: str, cols) -> Iterator[Any]:
    """A table file's frames with whichever of the declared columns it has."""
    import pandas as pd

    wanted = [cols.label, cols.day, *[s.name for s in cols.sparse], *cols.dense]
    if path.partition("?")[0].lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        from trainer.storage import open_input_file

        with open_input_file(path) as raw:
            f = pq.ParquetFile(raw)
            have = [c for c in wanted if c in f.schema_arrow.names]
            missing = [c for c in wanted if c not in have and c not in (cols.label, cols.day)]
            if missing:
                raise DataError(f"{path}: columns {missing} the model reads are not in the file")
            for batch in f.iter_batches(batch_size=1 << 17, columns=have):
                yield batch.to_pandas()
        return
    from trainer.storage import open_input_file

    sep = "\t" if path.lower().endswith((".tsv", ".data")) else ","
    with open_input_file(path) as f:
        for df in pd.read_csv(f, sep=sep, chunksize=1 << 17, dtype=str, keep_default_na=True):
            df = df.rename(columns={h: h.split(":")[0] for h in df.columns})
            missing = [c for c in wanted if c not in df.columns and c not in (cols.label, cols.day)]
            if missing:
                raise DataError(f"{path}: columns {missing} the model reads are not in the file")
            yield df


def _batches(spec: JobSpec, part: Part, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
    """The part's rows in order, ``batch_size`` at a time, built as training builds them."""
    builder = BatchBuilder(spec.data.sparse_feature_names(), spec.model.num_replicas)
    n = len(part)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        yield rows, builder.build(part, rows)


def _readable(chunks: Iterator[Any], what: str) -> Iterator[Any]:
    """The chunks, with a file that cannot be read (truncated or garbage Parquet, a CSV
    pandas cannot parse) said in one line naming it, not a reader's traceback."""
    while True:
        try:
            item = next(chunks)
        except StopIteration:
            return
        except RectrainError:
            raise
        except (OSError, ValueError, UnicodeDecodeError, EOFError) as e:  # pyarrow/pandas errors
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise DataError(f"data: {what} cannot be read as a table: {first}") from None
        yield item


def _min_count_kept(spec: JobSpec) -> dict[str, np.ndarray] | None:
    """``min_count`` models: the raw ids admitted to their own rows, recounted from the
    model's training days exactly as training counted them (the model file holds the
    weights, not the counts); None for other models."""
    from trainer.data.dataset import RankData
    from trainer.data.min_count import thresholds

    if not thresholds(spec):
        return None
    try:
        return RankData(spec, 0, 1).kept
    except (DataError, OSError) as e:
        raise DataError(
            f"data: the model uses min_count, whose shared row for rare ids is decided by the id "
            f"counts of its training days ({spec.data.train_days}); reading them failed: {e}"
        ) from None


def predict(
    model_path: str | Path,
    data: str,
    out: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``data`` with the model at ``model_path``; write predictions to ``out`` (Parquet);
    return {"examples", "ne", "calibration", "auc", "out"} (metrics None without labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from trainer.metrics import ne
    from trainer.metrics.auc import weighted_auc

    model = load_model(model_path)
    spec = model.spec
    section, days, file = resolve_data(model, data)
    kept = _min_count_kept(spec)
    metrics = ne.make_metric_module(
        window_size=batch_size, batch_size=batch_size, world_size=1, rank=0, device=torch.device("cpu")
    )
    preds, labels = [], []
    labelled = True
    written = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    bar = tqdm(unit="ex", unit_scale=True, disable=not progress, dynamic_ncols=True, desc="scoring")
    features = spec.data.sparse_feature_names()
    try:
        chunks = _readable(_chunks(section, days, file), file or data)
        for day, chunk, has_label in chunks:
            labelled = labelled and has_label
            missing = [f for f in features if f not in chunk.sparse]
            if missing:
                raise DataError(f"data: the model's sparse features {missing} are not in the data")
            if chunk.dense.shape[1] != spec.data.num_dense_features():
                raise DataError(
                    f"data: {chunk.dense.shape[1]} dense features, the model reads {spec.data.num_dense_features()}"
                )
            part = Part(
                chunk, np.full(len(chunk), day), np.zeros(len(chunk), dtype=np.int64), spec, features, kept
            )
            for rows, batch in _batches(spec, part, batch_size):
                logits = model.logits(batch)
                p = torch.sigmoid(logits)
                if has_label:
                    ne.update(metrics, logits, batch)
                    preds.append(p)
                    labels.append(batch.labels)
                cols = {
                    "row": pa.array(written + np.arange(len(rows), dtype=np.int64)),
                    "day": pa.array(np.full(len(rows), day, dtype=np.int32)),
                    "prediction": pa.array(p.numpy().astype(np.float32)),
                    "logit": pa.array(logits.numpy().astype(np.float32)),
                }
                if has_label:
                    cols["label"] = pa.array(batch.labels.numpy())
                table = pa.table(cols)
                if writer is None:
                    writer = pq.ParquetWriter(str(out), table.schema)
                elif "label" not in cols and "label" in writer.schema.names:
                    table = table.append_column("label", pa.nulls(len(rows), pa.float32()))
                writer.write_table(table)
                written += len(rows)
                bar.update(len(rows))
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if written == 0:
        raise DataError(f"data: {data} holds no examples")
    result: dict[str, Any] = {
        "examples": written,
        "out": str(out),
        "ne": None,
        "calibration": None,
        "auc": None,
    }
    if preds and labelled:
        s = ne.summarize(metrics.compute())
        p, y = torch.cat(preds), torch.cat(labels)
        result.update(
            ne=s.get("lifetime_ne"),
            calibration=s.get("lifetime_calibration"),
            auc=weighted_auc(p, y, torch.ones_like(y)),
        )
    return result
