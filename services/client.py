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
``detail``); an API that cannot be reached raises :class:`ApiUnreachable`. The models
and errors are services/client_models.py's, the event-stream reader services/client_sse.py's;
this module is the HTTP methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from services.client_models import (
    ApiError,
    ApiUnreachable,
    Event,
    Job,
    JobPage,
    Study,
    StudyPage,
    raise_for_status,
)
from services.client_sse import read_events
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
        for ev in read_events(
            self._http, self.url, f"/v1/jobs/{job_id}/events", after, reconnect_for_s, on_reconnect
        ):
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
        for ev in read_events(
            self._http, self.url, f"/v1/studies/{study_id}/events", None, reconnect_for_s, on_reconnect
        ):
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
