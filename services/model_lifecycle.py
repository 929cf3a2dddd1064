"""A job's model in the control plane: ``training.init_from`` at submit, exports to download.

Every job's storage is ``storage.job_location(settings.effective_storage_uri, job id)``
(both launchers put it there). :func:`resolve_init_from` turns
``training.init_from.job`` into that job's checkpoint (only the owner's own succeeded
jobs, with the same model) before the job is queued; :func:`model_file` writes (once,
kept under the job's storage as ``models/pass_<N>.pt``) the exported model of a pass and
returns where it is, for the API to stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from services.jobs import JobNotFound, JobRecord, JobStatus, JobStore
from services.settings import Settings
from trainer import storage
from trainer.data_roots import check_data_path
from trainer.errors import SpecError
from trainer.lifecycle import (
    LifecycleError,
    model_signature,
    read_meta,
    resolve_checkpoint,
    signature_differences,
)
from trainer.spec import JobSpec

_CHUNK = 1 << 20


class ModelNotReady(LifecycleError):
    """The job has no exportable model (yet): not succeeded."""


def job_storage(settings: Settings, job_id: str) -> str:
    return storage.job_location(settings.effective_storage_uri, job_id)


async def resolve_init_from(store: JobStore, settings: Settings, owner: str, spec: JobSpec) -> JobSpec:
    """The spec with ``training.init_from.checkpoint`` (and ``pass``) resolved; raises
    :class:`SpecError` naming ``training.init_from.*`` when it cannot be used."""
    init = spec.training.init_from
    if init is None:
        return spec
    field = "training.init_from.checkpoint"
    source_sig = None
    if init.job is not None:
        field = "training.init_from.job"
        try:
            job = await store.get_for_owner(init.job, owner)
        except JobNotFound:
            raise SpecError(f"{field}: you have no job {init.job}") from None
        if job.status != JobStatus.SUCCEEDED:
            raise SpecError(
                f"{field}: job {init.job} is {job.status.value}; only a succeeded job's model can be "
                "continued (wait for it, or name another job)"
            )
        source_sig = model_signature(JobSpec.model_validate(job.spec))
        location = job_storage(settings, job.id)
    else:
        assert init.checkpoint is not None
        # read access like data.path: only under the service's data roots
        try:
            check_data_path(init.checkpoint, settings.data_root_list, field=field)
        except SpecError as e:
            raise SpecError(f"{e.message}; to continue one of your jobs use training.init_from.job") from None
        location = init.checkpoint
        # jobs' storage is reached through training.init_from.job only (ownership is
        # checked there), even where the operator's data roots would cover it
        runs = storage.join(settings.effective_storage_uri, "runs")
        norm = location if storage.is_uri(location) else str(Path(location).resolve())
        if norm.rstrip("/").startswith(runs.rstrip("/") + "/") or norm.rstrip("/") == runs.rstrip("/"):
            raise SpecError(
                f"{field}: {location} is in the service's job storage; name the job in "
                "training.init_from.job instead"
            )
    try:
        ckpt, at = await asyncio.to_thread(
            resolve_checkpoint, location, init.pass_, "training.init_from.pass" if init.job else field
        )
        if source_sig is None:
            source_sig = ((await asyncio.to_thread(read_meta, ckpt)) or {}).get("model") or {}
    except (LifecycleError, storage.StorageError) as e:
        raise SpecError(str(getattr(e, "message", e))) from None
    diff = signature_differences(source_sig, model_signature(spec))
    if diff:
        raise SpecError(f"{field}: the model to start from differs from this spec's: " + "; ".join(diff))
    resolved = init.model_copy(update={"checkpoint": ckpt, "pass_": at})
    training = spec.training.model_copy(update={"init_from": resolved})
    return spec.model_copy(update={"training": training})


def _model_file(settings: Settings, job: JobRecord, pass_: int | None) -> tuple[str, int | None, int]:
    from trainer.export import export_model

    run = job_storage(settings, job.id)
    if not storage.exists(run):
        raise LifecycleError(
            f"job {job.id} kept no files at {run}: set RECTRAIN_STORAGE_URI (shared storage) so that "
            "jobs on a remote Ray cluster keep their checkpoints"
        )
    ckpt, at = resolve_checkpoint(run, pass_, "pass")
    loc = storage.join(run, "models", f"pass_{at}.pt")
    if not storage.exists(loc):
        export_model(run, loc, pass_=at, job_id=job.id)
    fs, path = storage.resolve(loc)
    return loc, at, int(fs.get_file_info(path).size or 0)


async def model_file(settings: Settings, job: JobRecord, pass_: int | None) -> tuple[str, int | None, int]:
    """(location of the exported model of ``pass_``, its pass, its size in bytes); raises
    :class:`ModelNotReady` for a job that has not succeeded, :class:`LifecycleError` for a
    pass that is not kept."""
    if job.status != JobStatus.SUCCEEDED:
        raise ModelNotReady(
            f"job {job.id} is {job.status.value}: its model can be downloaded once it has succeeded"
        )
    return await asyncio.to_thread(_model_file, settings, job, pass_)


def iter_file(location: str) -> Iterator[bytes]:
    fs, path = storage.resolve(location)
    with fs.open_input_stream(path) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return
            yield chunk
