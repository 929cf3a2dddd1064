"""Admission: whether a job, or a study's run, may run. The one place that decides.

Every job enters through :func:`services.submit.submit_job` (``POST /v1/jobs``, and each
run of a study: :meth:`services.study_runs.StudyRuns.submit`), which calls
:func:`admit_job` before the job is recorded. Its checks, in this order, each once:

1. **limits** (:func:`check_job_limits`): what the service allows one job
   (``RECTRAIN_MAX_WORKERS`` ...), and the data roots: every path the job reads lies
   under ``RECTRAIN_DATA_ROOTS`` and outside every job's storage;
2. **memory** (:meth:`trainer.spec.JobSpec.check_capacity`): the spec's memory estimate
   fits its workers (and, with ``scaling.gpu_memory_gb``, its GPUs);
3. **init_from** (:func:`resolve_init_from`): ``training.init_from`` names the owner's own
   succeeded job, or a checkpoint under the data roots that this service signed; the
   model matches; resolved to the checkpoint and pass (the spec the job runs with);
4. **tracking** (:func:`services.tracking.apply_tracking_defaults`): a tenant's own
   MLflow server must be http(s); the service's tracking defaults are filled in;
5. **cluster** (:func:`services.capacity.never_fits`): the job can ever fit the cluster
   (refused now) — whether it fits *now* is the queue's business (it waits);
6. **queue quota**: ``RECTRAIN_MAX_QUEUED_PER_OWNER``, enforced by
   :meth:`services.jobs.JobStore.create` in the transaction that records the job
   (:attr:`Admitted.max_queued`), so two submissions at once cannot both pass it.

A study is admitted as a whole first (:func:`check_study_runs`: the runs it expands to,
with the owner's unfinished runs, within ``RECTRAIN_STUDY_MAX_RUNS``); each run is then
a job, admitted as above. ``RECTRAIN_MAX_RUNNING_PER_OWNER`` is not admission: the
dispatcher (:mod:`services.queue`) holds a job back while its owner is at it.

What the trainer checks again at run time, once, is only what can have changed since
(the checkpoint of ``training.init_from`` still there, at the same place, and whole:
:func:`trainer.lifecycle.prepare_init_from` in the driver, the integrity manifest when
the workers load it; this machine's CPUs for a local Ray). See ``docs/admission.md``.

A refusal is a :class:`trainer.errors.SpecError` whose message starts with the field it
is about (the API's 422): :class:`LimitExceeded`, :class:`trainer.errors.CapacityError`,
:class:`StudyLimit`; a full queue is :class:`services.jobs.QueueFull` (429).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.capacity import Demand, job_demand, never_fits
from services.jobs import JobNotFound, JobStatus, JobStore
from services.settings import Settings
from services.tracking import apply_tracking_defaults
from trainer import storage
from trainer.data_roots import check_data_path, check_data_paths
from trainer.errors import CapacityError, RectrainError, SpecError
from trainer.integrity import UntrustedCheckpoint, check_trusted
from trainer.lifecycle import (
    LifecycleError,
    model_signature,
    read_meta,
    resolve_checkpoint,
    signature_differences,
)
from trainer.spec import JobSpec

if TYPE_CHECKING:
    from services.launcher import JobLauncher

# the checks of admit_job, in order (docs/admission.md; the counting test names them)
JOB_CHECKS = ("limits", "memory", "init_from", "tracking", "cluster", "queue_quota")


class LimitExceeded(SpecError):
    """The spec asks for more than the service allows one job."""


class StudyLimit(RectrainError):
    """The owner's active study runs would exceed the per-owner limit."""


# ---------------------------------------------------------------- 1. limits and data roots


def data_paths(spec: JobSpec) -> list[str]:
    """Every path the job would read: a ``{day}`` pattern gives one path per day."""
    path = spec.data.path
    if not path:
        return []
    if "{day}" not in path:
        return [path]
    days = sorted(set(spec.data.train_days) | set(spec.data.test_days))
    # the pattern itself too: its directory part is resolved once even with no days
    return [path] + [path.replace("{day}", str(d)) for d in days]


def forbidden_roots(settings: Settings) -> list[str]:
    """Locations no tenant names by path: every job's storage (``runs`` under the
    storage root and under the data directory), canonical."""
    out = {storage.canonical(storage.join(settings.effective_storage_uri, "runs"))}
    out.add(storage.canonical(Path(settings.data_dir).resolve() / "runs"))
    return sorted(out)


