"""A typed Python client of the rectrain REST API (sync, over httpx; torch-free).

    from services.client import Client

    with Client() as c:  # RECTRAIN_API_URL / RECTRAIN_TOKEN, as the CLI
        job = c.submit_job({"data": {...}, "model": {...}, "training": {"num_passes": 2}})
        for ev in c.job_events(job.id):  # Server-Sent Events, resumed after a lost connection
            print(ev.type, ev.data.get("ne_window"))
        job = c.get_job(job.id)
        print(job.summary.test_ne_at_selected, [p.test_ne for p in job.summary.passes])

Jobs carry their summary as :class:`trainer.results.RunSummary` (passes as
:class:`trainer.results.PassResult`), the types the trainer writes to ``results.json``.
A 4xx/5xx answer raises :class:`ApiError` (``status``, ``message``, the API's
``detail``); an API that cannot be reached raises :class:`ApiUnreachable`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from trainer.results import PassResult, RunResult, RunSummary

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "Client",
    "Event",
    "Job",
    "JobPage",
    "PassResult",
    "RunResult",
    "RunSummary",
    "Study",
    "StudyPage",
]

RECONNECT_FOR_S = 120.0  # an event stream reconnects for this long before giving up


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


def _body(spec: Mapping[str, Any] | BaseModel | Path) -> dict[str, Any]:
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_none=True)
    if isinstance(spec, Path):
        import yaml

        text = spec.read_text()
        return (json.loads(text) if spec.suffix == ".json" else yaml.safe_load(text)) or {}
    return dict(spec)


class Client:
    """The API at ``url`` with the bearer ``token``; unset, ``RECTRAIN_API_URL`` and
    ``RECTRAIN_TOKEN`` (services.settings.ClientSettings, as the CLI). ``transport``:
    an httpx transport (tests). Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if url is None or token is None:
            from services.settings import ClientSettings

            settings = ClientSettings()
            url = url if url is not None else settings.api_url
            token = token if token is not None else settings.token
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiUnreachable(self.url, e) from e
        raise_for_status(r)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._request(method, path, **kw)
        return r.json() if r.content else None

    def health(self) -> bool:
        """Whether the API answers ``/healthz``."""
        try:
            return self._http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # ------------------------------------------------------------------ jobs

    def submit_job(
        self,
        spec: Mapping[str, Any] | BaseModel | Path,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> Job:
        """Queue a job: ``spec`` a job spec (a dict, a ``JobSpec``, or the Path of a YAML/JSON file)."""
        body: dict[str, Any] = {"spec": _body(spec), "labels": dict(labels or {})}
        if name is not None:
            body["name"] = name
        if priority:
            body["priority"] = priority
        return Job.model_validate(self._json("POST", "/v1/jobs", json=body))

    def list_jobs(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        """The caller's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return JobPage.model_validate(self._json("GET", "/v1/jobs", params=params))

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> Job:
        """Ask a job to stop (a queued job is cancelled at once); 409 once it has finished."""
        return Job.model_validate(self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    def delete_job(self, job_id: str) -> None:
        """Forget a finished job."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def job_results(self, job_id: str) -> RunSummary:
        """A job's summary and per-pass results so far (``Job.summary``)."""
        return self.get_job(job_id).summary

    def job_events(
        self,
        job_id: str,
        *,
        after: str | None = None,
        reconnect_for_s: float = RECONNECT_FOR_S,
        on_reconnect: Callable[[Exception], None] | None = None,
    ) -> Iterator[Event]:
        """A job's events (Server-Sent Events) from the start, or after stream id
        ``after``, until the job has finished. A lost connection is resumed where it
        stopped (``Last-Event-ID``) for up to ``reconnect_for_s``; ``on_reconnect`` is
        told each time. An event a resumed trainer wrote twice is yielded once."""
        seen: set[tuple[Any, ...]] = set()
        for ev in self._sse(f"/v1/jobs/{job_id}/events", after, reconnect_for_s, on_reconnect):
            d = ev.data
            key = (d.get("type"), d.get("step"), d.get("pass"), d.get("status"))
            if key in seen:
                continue
            seen.add(key)
            yield ev

    def wait_job(self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0) -> Job:
        """Poll until the job has finished (or ``timeout_s`` passed: TimeoutError); return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            time.sleep(poll_s)

    def download_model(self, job_id: str, out: str | Path, *, pass_: int | None = None) -> int:
        """Write a succeeded job's model (one file, docs/model-format.md) to ``out``;
        return its 0-based pass (default: the selected pass)."""
        params = {"pass": pass_} if pass_ is not None else {}
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".part")
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/model", params=params, timeout=600) as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for_status(r)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                at = int(r.headers.get("x-rectrain-pass", -1))
        except httpx.TransportError as e:
            tmp.unlink(missing_ok=True)
            raise ApiUnreachable(self.url, e) from e
        tmp.replace(p)
        return at

    def stream_url(self, kind: str, object_id: str) -> str:
        """A URL that opens the event stream of a job (``kind`` "jobs") or study
        ("studies") without the token, for EventSource-style readers: it carries a
        short-lived stream ticket instead (``POST .../stream-ticket``)."""
        t = self._json("POST", f"/v1/{kind}/{object_id}/stream-ticket")
        return f"{self.url}/v1/{kind}/{object_id}/events?ticket={t['ticket']}"

    # ------------------------------------------------------------------ studies

    def plan_study(self, spec: Mapping[str, Any] | BaseModel | Path) -> dict[str, Any]:
        """What a study spec expands to (runs, arms, a rough cost), without submitting it."""
        return self._json("POST", "/v1/studies/plan", json={"spec": _body(spec)})

    def submit_study(self, spec: Mapping[str, Any] | BaseModel | Path, *, name: str | None = None) -> Study:
        body: dict[str, Any] = {"spec": _body(spec)}
        if name is not None:
            body["name"] = name
        return Study.model_validate(self._json("POST", "/v1/studies", json=body))

    def list_studies(self, *, limit: int = 50, offset: int = 0) -> StudyPage:
        """The caller's studies, newest first (without their answers)."""
        page = self._json("GET", "/v1/studies", params={"limit": limit, "offset": offset})
        return StudyPage.model_validate(page)

    def get_study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("GET", f"/v1/studies/{study_id}"))

    def cancel_study(self, study_id: str) -> Study:
        return Study.model_validate(self._json("POST", f"/v1/studies/{study_id}/cancel"))

    def delete_study(self, study_id: str) -> None:
        self._request("DELETE", f"/v1/studies/{study_id}")

    def study_events(
        self,
        study_id: str,
        *,
        reconnect_for_s: float = RECONNECT_FOR_S,
        on_reconnect: Callable[[Exception], None] | None = None,
    ) -> Iterator[Study]:
        """The study as it changes (a snapshot when a run changes status or finishes a
        pass), until it has finished; reconnects like :meth:`job_events`."""
        for ev in self._sse(f"/v1/studies/{study_id}/events", None, reconnect_for_s, on_reconnect):
            if ev.type == "study":
                yield Study.model_validate(ev.data)

    def study_csv(self, study_id: str) -> str:
        """The study's answer as CSV."""
        return self._request("GET", f"/v1/studies/{study_id}/export.csv").text

    def study_json(self, study_id: str) -> dict[str, Any]:
        """The whole study (plan, runs with per-pass NE, answer)."""
        return self._json("GET", f"/v1/studies/{study_id}/export.json")

    def study_report_html(self, study_id: str) -> str:
        """The study's answer as one self-contained HTML page."""
        return self._request("GET", f"/v1/studies/{study_id}/report.html").text

    def export_study(self, study_id: str, out_dir: str | Path) -> dict[str, Path]:
        """``study.csv``, ``study.json`` and ``report.html`` of a study, written to ``out_dir``."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        files = {
            "csv": (d / "study.csv", self.study_csv(study_id)),
            "json": (d / "study.json", json.dumps(self.study_json(study_id), indent=1)),
            "html": (d / "report.html", self.study_report_html(study_id)),
        }
        for path, text in files.values():
            path.write_text(text, encoding="utf-8")
        return {k: path for k, (path, _) in files.items()}

    # ------------------------------------------------------------------ SSE

    def _sse(
        self,
        path: str,
        after: str | None,
        reconnect_for_s: float,
        on_reconnect: Callable[[Exception], None] | None,
    ) -> Iterator[Event]:
        """The messages of an event stream (after stream id ``after``) until its ``end``
        event; reconnects, resuming after the last id received, when the connection is
        lost or the server says ``stream_error``."""
        down_since: float | None = None
        last = after
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            retry_s = 1.0
            try:
                with self._http.stream("GET", path, headers=headers, timeout=None) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise_for_status(r)
                    down_since = None
                    for ev in _parse_sse(r.iter_lines()):
                        if ev.type == "end":
                            return
                        if ev.type == "stream_error":  # the server cannot go on: resume later
                            retry_s = float(ev.data.get("retry_ms", 1000)) / 1000
                            raise httpx.RemoteProtocolError(str(ev.data.get("detail", "stream error")))
                        last = ev.id or last
                        yield ev
                raise httpx.RemoteProtocolError("the stream closed before its end")
            except httpx.TransportError as e:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_for_s:
                    raise ApiUnreachable(self.url, e) from e
                if on_reconnect is not None:
                    on_reconnect(e)
                time.sleep(retry_s)


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    event, data, eid = None, None, None
    for line in lines:
        if line == "":
            if data is not None:
                yield Event(type=event or "message", data=json.loads(data), id=eid)
            event, data, eid = None, None, None
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip() if data is None else data + "\n" + line[5:].strip()
        elif line.startswith("id:"):
            eid = line[3:].strip()
