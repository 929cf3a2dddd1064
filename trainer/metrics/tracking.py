"""Metric sinks for the tools recommender engineers already use: TensorBoard event files
and an MLflow tracking server, beside the run's events.jsonl and Redis Stream.

Both are ordinary :class:`trainer.metrics.events.MetricsSink` s on rank 0, fed the same
events. What each writes:

- **TensorBoard** (``metrics.tensorboard: true``): ``<run_dir>/tensorboard/`` through
  ``torch.utils.tensorboard.SummaryWriter`` (the ``tensorboard`` package writes the
  files). Scalars ``train/ne_window`` and ``train/examples_per_s`` at the train step;
  per pass (at step = pass number, 1-based) ``pass/<split>_ne``, ``pass/<split>_auc``,
  ``pass/<split>_calibration``, ``pass/<split>_ne_<stratum>``, ``pass/oracle_<split>_ne``
  and ``pass/examples_per_s``. ``tensorboard --logdir runs/`` shows every run.
- **MLflow** (``metrics.mlflow.tracking_uri``): one MLflow run per rectrain run (found
  again by the tag ``rectrain.run`` on resume, so a resumed job continues its run), the
  flattened job spec as params, the same per-pass metrics at step = pass number, the
  validation-selected pass as the tag ``rectrain.selected_pass``, and the run ended
  FINISHED/FAILED with the job. ``metrics.mlflow.parent_run_id`` nests it under a parent
  (a study's run; :mod:`mlflow`'s own ``mlflow.parentRunId`` tag). ``mlflow`` is an
  optional extra (``pip install 'rectrain[mlflow]'``); a run that asks for it where the
  package is missing fails at its start with that advice.

Neither may stop training: :class:`~trainer.metrics.events.MultiSink` reports a failing
sink on stderr and goes on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.metrics.events import EventType, Phase

_SPLITS = ("train", "val", "test")
# MLflow's limits: 100 params a batch call, 6000 characters a value
_MLFLOW_BATCH = 100
_MLFLOW_PARAM_CHARS = 6000


def pass_scalars(event: dict[str, Any]) -> dict[str, float]:
    """The scalars of one ``pass`` event, by tag (shared by both sinks)."""
    out: dict[str, float] = {}

    def put(tag: str, v: Any) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[tag] = float(v)

    for split in _SPLITS:
        for metric in ("ne", "auc", "calibration"):
            put(f"{split}_{metric}", event.get(f"{split}_{metric}"))
        for stratum, v in (event.get(f"{split}_ne_by_stratum") or {}).items():
            put(f"{split}_ne_{stratum}", v)
        put(f"oracle_{split}_ne", event.get(f"oracle_{split}_ne"))
    put("examples_per_s", event.get("examples_per_s"))
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"embedding_dim": 8}}`` -> ``{"model.embedding_dim": "8"}``; lists (the
    regularizers) become ``regularizers.0.type`` etc."""
    out: dict[str, str] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flatten(v, key + "."))  # type: ignore[arg-type]
        else:
            out[key] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return out


def tracking_sinks(
    spec: Any, run_dir: str | Path, *, run_key: str, job_store: str | None = None
) -> list[Any]:
    """The sinks ``spec.metrics`` asks for (a :class:`trainer.spec.JobSpec`). With
    ``job_store`` (the job's storage location, when it is not the run directory) the
    TensorBoard files are copied there when the run ends."""
    from trainer.errors import SpecError

    m = spec.metrics
    sinks: list[Any] = []
    if m.tensorboard:
        try:
            sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard", upload_to=job_store))
        except ImportError:
            raise SpecError.at(
                "metrics.tensorboard",
                "the tensorboard package is not installed where the trainer runs; "
                "pip install tensorboard, or set metrics.tensorboard: false",
            ) from None
    if m.mlflow is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise SpecError.at(
                "metrics.mlflow",
                "the mlflow package is not installed where the trainer runs; "
                "pip install 'rectrain[mlflow]' there, or remove metrics.mlflow",
            ) from None
        sinks.append(
            MlflowSink(
                m.mlflow.tracking_uri,
                experiment=m.mlflow.experiment,
                run_key=run_key,
                run_name=m.mlflow.run_name,
                parent_run_id=m.mlflow.parent_run_id,
                tags=dict(m.mlflow.tags),
                spec=spec.model_dump(mode="json", exclude={"metrics": {"mlflow"}}),
            )
        )
    return sinks


