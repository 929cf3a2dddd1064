"""What a job is: its status machine, its record and its errors (no Redis here).

:class:`JobStatus` and :data:`TRANSITIONS` are the status machine that every change in
:class:`services.jobs.JobStore` checks; :class:`JobRecord` is the job hash as stored
(``keys.job_key``), :func:`encode_fields` its field encoding, :func:`status_event` the
stream event a status change appends. :mod:`services.jobs` imports these names too, so
``from services.jobs import JobStatus`` is the usual spelling.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from trainer.errors import RectrainError


class JobStatus(str, Enum):
    QUEUED = "queued"  # accepted; waiting in the queue for capacity (services.queue)
    STARTING = "starting"  # the dispatcher claimed it; its launcher is starting the trainer
    RUNNING = "running"  # the trainer process / Ray job is running
    SUCCEEDED = "succeeded"  # the trainer exited 0 (results recorded)
    FAILED = "failed"  # the trainer or its launcher failed; ``error`` says why
    CANCELLED = "cancelled"  # stopped on request

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """Has (or should have) a live launcher heartbeat."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)

    def can_become(self, other: "JobStatus") -> bool:
        return other in TRANSITIONS[self]


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.STARTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.STARTING: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class JobNotFound(RectrainError):
    """No job with this id (or not visible to this owner)."""


class IllegalTransition(RectrainError):
    """The job's current status does not allow the requested change."""

    def __init__(self, message: str, current: "JobStatus | None" = None) -> None:
        super().__init__(message)
        self.current = current


class QueueFull(RectrainError):
    """The owner already has the most queued jobs allowed (RECTRAIN_MAX_QUEUED_PER_OWNER)."""


def new_job_id() -> str:
    return secrets.token_hex(8)


# fields of the job hash that hold JSON; the rest are strings ("" = unset)
_JSON_FIELDS = ("labels", "spec", "demand")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "dispatched_at")
_INT_FIELDS = ("num_passes", "runner_pid", "trainer_pid", "priority")


@dataclass
class JobRecord:
    """A job as stored in Redis."""

    id: str
    owner: str
    status: JobStatus
    spec: dict[str, Any]
    created_at: float
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    num_passes: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_log: str | None = None  # a failed trainer's log tail (ANSI removed); error is its reason
    cancel_requested: bool = False
    launcher: str | None = None
    runner_host: str | None = None
    runner_pid: int | None = None
    trainer_pid: int | None = None
    ray_submission_id: str | None = None
    run_dir: str | None = None
    priority: int = 0  # higher first within its owner's queue
    demand: dict[str, Any] | None = None  # services.capacity.Demand as a dict
    dispatched_at: float | None = None  # when the dispatcher claimed it

    @classmethod
    def from_hash(cls, h: Mapping[str, str]) -> "JobRecord":
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            v = h.get(name)
            if v is None or v == "":
                continue
            if name in _JSON_FIELDS:
                kw[name] = json.loads(v)
            elif name in _FLOAT_FIELDS:
                kw[name] = float(v)
            elif name in _INT_FIELDS:
                kw[name] = int(v)
            elif name == "status":
                kw[name] = JobStatus(v)
            elif name == "cancel_requested":
                kw[name] = v == "1"
            else:
                kw[name] = v
        return cls(**kw)


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in fields.items():
        if k not in JobRecord.__dataclass_fields__:
            raise KeyError(f"unknown job field {k!r}")
        if v is None:
            out[k] = ""
        elif k in _JSON_FIELDS:
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        elif isinstance(v, Enum):
            out[k] = v.value
        else:
            out[k] = str(v)
    return out


def status_event(status: JobStatus, previous: JobStatus | None, error: str | None, ts: float) -> dict:
    """The stream event a transition appends (``step``/``pass`` -1: not a training event)."""
    ev: dict[str, Any] = {"type": "status", "status": status.value, "step": -1, "pass": -1, "ts": ts}
    if previous is not None:
        ev["previous"] = previous.value
    if error:
        ev["error"] = error
    return ev
