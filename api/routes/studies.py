"""``/v1/studies``: plan, submit, list, read, cancel and delete studies; export and
stream their answer (HTTP only: the logic is in services.studies and services.study_stats)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from api import sse
from api.deps import (
    CurrentOwner,
    CurrentOwnerSSE,
    LauncherDep,
    SettingsDep,
    StoreDep,
    StudiesDep,
    acquire_stream_slot,
    issue_stream_ticket,
)
from api.models import (
    COMMON_ERRORS,
    TOO_MANY_STREAMS,
    Responses,
    StreamTicket,
    StudiesPublic,
    StudyCreate,
    StudyPlan,
    StudyPublic,
    conflict,
    not_found,
    sse_responses,
)
from api.spec_errors import study_base_detail, study_detail
from services.studies import StudyConflict, StudyLimit, StudyNotFound, StudyRecord, StudyStore
from services.study_report import render_report
from services.study_stats import to_csv
from trainer.errors import CapacityError, SpecError
from trainer.study_spec import Expansion, parse_study

log = logging.getLogger("rectrain.api")

router = APIRouter(prefix="/v1/studies", tags=["studies"], responses=COMMON_ERRORS)
_NOT_FOUND = not_found("study")
_CONFLICT = conflict("not allowed in the study's current state")


def _expand(body: StudyCreate) -> Expansion:
    try:
        return parse_study(body.spec)
    except SpecError as e:
        raise RequestValidationError(study_detail(e)) from None


async def _study_or_404(studies: StudyStore, study_id: str, owner: str) -> StudyRecord:
    try:
        return await studies.get_for_owner(study_id, owner)
    except StudyNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Study not found") from None


@router.post("/plan", response_model=StudyPlan)
async def plan_study(body: StudyCreate, owner: CurrentOwner) -> StudyPlan:
    """Validate and expand a study without running it: runs, arms and estimated cost."""
    exp = await asyncio.to_thread(_expand, body)  # bounded first, then off the event loop
    return StudyPlan.model_validate(await asyncio.to_thread(exp.plan))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyPublic)
async def create_study(
    body: StudyCreate,
    owner: CurrentOwner,
    studies: StudiesDep,
    launcher: LauncherDep,
    settings: SettingsDep,
) -> StudyPublic:
    """Submit a study: every run (arm x seed) becomes a job labelled ``study=<id>``."""
    # the size is checked from the grid sizes before anything is built; the expansion
    # (every arm's spec validated) runs off the event loop
    exp = await asyncio.to_thread(_expand, body)
    try:
        rec = await studies.create(owner, exp, body.name, settings.study_max_runs)
    except StudyLimit as e:
        raise RequestValidationError(
            [{"type": "limit", "loc": ("body", "spec", "variants"), "msg": e.message, "input": None}]
        ) from None
    await asyncio.to_thread(rec.expansion)  # cached for the reconciler's sweeps
    try:
        await studies.runs.submit(rec, launcher)
    except SpecError as e:  # no run of this study can ever start (capacity, init_from): nothing was submitted
        await studies.delete(await studies.get(rec.id) or rec, force=True)
        type_ = "capacity" if isinstance(e, CapacityError) else "value_error"
        raise RequestValidationError(study_base_detail(e, type_)) from None
    rec = await studies.get(rec.id) or rec
    return StudyPublic.model_validate(await studies.view.snapshot(rec, with_results=False))


@router.get("", response_model=StudiesPublic)
async def list_studies(
    owner: CurrentOwner,
    studies: StudiesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> StudiesPublic:
    """List the caller's studies, newest first (without their answers)."""
    recs, count = await studies.list(owner, limit=limit, offset=offset)
    data = [StudyPublic.model_validate(await studies.view.snapshot(r, with_results=False)) for r in recs]
    return StudiesPublic(data=data, count=count)


@router.get("/{study_id}", response_model=StudyPublic, responses=_NOT_FOUND)
async def read_study(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> StudyPublic:
    """A study's plan, progress, runs and answer (``results``): first the ``headline``,
    every arm at its runs' validation-selected pass vs the baseline at its own (paired Δ,
    95% t-interval, Holm-adjusted p, ranking and best arm chosen on validation NE, power);
    then per pass count each arm's mean NE and its paired Δ vs the same-seed baseline,
    per stratum too; strength curves; one answer sentence per pass count."""
    rec = await _study_or_404(studies, study_id, owner)
    return StudyPublic.model_validate(await studies.view.snapshot(rec))


@contextmanager
def _conflict_as_409() -> Iterator[None]:
    """A study in a status that refuses the action answers 409 with the store's reason."""
    try:
        yield
    except StudyConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, e.message) from None


