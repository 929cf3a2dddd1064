"""Where a finished run's model lives, and whether two specs share one: torch-free.

A run (a job's storage location, or a local run directory) keeps its checkpoints under
``ray/train/checkpoint_*`` (Ray Train) or ``checkpoints/*`` (in-process runs). Each
checkpoint's ``rectrain.json`` (written by rank 0, see :mod:`trainer.checkpoint`) says
where in the run it was taken (``progress``: the pass about to start, the step in it)
and which model it holds (``model``: :func:`model_signature`). The checkpoint taken at
the end of pass ``p`` (0-based) has ``progress = {"pass": p + 1, "step_in_pass": 0}``.

Which pass-end checkpoints survive: Ray Train keeps the latest checkpoint and the two
with the best ``keep_score`` (:func:`keep_score`): with validation data, the passes
with the lowest validation NE — so the selected pass is always there — and without,
the last passes (the last is the one that counts). Mid-pass checkpoints only live until
the next one.

The control plane imports this module (submit-time checks of ``training.init_from``,
the model download route); it imports neither torch nor Ray.
"""

from __future__ import annotations

import json
from typing import Any

from trainer import storage
from trainer.errors import RectrainError
from trainer.results import RESULTS_FILE, RunResult
from trainer.spec import JobSpec

META_FILE = "rectrain.json"  # the same name as trainer.checkpoint.META_FILE (torch-free here)
_CHECKPOINT_DIRS = ("ray/train", "checkpoints")
# a mid-pass checkpoint's score: below every pass end, so it is the first to go
MID_PASS_SCORE = -1e300


class LifecycleError(RectrainError):
    """A model or checkpoint that cannot be found or used (the message says what to change)."""


# ---------------------------------------------------------------- model signature


def model_signature(spec: JobSpec) -> dict[str, Any]:
    """What must match for one model's weights to load into another: the features,
    the tables (hash size, dim, replicas) and the dense architecture."""
    m = spec.model
    return {
        "sparse_features": spec.data.sparse_feature_names(),
        "num_dense_features": spec.data.num_dense_features(),
        "hash_size": m.hash_size,
        "embedding_dim": m.embedding_dim,
        "num_replicas": m.num_replicas,
        "dense_arch": list(m.dense_arch),
        "over_arch": list(m.over_arch),
        "interaction": m.interaction.value,
        "batch_norm": m.batch_norm,
    }


_SIG_FIELDS = {
    "sparse_features": "data (sparse features)",
    "num_dense_features": "data (number of dense features)",
    "hash_size": "model.hash_size",
    "embedding_dim": "model.embedding_dim",
    "num_replicas": "model.num_replicas",
    "dense_arch": "model.dense_arch",
    "over_arch": "model.over_arch",
    "interaction": "model.interaction",
    "batch_norm": "model.batch_norm",
}


