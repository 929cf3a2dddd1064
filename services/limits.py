"""What the service allows one job: data roots and per-job maxima, checked at submit.

:func:`check_job_limits` is called by :func:`services.submit.submit_job` (the one
submission path) before the job is recorded; a refusal is a
:class:`trainer.errors.SpecError` whose message starts with the field it is about,
which the API returns as 422. Admission against the cluster's free capacity is the
queue's business, not this module's: these are fixed ceilings set by the operator.
"""

from __future__ import annotations

from services.settings import Settings
from trainer.data_roots import check_data_paths
from trainer.errors import SpecError
from trainer.spec import JobSpec


class LimitExceeded(SpecError):
    """The spec asks for more than the service allows one job."""


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


def check_job_limits(spec: JobSpec, settings: Settings) -> None:
    """Refuse what the service does not allow (raises :class:`SpecError`)."""
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
    from services.model_lifecycle import forbidden_roots

    # job storage stays out of reach even where the data roots cover it (one /data volume)
    check_data_paths(data_paths(spec), settings.data_root_list, forbidden=forbidden_roots(settings))
