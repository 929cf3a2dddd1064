"""One unsharded, self-describing model file from a run's checkpoint (format: docs/model-format.md).

:func:`export_model` reads the pass's DCP checkpoint in one process (no Ray, no process
group; every rank's shards become whole tables) and writes a ``torch.save`` file of
plain tensors, strings and numbers; :func:`load_model` reads it back (with
``weights_only=True``: no pickled code runs) into a CPU :class:`ExportedModel` that
scores batches.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainer import storage
from trainer.data.hashing import _HASH_KEY, MISSING
from trainer.errors import first_line
from trainer.lifecycle import (
    LifecycleError,
    default_pass,
    model_signature,
    read_results,
    resolve_checkpoint,
)
from trainer.spec import JobSpec

FORMAT = "rectrain-model-1"
_PASS_FIELDS = ("train_ne", "val_ne", "val_calibration", "val_auc", "test_ne", "test_calibration", "test_auc")


def hashing_info(spec: JobSpec) -> dict[str, Any]:
    """How raw ids become table rows (trainer/data/hashing.py), as data."""
    from trainer.model.dlrm import table_name

    return {
        "scheme": "rectrain-splitmix64-1",
        "int_ids": "splitmix64(two's-complement uint64 bits of the id)",
        "string_ids": "pandas.util.hash_array(values, hash_key=string_hash_key, categorize=True)",
        "string_hash_key": _HASH_KEY,
        "missing_base_hash": int(MISSING),
        "row": "splitmix64(base_hash ^ splitmix64(replica + 1)) % hash_size",
        "hash_size": spec.model.hash_size,
        "num_replicas": spec.model.num_replicas,
        "tables": {
            table_name(f, r): {"feature": f, "replica": r}
            for f in spec.data.sparse_feature_names()
            for r in range(spec.model.num_replicas)
        },
    }


def feature_info(spec: JobSpec) -> dict[str, Any]:
    d = spec.data
    dense: list[str] | int
    if d.source.value == "table":
        assert d.columns is not None
        dense = list(d.columns.dense)
    elif d.source.value == "criteo":
        from trainer.data.files import CRITEO_DENSE

        dense = list(CRITEO_DENSE)
    else:
        dense = [f"dense_{i}" for i in range(d.num_dense_features())]
    return {"sparse": d.sparse_feature_names(), "dense": dense, "source": d.source.value}


def _load_spec(run: str) -> JobSpec:
    import json

    import yaml

    for name in ("spec.yaml", "spec.json"):
        loc = storage.join(run, name)
        if storage.exists(loc):
            text = storage.read_text(loc)
            data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            return JobSpec.model_validate(data)
    raise LifecycleError(f"export: {run} has no spec.yaml (is it a run directory or a job's storage?)")


def export_model(
    run: str | Path, out: str | Path, *, pass_: int | None = None, job_id: str | None = None
) -> dict:
    """Write the model of ``run`` (a run directory or a job's storage location) at pass
    ``pass_`` (default: the selected pass, else the last) to ``out`` (a path or URI);
    return the artifact's description (everything but the weights)."""
    from trainer.checkpoint import read_model_state

    run = str(run)
    spec = _load_spec(run)
    ckpt, at = resolve_checkpoint(run, pass_, "pass")
    results = read_results(run)
    found = results.pass_result(at) if results is not None and at is not None else None
    row: dict[str, Any] = found.model_dump() if found is not None else {}
    with tempfile.TemporaryDirectory(prefix="rectrain-export-") as tmp:
        local = storage.download_dir(ckpt, Path(tmp) / "ckpt")
        state = read_model_state(local)
    artifact = {
        "format": FORMAT,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "source": {"run": run, "checkpoint": ckpt, "job_id": job_id or (results.job_id if results else None)},
        "pass": at,
        "selected_pass": default_pass(results),
        "metrics": {k: row.get(k) for k in _PASS_FIELDS if k in row},
        "spec": spec.model_dump(mode="json"),
        "model": model_signature(spec),
        "features": feature_info(spec),
        "hashing": hashing_info(spec),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()},
    }
    with tempfile.TemporaryDirectory(prefix="rectrain-export-") as tmp:
        f = Path(tmp) / "model.pt"
        torch.save(artifact, f)
        if storage.is_local(str(out)):
            p = Path(storage.resolve(str(out))[1])
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp_out = p.with_name(f"{p.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
            import shutil

            shutil.copyfile(f, tmp_out)
            tmp_out.replace(p)
        else:
            storage.write_bytes(out, f.read_bytes())
    return {k: v for k, v in artifact.items() if k != "state_dict"}


class ExportedModel:
    """An exported model on the CPU: ``spec``, ``pass_``, ``module`` (a plain
    :class:`~trainer.model.dlrm.DLRM` in eval mode, tables unsharded)."""

    def __init__(self, artifact: dict[str, Any]) -> None:
        from trainer.model.dlrm import DLRM

        fmt = artifact.get("format")
        if fmt != FORMAT:
            raise LifecycleError(f"model: format {fmt!r}, this rectrain reads {FORMAT!r}")
        self.artifact = artifact
        self.spec = JobSpec.model_validate(artifact["spec"])
        self.pass_ = artifact.get("pass")
        cpu = torch.device("cpu")
        self.module = DLRM(self.spec, dense_device=cpu, ebc_device=cpu)
        missing, unexpected = self.module.load_state_dict(artifact["state_dict"], strict=False)
        if missing or unexpected:
            raise LifecycleError(
                f"model: the weights do not match the spec (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        self.module.eval()

    @torch.no_grad()
    def logits(self, batch) -> torch.Tensor:
        return self.module(batch.dense, batch.sparse)


def load_model(path: str | Path) -> ExportedModel:
    """Read an exported model (a path or URI) without Ray or a process group."""
    import io

    data = storage.read_bytes(str(path))
    try:
        artifact = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise LifecycleError(f"model: {path} is not a rectrain model file: {first_line(e)}") from None
    if not isinstance(artifact, dict):
        raise LifecycleError(f"model: {path} is not a rectrain model file")
    return ExportedModel(artifact)
