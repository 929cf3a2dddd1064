"""Job submission: the one path by which a validated spec becomes a job.

Both ``POST /v1/jobs`` and anything else that creates jobs for an owner (studies)
call :func:`submit_job`, so admission, queueing and launching live in one place.
"""

from __future__ import annotations

import logging
from typing import Any

from services.jobs import JobRecord, JobStatus, JobStore
from services.launcher import JobLauncher
from trainer.spec import JobSpec

log = logging.getLogger("rectrain.submit")


async def submit_job(
    store: JobStore,
    launcher: JobLauncher,
    *,
    owner: str,
    spec: JobSpec,
    name: str | None = None,
    labels: dict[str, Any] | None = None,
) -> JobRecord:
    """Admit ``spec`` for ``owner``, record the job and start it.

    Raises :class:`trainer.errors.CapacityError` when the spec's memory estimate does
    not fit; a launcher that cannot start leaves the job ``failed`` with the reason.
    """
    spec.check_capacity()
    job = await store.create(
        owner=owner,
        spec=spec.model_dump(mode="json"),
        num_passes=spec.training.num_passes,
        name=name,
        labels=labels,
        launcher=launcher.kind,
    )
    try:
        launcher.launch(job.id)
    except OSError as e:
        log.exception("could not start the launcher of job %s", job.id)
        await store.transition(job.id, JobStatus.FAILED, error=f"could not start its launcher: {e}")
        job = await store.get(job.id) or job
    return job
