"""What the API answers, as the Python client (services/client.py) returns it: the typed
models (:class:`Job`, :class:`Study`, their pages, an event stream's :class:`Event`),
the errors (:class:`ApiError`, :class:`ApiUnreachable`) and how an error response is
decoded (:func:`raise_for_status`). Torch-free, like the client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from trainer.results import RunSummary


class ApiError(Exception):
    """The API answered with an error: ``status`` (HTTP), ``message`` (readable, one
    line per validation error) and ``detail`` (the API's ``detail`` as it came)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class ApiUnreachable(ConnectionError):
    """No answer from the API at ``url`` (not running, wrong address, network)."""

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach the API at {url} ({cause}); is `rectrain serve` running?")
        self.url = url


class Job(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` returns it (api/models.py ``JobPublic``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    owner: str
    status: str = Field(description="queued | starting | running | succeeded | failed | cancelled")
    labels: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    error_log: str | None = None
    cancel_requested: bool = False
    passes_done: int = 0
    num_passes: int = 0
    summary: RunSummary = Field(default_factory=RunSummary)
    priority: int = 0
    queue_position: int | None = None
    wait_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class JobPage(BaseModel):
    data: list[Job]
    count: int = Field(description="jobs matching the filter in all")


class Study(BaseModel):
    """A study as ``GET /v1/studies/{id}`` returns it; ``results`` is its answer
    (docs/studies.md), present when read one by one."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    owner: str
    status: str
    cancel_requested: bool = False
    error: str | None = None
    waiting: str | None = None
    created_at: float
    finished_at: float | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, int] = Field(default_factory=dict)
    eta_seconds: float | None = None
    runs: list[dict[str, Any]] = Field(default_factory=list)
    results: dict[str, Any] | None = None
    wall_totals: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class StudyPage(BaseModel):
    data: list[Study]
    count: int


@dataclass(frozen=True)
class Event:
    """One message of an event stream: ``type`` (a job's ``train_window``, ``pass``,
    ``lifecycle``, ``status``; a study's ``study``), its stream ``id`` (jobs) and ``data``."""

    type: str
    data: dict[str, Any]
    id: str | None = None


def _message(detail: Any) -> str:
    if isinstance(detail, list):  # validation errors: one line each, field path first
        lines = []
        for d in detail:
            d = d if isinstance(d, dict) else {"msg": str(d)}
            loc = [str(p) for p in d.get("loc", []) if p not in ("body",)]
            if loc[:1] == ["spec"]:
                loc = loc[1:]
            lines.append(f"  {'.'.join(loc) or 'body'}: {d.get('msg')}")
        return "invalid job:\n" + "\n".join(lines)
    return str(detail)


def raise_for_status(r: httpx.Response) -> None:
    """:class:`ApiError` for a 4xx/5xx response (whose body must have been read)."""
    if r.status_code < 400:
        return
    try:
        body = r.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = r.text
    raise ApiError(r.status_code, _message(detail), detail)
