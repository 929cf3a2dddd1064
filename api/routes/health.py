"""Probes and Prometheus metrics (no auth: scraped by kubelets and Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import StoreDep
from api.models import Health
from services.jobs import JobStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def read_health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Health, responses={503: {"model": Health, "description": "Redis unreachable"}}
)
async def read_ready(store: StoreDep):
    """Readiness: Redis answers."""
    try:
        await store.r.ping()
    except Exception:
        return JSONResponse({"status": "redis unreachable"}, status_code=503)
    return Health(status="ok")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        }
    },
)
async def read_metrics(request: Request, store: StoreDep) -> Response:
    """Prometheus metrics: jobs by status, queue length, jobs running, queue wait, requests."""
    telemetry = request.app.state.telemetry
    try:
        counts = await store.count_by_status()
        for s, n in counts.items():
            telemetry.jobs.labels(status=s.value).set(n)
        telemetry.queue_length.set(counts[JobStatus.QUEUED])
        telemetry.jobs_running.set(counts[JobStatus.STARTING] + counts[JobStatus.RUNNING])
        telemetry.redis_up.set(1)
    except Exception:
        telemetry.redis_up.set(0)
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
