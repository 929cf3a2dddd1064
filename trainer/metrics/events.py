"""The metrics event schema: what rank 0 emits, and the sink interface it emits to.

Every event is a flat JSON-able dict with at least:
    type  (str)   one of :class:`EventType`
    step  (int)   global train step when it was emitted; monotonic over a run, also
                  across a resume (a resumed run continues the step count), so readers
                  de-duplicate on (type, step, pass)
    pass  (int)   0-based pass index (-1 for run-level lifecycle events)
    ts    (float) unix time
Payload fields by type are documented on :class:`EventType`.
"""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from trainer.results import EVENTS_FILE


class EventType(str, Enum):
    LIFECYCLE = "lifecycle"  # phase: started|resumed|pass_started|pass_finished|finished|failed; message;
    #                          started/resumed add steps_per_pass, num_passes, total_steps, num_workers
    TRAIN_WINDOW = "train_window"  # ne_window, ne_lifetime, examples, examples_per_s, steps_in_pass
    PASS = "pass"  # train_ne, train_calibration,
    #               val_ne, val_calibration, val_auc, val_ne_by_stratum{...}, val_examples_by_stratum{...},
    #               test_ne, test_calibration, test_auc, test_ne_by_stratum{...}, test_examples_by_stratum{...},
    #               oracle_val_ne, oracle_test_ne (NE of the true click probabilities; null unless the
    #               source is synthetic and the days exist), references (rank 0's constant and
    #               logistic-regression NE/AUC on the same data, trainer/references.py; the same every
    #               pass), train_examples, examples_per_s, train_seconds
    #               (val_* are null / {} without validation data; AUCs are exact over the whole set)


class Phase(str, Enum):
    STARTED = "started"
    RESUMED = "resumed"
    PASS_STARTED = "pass_started"
    PASS_FINISHED = "pass_finished"
    FINISHED = "finished"
    FAILED = "failed"


def make_event(type_: EventType, step: int, pass_: int, **payload: Any) -> dict[str, Any]:
    return {"type": type_.value, "step": int(step), "pass": int(pass_), "ts": time.time(), **payload}


class MetricsSink(Protocol):
    """Where rank 0 writes events. Must not raise on a transient outage."""

    def emit(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlFileSink:
    """Appends one JSON line per event (the run directory's ``events.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)

    def emit(self, event: dict[str, Any]) -> None:
        self._f.write(json.dumps(event) + "\n")

    def close(self) -> None:
        self._f.close()


def format_event(event: dict[str, Any]) -> str | None:
    """One human-readable line for an event (None for events not worth a line)."""
    t = event["type"]
    if t == EventType.TRAIN_WINDOW.value:
        return (
            f"[pass {event['pass'] + 1}] step {event['step']:>7}  window NE {_num(event.get('ne_window'))}"
            f"  {event['examples_per_s']:,.0f} ex/s"
        )
    if t == EventType.PASS.value:
        return (
            f"[pass {event['pass'] + 1}] train NE {_num(event.get('train_ne'))}  "
            f"val NE {_num(event.get('val_ne'))}  test NE {_num(event.get('test_ne'))}  "
            f"calib {_num(event.get('test_calibration'), '.3f')}  AUC {_num(event.get('test_auc'))}"
        )
    if t == EventType.LIFECYCLE.value:
        return f"[{event['phase']}] {event.get('message', '')}".rstrip()
    return None


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


class StdoutSink:
    """Human-readable lines on stdout (see :func:`format_event`)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def emit(self, event: dict[str, Any]) -> None:
        line = format_event(event)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class MultiSink:
    """Fans out to several sinks; one failing sink never stops the others."""

    def __init__(self, sinks: list[MetricsSink]) -> None:
        self.sinks = sinks

    def emit(self, event: dict[str, Any]) -> None:
        for s in self.sinks:
            try:
                s.emit(event)
            except Exception as e:  # a sink must not kill training
                print(f"rectrain: metrics sink {type(s).__name__} failed: {e}", file=sys.stderr)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception:
                pass


def make_sink(
    run_dir: str | Path,
    *,
    stdout: bool = True,
    redis_url: str | None = None,
    job_id: str | None = None,
    spec: Any = None,
    job_store: str | None = None,
) -> MultiSink:
    """The sinks a run writes to: always the run dir's events.jsonl; stdout lines; the
    job's Redis Stream when the control plane launched the run (redis_url + job_id); and
    TensorBoard / MLflow when ``spec.metrics`` asks (:mod:`trainer.metrics.tracking`)."""
    sinks: list[MetricsSink] = [JsonlFileSink(Path(run_dir) / EVENTS_FILE)]
    if stdout:
        sinks.append(StdoutSink())
    if redis_url and job_id:
        from trainer.metrics.redis_sink import RedisStreamSink

        sinks.append(RedisStreamSink(redis_url, job_id))
    if spec is not None:
        from trainer.metrics.tracking import tracking_sinks

        run_key = job_id or Path(run_dir).name
        sinks.extend(tracking_sinks(spec, run_dir, run_key=run_key, job_store=job_store))
    return MultiSink(sinks)