class TensorBoardSink:
    """Scalars into ``log_dir`` (see the module docstring for the tags)."""

    def __init__(self, log_dir: str | Path, upload_to: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.upload_to = upload_to
        self._w = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)

    def emit(self, event: dict[str, Any]) -> None:
        t = event.get("type")
        if t == EventType.TRAIN_WINDOW.value:
            step = int(event["step"])
            if event.get("ne_window") is not None:
                self._w.add_scalar("train/ne_window", event["ne_window"], step)
            if event.get("examples_per_s") is not None:
                self._w.add_scalar("train/examples_per_s", event["examples_per_s"], step)
        elif t == EventType.PASS.value:
            step = int(event["pass"]) + 1
            for tag, v in pass_scalars(event).items():
                self._w.add_scalar(f"pass/{tag}", v, step)
            self._w.flush()

    def close(self) -> None:
        self._w.close()
        from trainer import storage

        elsewhere = self.upload_to and (
            storage.is_uri(self.upload_to) or Path(self.upload_to).resolve() != self.log_dir.parent.resolve()
        )
        if elsewhere:
            for f in sorted(self.log_dir.rglob("*")):
                if f.is_file():
                    rel = f.relative_to(self.log_dir).parts
                    storage.write_bytes(
                        storage.join(str(self.upload_to), "tensorboard", *rel), f.read_bytes()
                    )


class MlflowSink:
    """One MLflow run per rectrain run (see the module docstring)."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str,
        run_key: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self._c = MlflowClient(tracking_uri=tracking_uri)
        exp = self._c.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self._c.create_experiment(experiment)
        found = self._c.search_runs(
            [exp_id], filter_string=f"tags.`rectrain.run` = '{run_key}'", max_results=1
        )
        if found:  # a resumed job continues its MLflow run
            self.run_id = found[0].info.run_id
            self._c.update_run(self.run_id, status="RUNNING")
        else:
            all_tags = {"rectrain.run": run_key, **(tags or {})}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            self.run_id = self._c.create_run(exp_id, run_name=run_name or run_key, tags=all_tags).info.run_id
            if spec:
                self._log_params(spec)
        self._val: dict[int, float] = {}
        self._ended = False

    def _log_params(self, spec: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k[:250], v[:_MLFLOW_PARAM_CHARS]) for k, v in sorted(flatten(spec).items())]
        for i in range(0, len(params), _MLFLOW_BATCH):
            self._c.log_batch(self.run_id, params=params[i : i + _MLFLOW_BATCH])

    def emit(self, event: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        t = event.get("type")
        if t == EventType.PASS.value:
            p = int(event["pass"])
            ts = int(float(event.get("ts", 0)) * 1000)
            metrics = [Metric(tag, v, ts, p + 1) for tag, v in pass_scalars(event).items()]
            self._c.log_batch(self.run_id, metrics=metrics)
            if event.get("val_ne") is not None:
                self._val[p] = float(event["val_ne"])
                sel = min(self._val, key=lambda k: (self._val[k], k))
                self._c.set_tag(self.run_id, "rectrain.selected_pass", str(sel + 1))
        elif t == EventType.LIFECYCLE.value and event.get("phase") in (
            Phase.FINISHED.value,
            Phase.FAILED.value,
        ):
            status = "FINISHED" if event["phase"] == Phase.FINISHED.value else "FAILED"
            if status == "FAILED" and event.get("message"):
                self._c.set_tag(self.run_id, "rectrain.error", str(event["message"])[:5000])
            self._c.set_terminated(self.run_id, status=status)
            self._ended = True

    def close(self) -> None:
        if not self._ended:  # stopped without a final event (cancel, crash): say so
            try:
                self._c.set_terminated(self.run_id, status="KILLED")
            except Exception:
                pass