def check_job_limits(spec: JobSpec, settings: Settings) -> None:
    """Refuse what the service does not allow one job: fixed ceilings set by the operator
    (raises :class:`LimitExceeded`) and data outside the data roots (:class:`SpecError`)."""
    checks = [
        ("scaling.num_workers", spec.scaling.num_workers, settings.max_workers, "RECTRAIN_MAX_WORKERS"),
        (
            "scaling.cpus_per_worker",
            spec.scaling.cpus_per_worker,
            settings.max_cpus_per_worker,
            "RECTRAIN_MAX_CPUS_PER_WORKER",
        ),
        (
            "scaling.memory_per_worker_gb",
            spec.scaling.memory_per_worker_gb,
            settings.max_memory_per_worker_gb,
            "RECTRAIN_MAX_MEMORY_PER_WORKER_GB",
        ),
        ("training.num_passes", spec.training.num_passes, settings.max_passes, "RECTRAIN_MAX_PASSES"),
        (
            "training.max_wall_seconds",
            spec.training.max_wall_seconds or 0,
            settings.max_wall_seconds,
            "RECTRAIN_MAX_WALL_SECONDS",
        ),
    ]
    for field, value, limit, var in checks:
        if value > limit:
            raise LimitExceeded.at(
                field,
                f"{value:g} is above what this service allows one job ({limit:g}, {var}); "
                f"ask for at most {limit:g}",
            )
    # job storage stays out of reach even where the data roots cover it (one /data volume)
    check_data_paths(data_paths(spec), settings.data_root_list, forbidden=forbidden_roots(settings))


# ---------------------------------------------------------------- 3. training.init_from


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
    :class:`SpecError` naming ``training.init_from.*`` when it cannot be used: a job that
    is not the owner's or has not succeeded, a location outside the data roots or inside
    a job's storage, a checkpoint this service did not sign (unless foreign ones are
    allowed), another model."""
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
        location = storage.job_location(settings.effective_storage_uri, job.id)
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


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Admitted:
    """A job admitted to the queue: the spec it runs with (``init_from`` resolved, the
    tracking defaults filled in), what it holds while it runs, and the owner's queue
    quota that recording it must respect."""

    spec: JobSpec
    demand: Demand
    max_queued: int


async def admit_job(
    store: JobStore,
    launcher: JobLauncher,
    *,
    owner: str,
    spec: JobSpec,
    name: str | None = None,
    labels: dict[str, Any] | None = None,
) -> Admitted:
    """Decide whether ``owner`` may queue ``spec`` (the checks of :data:`JOB_CHECKS`, in
    order; the module docstring says what each is). Raises :class:`SpecError` (or its
    :class:`CapacityError`) naming the field; the queue quota is left to the caller's
    :meth:`JobStore.create` with :attr:`Admitted.max_queued`."""
    settings = launcher.settings
    check_job_limits(spec, settings)
    spec.check_capacity()
    # training.init_from: the owner's own succeeded job (or a checkpoint under the data
    # roots) with the same model, resolved to its checkpoint now
    spec = await resolve_init_from(store, settings, owner, spec)
    # the service's TensorBoard / MLflow defaults where the spec leaves them unset
    spec = await apply_tracking_defaults(
        store.study_tracking, settings, spec, owner=owner, name=name, labels=labels
    )
    demand = job_demand(spec, settings)
    cap = await launcher.capacity.read()
    if cap is not None:  # unknown (Ray away): admit; the queue shows why it waits
        why = never_fits(demand, cap)
        if why:
            raise CapacityError(why)
    return Admitted(spec=spec, demand=demand, max_queued=settings.max_queued_per_owner)


def check_study_runs(n_runs: int, busy: int, max_runs: int) -> None:
    """A study of ``n_runs`` runs (every stage at its budget), for an owner whose active
    studies have ``busy`` unfinished runs: within ``RECTRAIN_STUDY_MAX_RUNS``, or
    :class:`StudyLimit`. Each run is then admitted as a job (:func:`admit_job`)."""
    if n_runs > max_runs:
        raise StudyLimit(
            f"variants: this study expands to {n_runs} runs, over the per-owner limit of {max_runs} "
            "(RECTRAIN_STUDY_MAX_RUNS); shrink the grids or the seeds"
        )
    if busy + n_runs > max_runs:
        raise StudyLimit(
            f"variants: {n_runs} runs with the {busy} unfinished runs of your active studies exceed the "
            f"per-owner limit of {max_runs} (RECTRAIN_STUDY_MAX_RUNS); wait for them, cancel one, "
            "or shrink this study"
        )
