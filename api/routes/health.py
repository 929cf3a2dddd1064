"""Probes and Prometheus metrics.

``/healthz`` and ``/readyz`` need no auth (kubelets). ``/metrics`` (Prometheus text:
job counts by status over all owners, request counts and latency) is open unless
``RECTRAIN_METRICS_TOKEN`` is set (then it needs ``Authorization: Bearer <that token>``);
with ``RECTRAIN_METRICS_PORT`` it is served on that port only (same host) and the API
port answers 404.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import StoreDep
from api.models import Health
from services.jobs import JobStatus

log = logging.getLogger("rectrain.api")

router = APIRouter(tags=["health"])

_GAUGE_REFRESH_S = 10.0


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "the embedded Redis is down and not coming back"}},
)
async def read_health(request: Request):
    """Liveness: the process answers, and its embedded Redis (if any) is up or being
    restarted successfully."""
    sup = getattr(request.app.state, "redis_supervisor", None)
    if sup is not None and not sup.healthy:
        return JSONResponse({"status": f"embedded Redis down: {sup.describe()}"}, status_code=503)
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses={503: {"model": Health, "description": "Redis unreachable"}}
)
async def read_ready(store: StoreDep):
    """Readiness: Redis answers."""
    try:
        await store.ping()
    except Exception:
        return JSONResponse({"status": "redis unreachable"}, status_code=503)
    return Health(status="ok")


async def refresh_job_gauges(app) -> None:
    telemetry = app.state.telemetry
    try:
        counts = await app.state.store.queues.count_by_status()
        for s, n in counts.items():
            telemetry.jobs.labels(status=s.value).set(n)
        telemetry.queue_length.set(counts[JobStatus.QUEUED])
        telemetry.jobs_running.set(counts[JobStatus.STARTING] + counts[JobStatus.RUNNING])
        telemetry.redis_up.set(1)
    except Exception:
        telemetry.redis_up.set(0)


async def refresh_job_gauges_loop(app) -> None:
    """With a separate metrics port the scrape does not go through the app: refresh
    the job gauges periodically instead."""
    while True:
        await refresh_job_gauges(app)
        await asyncio.sleep(_GAUGE_REFRESH_S)


def start_metrics_server(app, settings):
    """Serve the app's registry on ``RECTRAIN_METRICS_PORT`` (a thread); None if unset."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    host = settings.metrics_host
    server, _thread = start_http_server(
        settings.metrics_port, addr=host, registry=app.state.telemetry.registry
    )
    log.info("Prometheus metrics on http://%s:%d/metrics", host, settings.metrics_port)
    return server


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        401: {"description": "RECTRAIN_METRICS_TOKEN is set and the bearer token is not it"},
        404: {"description": "served on RECTRAIN_METRICS_PORT instead"},
    },
)
async def read_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs by status (all owners), queue length, jobs running, queue
    wait, request counts and latency."""
    settings = request.app.state.settings
    if settings.metrics_port is not None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    if settings.metrics_token:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), settings.metrics_token.encode()
        ):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "Not authenticated", headers={"WWW-Authenticate": "Bearer"}
            )
    await refresh_job_gauges(request.app)
    return Response(generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