def signature_differences(source: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """One line per difference: ``model.hash_size: 1000 in the source, 2000 here``."""
    out = []
    for k, name in _SIG_FIELDS.items():
        a, b = source.get(k), target.get(k)
        if a is None:  # an older checkpoint that does not record it
            continue
        if a != b:
            if k == "sparse_features":
                only_a = [f for f in a if f not in (b or [])]
                only_b = [f for f in (b or []) if f not in a]
                detail = (
                    f"only in the source {only_a}, only here {only_b}"
                    if (only_a or only_b)
                    else "other order"
                )
                out.append(f"{name}: {detail}")
            else:
                out.append(f"{name}: {a} in the source, {b} here")
    return out


def keep_score(val_ne: float | None, pass_idx: int, has_validation: bool) -> float:
    """Ray Train's ``checkpoint_score_attribute`` of a pass-end checkpoint (higher is kept)."""
    if has_validation:
        return -val_ne if val_ne is not None else MID_PASS_SCORE / 2
    return float(pass_idx)


# ---------------------------------------------------------------- finding checkpoints


def read_meta(checkpoint: str) -> dict[str, Any] | None:
    loc = storage.join(checkpoint, META_FILE)
    try:
        return json.loads(storage.read_text(loc))
    except (storage.StorageError, ValueError):
        return None


def is_checkpoint(location: str) -> bool:
    return storage.exists(storage.join(location, META_FILE))


def pass_checkpoints(run: str) -> dict[int, str]:
    """The pass-end checkpoints a run still keeps: 0-based pass -> checkpoint location."""
    import pyarrow.fs as pafs

    out: dict[int, tuple[int, str]] = {}
    for sub in _CHECKPOINT_DIRS:
        base = storage.join(run, sub)
        fs, path = storage.resolve(base)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        except OSError as e:
            raise LifecycleError(f"cannot list {base}: {e}") from e
        for info in sorted(infos, key=lambda i: i.path):
            if info.type != pafs.FileType.Directory:
                continue
            ckpt = storage.join(base, info.path.rsplit("/", 1)[-1])
            meta = read_meta(ckpt)
            prog = (meta or {}).get("progress")
            if not prog or prog.get("step_in_pass") != 0 or prog.get("pass", 0) < 1:
                continue
            p = int(prog["pass"]) - 1
            step = int(prog.get("global_step", 0))
            if p not in out or step >= out[p][0]:
                out[p] = (step, ckpt)
    return {p: loc for p, (_, loc) in sorted(out.items())}


def read_results(run: str) -> RunResult | None:
    """A run's ``results.json`` (None: none, or not readable)."""
    try:
        return RunResult.model_validate_json(storage.read_text(storage.join(run, RESULTS_FILE)))
    except (storage.StorageError, ValueError):  # (pydantic's ValidationError is a ValueError)
        return None


def default_pass(results: RunResult | None) -> int | None:
    """The pass a run stands for: the one its validation selected, else its last."""
    return None if results is None else results.headline_pass


def resolve_checkpoint(location: str, pass_: int | None, field: str = "checkpoint") -> tuple[str, int | None]:
    """``location`` is a checkpoint directory or a run (job storage / run directory):
    return (the checkpoint directory, its pass). A run's default pass is its selected
    pass (else its last); the pass must still be kept."""
    location = storage.check_uri(str(location), field)
    if not storage.exists(location):
        raise LifecycleError(f"{field}: {location} does not exist")
    if is_checkpoint(location):
        meta = read_meta(location) or {}
        prog = meta.get("progress") or {}
        at = int(prog["pass"]) - 1 if prog.get("step_in_pass") == 0 and prog.get("pass") else None
        if pass_ is not None and at is not None and pass_ != at:
            raise LifecycleError(f"{field}: {location} is the checkpoint of pass {at}, not pass {pass_}")
        return location, at if pass_ is None else pass_
    kept = pass_checkpoints(location)
    if not kept:
        raise LifecycleError(
            f"{field}: {location} holds no pass-end checkpoint (expected a run directory or job storage "
            "with ray/train/checkpoint_* or a checkpoint directory with rectrain.json)"
        )
    if pass_ is None:
        pass_ = default_pass(read_results(location))
        if pass_ is None:
            pass_ = max(kept)
    if pass_ not in kept:
        raise LifecycleError(
            f"{field}: pass {pass_} of {location} is not kept (passes are 0-based; kept: "
            f"{', '.join(map(str, kept))}: the selected and the last passes)"
        )
    return kept[pass_], pass_


def prepare_init_from(spec: JobSpec, *, pinned: bool = False) -> JobSpec:
    """The driver's side of ``training.init_from``: resolve the checkpoint (an absolute
    location, the pass filled in) and check the model matches, before any worker starts.

    ``pinned``: the location was resolved already (by the service at submit, or by the
    driver for its workers) to its canonical form; if it no longer is (a symlink swapped
    in on its path since, which could point into another job's storage), it is refused
    instead of followed."""
    init = spec.training.init_from
    if init is None:
        return spec
    if init.checkpoint is None:
        raise LifecycleError(
            f"training.init_from.job: job {init.job} is resolved to its checkpoint by the service "
            "(rectrain submit); with rectrain run, name its run directory or checkpoint in "
            "training.init_from.checkpoint"
        )
    field = "training.init_from.checkpoint"
    try:
        loc = storage.canonical(init.checkpoint)
    except storage.StorageError as e:
        raise LifecycleError(f"{field}: {e}") from None
    if pinned and storage.is_local(init.checkpoint) and loc != storage.canonical_spelling(init.checkpoint):
        raise LifecycleError(
            f"{field}: {init.checkpoint} changed since it was checked (its path now leads elsewhere: "
            "a symlink on it); submit the job again"
        )
    ckpt, at = resolve_checkpoint(loc, init.pass_, field)
    diff = signature_differences((read_meta(ckpt) or {}).get("model") or {}, model_signature(spec))
    if diff:
        raise LifecycleError(f"{field}: the model to start from differs from this spec's: " + "; ".join(diff))
    resolved = init.model_copy(update={"checkpoint": ckpt, "pass_": at})
    return spec.model_copy(update={"training": spec.training.model_copy(update={"init_from": resolved})})
