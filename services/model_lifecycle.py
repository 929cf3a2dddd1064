"""A job's model in the control plane: exports to download.

Every job's storage is ``storage.job_location(settings.effective_storage_uri, job id)``
(both launchers put it there). ``training.init_from`` is admission's business
(:func:`services.admission.resolve_init_from`, at submit); :func:`model_file` writes (once,
kept under the job's storage as ``models/pass_<N>.pt``) the exported model of a pass and
returns where it is, for the API to stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from services.jobs import JobRecord, JobStatus
from services.settings import Settings
from trainer import storage
from trainer.lifecycle import LifecycleError, resolve_checkpoint

_CHUNK = 1 << 20


class ModelNotReady(LifecycleError):
    """The job has no exportable model (yet): not succeeded."""


def job_storage(settings: Settings, job_id: str) -> str:
    return storage.job_location(settings.effective_storage_uri, job_id)


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
