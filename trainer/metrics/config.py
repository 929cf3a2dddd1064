"""The spec's ``metrics`` section: metric cadence and the trackers (TensorBoard, MLflow:
:mod:`trainer.metrics.tracking`). Imports no torch."""

from __future__ import annotations

from pydantic import Field

from trainer.config_base import Strict as _Strict


class MlflowSpec(_Strict):
    """Where rank 0 logs the run in MLflow (:mod:`trainer.metrics.tracking`).

    Args:
        tracking_uri (str): the MLflow tracking server (``http://mlflow:5000``, or a
            ``file:`` store for one machine).
        experiment (str): the MLflow experiment, created if missing.
        run_name (str): the MLflow run's name (default: the job id or run directory).
        parent_run_id (str): nest the run under this MLflow run (a study's parent run).
        tags (dict): extra MLflow tags.
    """

    tracking_uri: str = Field(min_length=1, max_length=2048)
    experiment: str = Field("rectrain", min_length=1, max_length=256)
    run_name: str | None = Field(None, max_length=256)
    parent_run_id: str | None = Field(None, max_length=64)
    tags: dict[str, str] = Field(default_factory=dict, max_length=64)


class MetricsSpec(_Strict):
    """Metric cadence, and the trackers that also receive the run's metrics.

    Args:
        window_size (int): examples (over all workers) in the windowed train NE.
        report_every_steps (int): emit windowed train NE every N steps.
        tensorboard (bool): also write TensorBoard event files to ``<run dir>/tensorboard``;
            unset: the service's default (``RECTRAIN_TENSORBOARD``), off for ``rectrain run``.
        mlflow (MlflowSpec): also log the run to this MLflow tracking server; unset: the
            service's ``RECTRAIN_MLFLOW_TRACKING_URI`` when set, else none.
    """

    window_size: int = Field(100_000, ge=1, le=100_000_000)
    report_every_steps: int = Field(50, ge=1, le=10**9)
    tensorboard: bool | None = None
    mlflow: MlflowSpec | None = None
