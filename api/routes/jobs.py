"""``/v1/jobs``: submit, list, read, cancel and delete jobs; poll or stream their events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from starlette.concurrency import iterate_in_threadpool

from api import sse
from api.deps import (
    CurrentOwner,
    CurrentOwnerSSE,
    LauncherDep,
    SettingsDep,
    StoreDep,
    acquire_stream_slot,
    issue_stream_ticket,
)
from api.models import (
    COMMON_ERRORS,
    TOO_MANY_STREAMS,
    JobCreate,
    JobPublic,
    JobsPublic,
    Message,
    MetricsPage,
    Responses,
    StreamTicket,
    conflict,
    not_found,
    sse_responses,
)
from api.spec_errors import capacity_detail, limit_detail
from services.jobs import IllegalTransition, JobNotFound, JobRecord, JobStatus, JobStore, QueueFull
from services.model_lifecycle import ModelNotReady, iter_file, model_file
from services.queue import queue_info
from services.submit import submit_job
from trainer.errors import CapacityError, SpecError
from trainer.lifecycle import LifecycleError
from trainer.storage import StorageError

log = logging.getLogger("rectrain.api")

# seconds a client told "queue full" (429) should wait before trying again
QUEUE_RETRY_AFTER_S = 30

_CURSOR = r"^[0-9]{1,20}(-[0-9]{1,20})?$"

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=COMMON_ERRORS)

_NOT_FOUND = not_found("job")
_CONFLICT = conflict("not allowed in the job's current status")


async def _job_or_404(store: JobStore, job_id: str, owner: str) -> JobRecord:
    try:
        return await store.get_for_owner(job_id, owner)
    except JobNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Job not found") from None


async def _public(store: JobStore, job: JobRecord) -> JobPublic:
    info = await queue_info(store, [job.id]) if job.status == JobStatus.QUEUED else {}
    return JobPublic.from_record(job, await store.events.summary(job.id), info.get(job.id))


_QUEUE_FULL: Responses = {
    429: {
        "model": Message,
        "description": "the owner has RECTRAIN_MAX_QUEUED_PER_OWNER jobs queued; retry after Retry-After s",
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=_QUEUE_FULL)
async def create_job(
    body: JobCreate, owner: CurrentOwner, store: StoreDep, launcher: LauncherDep
) -> JobPublic:
    """Submit a job: validate its spec (fields, memory estimate, fit in the cluster) and queue
    it; it starts when capacity frees, in turn with other owners' jobs."""
    try:
        job = await submit_job(
            store,
            launcher,
            owner=owner,
            spec=body.spec,
            name=body.name,
            labels=body.labels,
            priority=body.priority,
        )
    except CapacityError as e:
        raise RequestValidationError(capacity_detail(e)) from None
    except QueueFull as e:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, e.message, headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)}
        ) from None
    except SpecError as e:  # service limits, data roots, init_from: at the field they name
        raise RequestValidationError(limit_detail(e)) from None
    return await _public(store, job)


@router.get("", response_model=JobsPublic)
async def list_jobs(
    owner: CurrentOwner,
    store: StoreDep,
    status_: Annotated[
        JobStatus | None, Query(alias="status", description="only jobs in this status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> JobsPublic:
    """List the caller's jobs, newest first."""
    jobs, count = await store.list(owner, status_, limit=limit, offset=offset)
    summaries = await store.events.summaries([j.id for j in jobs])
    queue = await queue_info(store, [j.id for j in jobs if j.status == JobStatus.QUEUED])
    return JobsPublic(
        data=[JobPublic.from_record(j, s, queue.get(j.id)) for j, s in zip(jobs, summaries, strict=False)],
        count=count,
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """The store's refusals as HTTP errors: illegal for the job's status -> 409, gone -> 404."""
    try:
        yield
    except IllegalTransition as e:
        raise HTTPException(status.HTTP_409_CONFLICT, e.message) from None
    except JobNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Job not found") from None


@router.get("/{job_id}", response_model=JobPublic, responses=_NOT_FOUND)
async def read_job(job_id: str, owner: CurrentOwner, store: StoreDep) -> JobPublic:
    """A job's status, spec and latest metrics summary (test NE at the pass selected by validation NE, oracle NE, per-pass table)."""
    return await _public(store, await _job_or_404(store, job_id, owner))


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def cancel_job(job_id: str, owner: CurrentOwner, store: StoreDep) -> JobPublic:
    """Cancel a job: a queued job at once, a running one gracefully (watch for ``cancelled``)."""
    await _job_or_404(store, job_id, owner)
    with _store_errors():
        await store.request_cancel(job_id)
    return await _public(store, await _job_or_404(store, job_id, owner))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_NOT_FOUND, **_CONFLICT},
)
async def delete_job(job_id: str, owner: CurrentOwner, store: StoreDep) -> Response:
    """Delete a finished job with its events and results."""
    await _job_or_404(store, job_id, owner)
    with _store_errors():
        await store.delete(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_MODEL_DOC: Responses = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "the exported model file of the pass (docs/model-format.md); header X-Rectrain-Pass",
    },
    404: {"model": Message, "description": "no such job for this token's owner, or the pass is not kept"},
    **conflict("the job has not succeeded"),
}


@router.get("/{job_id}/model", response_class=StreamingResponse, responses=_MODEL_DOC)
async def read_job_model(
    job_id: str,
    owner: CurrentOwner,
    store: StoreDep,
    settings: SettingsDep,
    pass_: Annotated[
        int | None, Query(alias="pass", ge=0, le=1000, description="0-based pass; default the selected")
    ] = None,
) -> StreamingResponse:
    """Download a succeeded job's model: one unsharded file (weights, spec, hashing, features)."""
    job = await _job_or_404(store, job_id, owner)
    try:
        loc, at, size = await model_file(settings, job, pass_)
    except ModelNotReady as e:
        raise HTTPException(status.HTTP_409_CONFLICT, e.message) from None
    except (LifecycleError, StorageError) as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, e.message) from None
    name = f"rectrain-{job_id}-pass{at}.pt"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Rectrain-Pass": str(at),
        "Content-Length": str(size),
    }
    return StreamingResponse(
        iterate_in_threadpool(iter_file(loc)), media_type="application/octet-stream", headers=headers
    )


