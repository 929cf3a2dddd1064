"""Request and response models of the REST API: JobCreate -> JobPublic -> JobsPublic;
StudyCreate -> StudyPlan, StudyPublic -> StudiesPublic; the documented error responses."""

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
    "StudiesPublic",
    "StudyCreate",
    "StudyPlan",
    "StudyPublic",
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


# the error responses both route modules document
COMMON_ERRORS: Responses = {
    401: {"model": Message, "description": "missing or invalid token"},
    413: {"model": Message, "description": "request body too large"},
    503: {"model": Message, "description": "Redis unavailable"},
}
TOO_MANY_STREAMS: Responses = {429: {"model": Message, "description": "too many open event streams"}}


def not_found(what: str) -> Responses:
    """404 of a route about one ``what`` (job, study) of the caller's."""
    return {404: {"model": Message, "description": f"no such {what} for this token's owner"}}


def conflict(description: str) -> Responses:
    """409: the action is refused in the resource's current status."""
    return {409: {"model": Message, "description": description}}


class Health(BaseModel):
    status: str


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)


class StreamTicket(BaseModel):
    """A short-lived ticket for one job's event stream (``GET /v1/jobs/{id}/events?ticket=``)."""

    ticket: str
    expires_in: int = Field(description="seconds the ticket stays valid")


# ---------------------------------------------------------------------- studies


class StudyCreate(BaseModel):
    """Body of ``POST /v1/studies`` and ``POST /v1/studies/plan``."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(
        description="a study spec: base (a job spec), variants (regularizers with grids), seeds, passes "
        "(see trainer/study_spec.py and docs/studies.md)"
    )
    name: str | None = Field(None, min_length=1, max_length=200, description="display name")


class StudyPlan(BaseModel):
    """What a study expands to, before it runs."""

    runs: int = Field(
        description="jobs it will submit (arms x seeds; a staged study: at most, every stage at its budget)"
    )
    arms: int = Field(description="baseline + every variant at every grid point")
    variants: int
    seeds: list[int]
    passes: int
    arm_list: list[dict[str, Any]]
    estimate: dict[str, Any] = Field(description="example-passes and a rough sequential duration")
    stages: dict[str, Any] | None = Field(
        None,
        description="a staged study (a strength searched over a range, a tuned baseline): each stage's "
        "runs at most, the search budgets and seeds (docs/studies.md, Strength search)",
    )


class StudyPublic(BaseModel):
    """A study: plan, progress, its runs (jobs) and, when asked, its answer."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None
    owner: str
    status: str = Field(description="queued | running | cancelling | succeeded | failed | cancelled")
    cancel_requested: bool
    error: str | None = Field(None, description="why the study was stopped (its runs cannot run)")
    waiting: str | None = Field(
        None, description="why submitting its runs is paused (e.g. the queue is full)"
    )
    created_at: float
    finished_at: float | None
    spec: dict[str, Any]
    plan: StudyPlan
    progress: dict[str, int]
    eta_seconds: float | None = Field(
        None,
        description="time left at the rate its runs have finished so far (null before the "
        "first run ends and once the study has ended)",
    )
    runs: list[dict[str, Any]]
    results: dict[str, Any] | None = Field(None, description="the answer (see docs/studies.md)")


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int
