"""The service's defaults for the trackers a job also logs to (TensorBoard, MLflow).

A job spec may ask for TensorBoard event files (``metrics.tensorboard``) and an MLflow
run (``metrics.mlflow``) itself (:mod:`trainer.metrics.tracking` writes them on rank
0). Where it leaves them unset, admission fills in the service's defaults
(``RECTRAIN_TENSORBOARD``, ``RECTRAIN_MLFLOW_TRACKING_URI``/``_EXPERIMENT``), so an
operator turns tracking on for every job at once. A study's runs are nested under one
MLflow parent run per study (created on its first run's submission, its id kept in the
study's record), as MLflow shows a search's trials.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from services import keys
from services.settings import Settings
from services.study_record import StudyTracking
from trainer.errors import SpecError
from trainer.spec import JobSpec, MlflowSpec


def _create_parent_run(uri: str, experiment: str, study_id: str, study_name: str) -> str:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(experiment)
    tags = {"rectrain.study": study_id}
    return c.create_run(exp_id, run_name=study_name or study_id, tags=tags).info.run_id


def _delete_run(uri: str, run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).delete_run(run_id)


async def study_parent_run(
    studies: StudyTracking, uri: str, experiment: str, study_id: str, owner: str
) -> str | None:
    """The study's MLflow parent run: created once (a concurrent creator's extra run is
    deleted again), its id kept with the study (:class:`StudyTracking`). None when
    ``owner`` does not own that study (a job's labels are the submitter's to write)."""
    if not keys.is_study_id(study_id):
        return None
    study_owner, name = await studies.owner_and_name(study_id)
    if study_owner != owner:
        return None
    known = await studies.parent_run(study_id)
    if known:
        return known
    run_id = await asyncio.to_thread(_create_parent_run, uri, experiment, study_id, name)
    if await studies.set_parent_run(study_id, run_id):
        return run_id
    await asyncio.to_thread(_delete_run, uri, run_id)  # another submission won the race
    return await studies.parent_run(study_id)


async def apply_tracking_defaults(
    studies: StudyTracking,
    settings: Settings,
    spec: JobSpec,
    *,
    owner: str,
    name: str | None,
    labels: dict[str, Any] | None,
) -> JobSpec:
    """``spec`` with the service's tracking defaults where it leaves them unset.

    A tenant's own ``metrics.mlflow.tracking_uri`` must be an ``http(s)://`` server (or
    the service's own): MLflow's ``file:`` stores write wherever the path says, on the
    service's and the workers' disks, which a tenant must not choose."""
    m = spec.metrics
    own = m.mlflow
    if own is not None and own.tracking_uri != settings.mlflow_tracking_uri:
        if urlsplit(own.tracking_uri).scheme not in ("http", "https"):
            raise SpecError.at(
                "metrics.mlflow.tracking_uri",
                "the service logs only to http(s):// MLflow servers "
                f"(got {own.tracking_uri[:80]!r}); use one, or leave metrics.mlflow unset for the service's",
            )
    update: dict[str, Any] = {}
    if m.tensorboard is None:
        update["tensorboard"] = settings.tensorboard
    mlflow = m.mlflow
    if mlflow is None and settings.mlflow_tracking_uri:
        mlflow = MlflowSpec(
            tracking_uri=settings.mlflow_tracking_uri, experiment=settings.mlflow_experiment, run_name=name
        )
    labels = labels or {}
    study_id = labels.get("study")
    parent = None
    if mlflow is not None and study_id and mlflow.parent_run_id is None:
        parent = await study_parent_run(studies, mlflow.tracking_uri, mlflow.experiment, str(study_id), owner)
    if mlflow is not None and parent is not None:
        tags = {
            **mlflow.tags,
            "rectrain.study": str(study_id),
            "rectrain.arm": str(labels.get("study_arm", "")),
        }
        mlflow = mlflow.model_copy(update={"parent_run_id": parent, "tags": tags})
    if mlflow is not m.mlflow:
        update["mlflow"] = mlflow
    if not update:
        return spec
    return spec.model_copy(update={"metrics": m.model_copy(update=update)})
