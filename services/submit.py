"""Job submission: the one path by which a validated spec becomes a job.

Both ``POST /v1/jobs`` and anything else that creates jobs for an owner (studies)
call :func:`submit_job`, so every job is admitted (:mod:`services.admission`) and
queued the same way. Jobs are not
started here: they wait in the owner's queue until the dispatcher
(:mod:`services.queue`) finds capacity for them.
"""

from __future__ import annotations

import logging
from typing import Any

from services.admission import admit_job
from services.jobs import JobRecord, JobStore
from services.launcher import JobLauncher
from services.queue import notify_dispatchers
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
    priority: int = 0,
) -> JobRecord:
    """Admit ``spec`` for ``owner`` (:func:`services.admission.admit_job`, the one
    place that decides) and queue it.

    Raises :class:`trainer.errors.SpecError` (:class:`trainer.errors.CapacityError`
    among them) naming the field when admission refuses it, and
    :class:`services.jobs.QueueFull` when the owner has ``RECTRAIN_MAX_QUEUED_PER_OWNER``
    jobs queued already (checked in the transaction that records the job). The
    dispatchers of this process are woken so the job starts without waiting for their
    next tick; those of other processes (a ``rectrain worker``) through
    ``keys.dispatch_wake_channel``.
    """
    admitted = await admit_job(store, launcher, owner=owner, spec=spec, name=name, labels=labels)
    spec = admitted.spec
    job = await store.create(
        owner=owner,
        spec=spec.model_dump(mode="json"),
        num_passes=spec.training.num_passes,
        name=name,
        labels=labels,
        launcher=launcher.kind,
        priority=priority,
        demand=admitted.demand.to_dict(),
        max_queued=admitted.max_queued,  # the queue quota: checked in the recording transaction
    )
    notify_dispatchers()
    # and those of every other process (a `rectrain worker`, other API replicas)
    try:
        await store.queues.wake_dispatchers(job.id)
    except Exception as e:  # the job is queued: the dispatchers' next tick starts it anyway
        log.debug("could not publish the dispatch wake-up: %s", e)
    return job