@router.post(
    "/{study_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StudyPublic,
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def cancel_study(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> StudyPublic:
    """Cancel a study: no more runs are submitted and every unfinished job is cancelled."""
    rec = await _study_or_404(studies, study_id, owner)
    with _conflict_as_409():
        await studies.cancel(rec)
    rec = await _study_or_404(studies, study_id, owner)
    return StudyPublic.model_validate(await studies.view.snapshot(rec, with_results=False))


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def delete_study(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> Response:
    """Delete a finished (or cancelled) study with all its jobs."""
    rec = await _study_or_404(studies, study_id, owner)
    with _conflict_as_409():
        await studies.delete(rec)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_CSV_DOC: Responses = {
    200: {
        "description": "one row per (pass count, arm): mean NE, paired Δ vs baseline, 95% CI, per stratum",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **_NOT_FOUND,
}


@router.get("/{study_id}/export.csv", response_class=Response, responses=_CSV_DOC)
async def export_study_csv(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> Response:
    """The answer as CSV."""
    snap = await studies.view.snapshot(await _study_or_404(studies, study_id, owner))
    return Response(
        to_csv(snap["results"]),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}.csv"'},
    )


@router.get("/{study_id}/export.json", responses=_NOT_FOUND)
async def export_study_json(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> Response:
    """The whole study (plan, runs with per-pass NE, answer) as a JSON download."""
    snap = await studies.view.snapshot(await _study_or_404(studies, study_id, owner))
    return Response(
        json.dumps(snap, indent=1),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="study-{study_id}.json"'},
    )


_HTML_DOC: Responses = {
    200: {
        "description": "one self-contained HTML page (charts inlined, no external request): the "
        "headline vs stopping the baseline early, NE by pass with interval bands and reference "
        "lines, strength curves, the same-pass table",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
    **_NOT_FOUND,
}


@router.get("/{study_id}/report.html", response_class=Response, responses=_HTML_DOC)
async def study_report_html(study_id: str, owner: CurrentOwner, studies: StudiesDep) -> Response:
    """The answer as one self-contained HTML page to save and share."""
    snap = await studies.view.snapshot(await _study_or_404(studies, study_id, owner))
    return Response(
        render_report(snap),
        media_type="text/html; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="study-{study_id}.html"'},
    )


_SSE_DOC = sse_responses(
    (
        "Server-Sent Events: a ``study`` event carrying the whole study (as GET returns it, "
        "answer included) first and whenever a run changes status or finishes a pass; "
        "comments keep the connection alive; when the study has finished an ``end`` event "
        '(``data``: ``{"status": ...}``) is sent and the stream closes. Reconnecting simply '
        "starts again with the current state."
    ),
    _NOT_FOUND,
)


@router.post(
    "/{study_id}/stream-ticket",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamTicket,
    responses=_NOT_FOUND,
)
async def create_study_stream_ticket(
    study_id: str, owner: CurrentOwner, studies: StudiesDep, store: StoreDep, settings: SettingsDep
) -> StreamTicket:
    """A short-lived ticket that opens this study's event stream (``GET .../events?ticket=``)
    for EventSource clients: the API token itself never goes into a URL."""
    await _study_or_404(studies, study_id, owner)
    return await issue_stream_ticket(store, settings, owner, f"study:{study_id}")


@router.get(
    "/{study_id}/events",
    response_class=StreamingResponse,
    responses={**_SSE_DOC, **TOO_MANY_STREAMS},
)
async def stream_study_events(
    study_id: str, request: Request, owner: CurrentOwnerSSE, studies: StudiesDep, settings: SettingsDep
) -> StreamingResponse:
    """Follow a study live: its progress and answer as runs finish passes.

    Streams are capped per owner and in total, job and study streams together (429). If
    the server cannot go on (Redis unavailable), a ``stream_error`` event (``data``:
    ``{"detail", "retry_ms"}``) is sent before closing: reconnect after ``retry_ms``."""
    rec = await _study_or_404(studies, study_id, owner)
    slot = acquire_stream_slot(request, owner)
    poll_s = settings.study_poll_s
    keepalive_s = settings.sse_keepalive_s

    async def events():
        last_sig = None
        quiet = 0.0
        try:
            yield sse.OPEN
            while True:
                sig = await studies.view.change_signature(rec)
                if sig != last_sig:
                    last_sig = sig
                    fresh = await studies.get(study_id)
                    if fresh is None:
                        yield sse.event("end", {"status": "deleted"})
                        return
                    snap = await studies.view.snapshot(fresh)
                    yield sse.event("study", snap)
                    quiet = 0.0
                    if snap["status"] in ("succeeded", "failed", "cancelled"):
                        yield sse.event("end", {"status": snap["status"]})
                        return
                await asyncio.sleep(poll_s)
                quiet += poll_s
                if quiet >= keepalive_s:
                    quiet = 0.0
                    if await request.is_disconnected():
                        return
                    yield sse.KEEPALIVE
        except RedisError as e:
            log.warning("SSE stream of study %s ended: Redis error %s", study_id, e)
            yield sse.redis_error()
        finally:
            slot.release()

    return sse.response(events(), slot)
