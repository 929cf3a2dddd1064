"""Request and response models of the REST API: JobCreate -> JobPublic -> JobsPublic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services import keys
from services.jobs import JobRecord, JobStatus
from services.queue import QueueInfo
from trainer.results import PassResult, RunResult, RunSummary
from trainer.spec import JobSpec

__all__ = [
    "JobCreate",
    "JobPublic",
    "JobSummary",
    "JobsPublic",
    "PassResult",
    "RunResult",
    "RunSummary",
]

LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")]
LabelValue = Annotated[str, StringConstraints(max_length=256)]


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    spec: JobSpec = Field(description="the job spec (see trainer/spec.py)")
    name: str | None = Field(None, min_length=1, max_length=200, description="display name")
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=32, description="free-form key/value labels (at most 32)"
    )
    priority: int = Field(
        0,
        ge=-keys.PRIORITY_MAX,
        le=keys.PRIORITY_MAX,
        description="order within the owner's queue: higher first, then first come (owners take turns)",
    )


class JobSummary(RunSummary):
    """Latest metrics of a job: the run's summary (trainer/results.py) as its finished
    passes give it, while it runs and after."""

    model_config = ConfigDict(extra="ignore")


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    name: str | None
    owner: str
    status: JobStatus
    labels: dict[str, str]
    spec: JobSpec
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = Field(description="why it failed or was cancelled (the trainer's own reason)")
    error_log: str | None = Field(
        None, description="a failed job: the end of its trainer's log (stderr or the Ray job log), kept apart"
    )
    cancel_requested: bool = False
    passes_done: int
    num_passes: int
    summary: JobSummary
    priority: int = Field(0, description="order within the owner's queue: higher first")
    queue_position: int | None = Field(
        None, description="queued jobs: 1 = next to start (all owners' jobs counted); else null"
    )
    wait_reason: str | None = Field(
        None, description="queued jobs: why it waits, e.g. 'waiting for 2 CPUs; 0 free'"
    )

    @classmethod
    def from_record(
        cls, job: JobRecord, summary: dict[str, Any], queue: QueueInfo | None = None
    ) -> "JobPublic":
        queued = job.status == JobStatus.QUEUED
        return cls(
            priority=job.priority,
            queue_position=queue.position if queued and queue else None,
            wait_reason=(queue.reason if queue else "waiting for the dispatcher") if queued else None,
            id=job.id,
            name=job.name,
            owner=job.owner,
            status=job.status,
            labels=job.labels,
            spec=JobSpec.model_validate(job.spec),
            created_at=_ts(job.created_at),
            started_at=_ts(job.started_at),
            finished_at=_ts(job.finished_at),
            error=job.error,
            error_log=job.error_log,
            cancel_requested=job.cancel_requested,
            passes_done=len(summary["passes"]),
            num_passes=job.num_passes,
            summary=JobSummary.model_validate(summary),
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="jobs matching the filter in all (for paging)")


class MetricEvent(BaseModel):
    """One entry of a job's event stream."""

    id: str = Field(description="stream id; pass it as ``after`` (or Last-Event-ID) to resume")
    event: dict[str, Any] = Field(description="the event: type, step, pass, ts and its payload")


class MetricsPage(BaseModel):
    data: list[MetricEvent]
    next: str = Field(description="cursor for the next page (``after``)")


# OpenAPI documentation of a route's extra responses, as FastAPI's ``responses=`` takes it
Responses = dict[int | str, dict[str, Any]]


def sse_responses(description: str, *others: Responses) -> Responses:
    """The documentation of a Server-Sent Events route: its 200 stream, then ``others``."""
    out: Responses = {
        200: {"description": description, "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    }
    for o in others:
        out.update(o)
    return out


class Message(BaseModel):
    """An error."""

    detail: str


class Health(BaseModel):
    status: str


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


class StreamTicket(BaseModel):
    """A short-lived ticket for one job's event stream (``GET /v1/jobs/{id}/events?ticket=``)."""

    ticket: str
    expires_in: int = Field(description="seconds the ticket stays valid")