@router.get("/{job_id}/metrics", response_model=MetricsPage, responses=_NOT_FOUND)
async def read_job_metrics(
    job_id: str,
    owner: CurrentOwner,
    store: StoreDep,
    after: Annotated[
        str | None,
        Query(
            pattern=_CURSOR, description="return events after this stream id (the previous page's ``next``)"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Poll a job's events (NE by step, per-pass results, status changes) by cursor."""
    await _job_or_404(store, job_id, owner)
    entries = await store.events.read_raw(job_id, after, limit)
    nxt = entries[-1][0] if entries else (after or "0-0")
    # the events are stored as JSON already: splice them into the page instead of
    # decoding, validating and re-encoding every one (same shape as MetricsPage)
    items = ",".join(f'{{"id":"{i}","event":{raw}}}' for i, raw in entries)
    return Response(f'{{"data":[{items}],"next":"{nxt}"}}', media_type="application/json")


_PAGE = 500
_TERMINAL = {s.value for s in JobStatus if s.is_terminal}


_SSE_DOC = sse_responses(
    (
        "Server-Sent Events. Each message: ``id`` = stream id, ``event`` = the event type "
        "(``train_window``, ``pass``, ``lifecycle``, ``status``), ``data`` = the event JSON. "
        "Comments keep the connection alive. When the job has finished and every event was "
        'sent, a final ``end`` event (``data``: ``{"status": ...}``) is sent and the stream closes.'
    ),
    _NOT_FOUND,
)


@router.post(
    "/{job_id}/stream-ticket",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamTicket,
    responses=_NOT_FOUND,
)
async def create_stream_ticket(
    job_id: str, owner: CurrentOwner, store: StoreDep, settings: SettingsDep
) -> StreamTicket:
    """A short-lived ticket that opens this job's event stream (``GET .../events?ticket=``)
    for clients that cannot send headers (browsers' EventSource): the API token itself
    never goes into a URL. It stays valid for ``expires_in`` seconds, for this job only."""
    await _job_or_404(store, job_id, owner)
    return await issue_stream_ticket(store, settings, owner, f"job:{job_id}")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={**_SSE_DOC, **TOO_MANY_STREAMS},
)
async def stream_job_events(
    job_id: str,
    request: Request,
    owner: CurrentOwnerSSE,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=_CURSOR, description="resume after this stream id")
    ] = None,
    after: Annotated[
        str | None, Query(pattern=_CURSOR, description="resume after this stream id (Last-Event-ID wins)")
    ] = None,
) -> StreamingResponse:
    """Stream a job's events live (Server-Sent Events), from the start or resumed.

    Streams are capped per owner and in total (429). If the server cannot go on (Redis
    unavailable), it sends a ``stream_error`` event (``data``: ``{"detail", "retry_ms"}``)
    before closing: reconnect after ``retry_ms`` with ``Last-Event-ID``."""
    await _job_or_404(store, job_id, owner)
    hub = request.app.state.stream_hub
    slot = acquire_stream_slot(request, owner)
    keepalive_s = settings.sse_keepalive_s

    async def events():
        cursor = last_event_id or after or "0-0"
        try:
            yield sse.OPEN
            entries = await store.events.read(job_id, cursor, _PAGE)
            while True:
                ended = False
                for eid, ev in entries:
                    cursor = eid
                    ended = ended or (ev.get("type") == "status" and ev.get("status") in _TERMINAL)
                    yield sse.event(str(ev.get("type", "message")), ev, eid)
                if len(entries) >= _PAGE:  # still catching up
                    entries = await store.events.read(job_id, cursor, _PAGE)
                    continue
                if ended or not entries:
                    # quiet (or a terminal status went by): has the job finished?
                    job = await store.get(job_id)
                    if job is None or job.status.is_terminal:
                        entries = await store.events.read(job_id, cursor, _PAGE)
                        if entries:
                            continue  # send what is left first
                        yield sse.event("end", {"status": job.status.value if job else "deleted"})
                        return
                await hub.wait(job_id, cursor, keepalive_s)
                got = hub.since(job_id, cursor)
                entries = got if got is not None else await store.events.read(job_id, cursor, _PAGE)
                if not entries:
                    if await request.is_disconnected():
                        return
                    yield sse.KEEPALIVE
        except RedisError as e:
            # never end a live stream silently: say why; the client reconnects with
            # Last-Event-ID after retry_ms and resumes where this stopped
            log.warning("SSE stream of job %s ended: Redis error %s", job_id, e)
            yield sse.redis_error()
        finally:
            slot.release()

    return sse.response(events(), slot)
