"""Job submission: the one path by which a validated spec becomes a job.

Both ``POST /v1/jobs`` and anything else that creates jobs for an owner (studies)
call :func:`submit_job`, so admission and queueing live in one place. Jobs are not
started here: they wait in the owner's queue until the dispatcher
(:mod:`services.queue`) finds capacity for them.
"""

from __future__ import annotations

import logging
from typing import Any

from services import keys
from services.capacity import job_demand, never_fits
from services.jobs import JobRecord, JobStore
from services.launcher import JobLauncher
from services.limits import check_job_limits
from services.model_lifecycle import resolve_init_from
from services.queue import notify_dispatchers
from services.tracking import apply_tracking_defaults
from trainer.errors import CapacityError
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
    """Admit ``spec`` for ``owner`` and queue it.

    Raises :class:`trainer.errors.CapacityError` when the spec's memory estimate does
    not fit its workers, or when the job can never fit the cluster (the message names
    the field and the numbers); :class:`services.jobs.QueueFull` when the owner has
    ``RECTRAIN_MAX_QUEUED_PER_OWNER`` jobs queued already. The cluster's totals come
    from the launcher's (cached) capacity reader; the dispatchers of this process are
    woken so the job starts without waiting for their next tick. Raises
    :class:`trainer.errors.SpecError` when it asks for more than the service allows or
    reads data outside the data roots (:mod:`services.limits`), or when its
    ``training.init_from`` cannot be used (:mod:`services.model_lifecycle`).
    The dispatchers of other processes (a ``rectrain worker``) are woken through
    ``keys.dispatch_wake_channel``.
    """
    check_job_limits(spec, launcher.settings)
    spec.check_capacity()
    settings = launcher.settings
    # training.init_from: the owner's own succeeded job (or a checkpoint under the data
    # roots) with the same model, resolved to its checkpoint now
    spec = await resolve_init_from(store, settings, owner, spec)
    # the service's TensorBoard / MLflow defaults where the spec leaves them unset
    spec = await apply_tracking_defaults(store.r, settings, spec, owner=owner, name=name, labels=labels)
    demand = job_demand(spec, settings)
    cap = await launcher.capacity.read()
    if cap is not None:  # unknown (Ray away): admit; the queue shows why it waits
        why = never_fits(demand, cap)
        if why:
            raise CapacityError(why)
    job = await store.create(
        owner=owner,
        spec=spec.model_dump(mode="json"),
        num_passes=spec.training.num_passes,
        name=name,
        labels=labels,
        launcher=launcher.kind,
        priority=priority,
        demand=demand.to_dict(),
        max_queued=settings.max_queued_per_owner,
    )
    notify_dispatchers()
    # and those of every other process (a `rectrain worker`, other API replicas)
    try:
        await store.r.publish(keys.dispatch_wake_channel(), job.id)
    except Exception as e:  # the job is queued: the dispatchers' next tick starts it anyway
        log.debug("could not publish the dispatch wake-up: %s", e)
    return job
