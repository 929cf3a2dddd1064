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
from trainer.integrity import UntrustedCheckpoint, check_trusted
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


def forbidden_roots(settings: Settings) -> list[str]:
    """Locations no tenant names by path: every job's storage (``runs`` under the
    storage root and under the data directory), canonical."""
    out = {storage.canonical(storage.join(settings.effective_storage_uri, "runs"))}
    out.add(storage.canonical(Path(settings.data_dir).resolve() / "runs"))
    return sorted(out)


def _refused(settings: Settings, field: str) -> SpecError:
    """The one refusal of a checkpoint location: the same words whether the location is
    another tenant's job, this tenant's own job by path, outside the data roots, or
    missing — so the answer reveals nothing about what exists."""
    return SpecError(
        f"{field}: no checkpoint you may start from there; name a checkpoint or run directory under "
        f"an allowed data root ({', '.join(settings.data_root_list) or 'none configured'}), or continue "
        "one of your own jobs with training.init_from.job"
    )


def _readable_checkpoint(settings: Settings, location: str, field: str) -> str:
    """``location`` in its canonical form (:func:`trainer.storage.canonical`, the one
    normalisation), if a tenant may read it by path: under a data root and outside every
    job's storage (reached through ``training.init_from.job`` only, where ownership is
    checked), whatever the spelling (``file://``, ``file://localhost``, ``..``, symlinks,
    trailing slashes, case). Every refusal is :func:`_refused`."""
    try:
        storage.check_uri(location, field)
        norm = storage.canonical(location, relative_ok=False)
        check_data_path(norm, settings.data_root_list, field=field)
    except (SpecError, storage.StorageError):
        raise _refused(settings, field) from None
    if any(storage.within(norm, r) or storage.within(r, norm) for r in forbidden_roots(settings)):
        raise _refused(settings, field)
    return norm


def _exists(location: str) -> bool:
    try:
        return storage.exists(location)
    except storage.StorageError:
        return False


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
        location = _readable_checkpoint(settings, init.checkpoint, field)
    try:
        ckpt, at = await asyncio.to_thread(
            resolve_checkpoint, location, init.pass_, "training.init_from.pass" if init.job else field
        )
        if source_sig is None:
            # by path: only a checkpoint this service signed, or a foreign one where allowed
            await asyncio.to_thread(
                check_trusted,
                ckpt,
                field,
                key=settings.checkpoint_secret.encode() if settings.checkpoint_secret else None,
                allow_foreign=settings.allow_foreign_checkpoints,
            )
            source_sig = ((await asyncio.to_thread(read_meta, ckpt)) or {}).get("model") or {}
    except (LifecycleError, storage.StorageError, UntrustedCheckpoint) as e:
        if init.job is None and not await asyncio.to_thread(_exists, location):
            raise _refused(settings, field) from None  # no oracle for what exists
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
