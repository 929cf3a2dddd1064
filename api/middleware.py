"""ASGI middleware: request body size limit (413) and request telemetry (Prometheus)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"Request body too large (limit {self.max_bytes} bytes)"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes HTTPException from body reading through to its handler
                    raise HTTPException(413, detail)
            return msg

        await self.app(scope, limited, send)


class Telemetry:
    """The app's Prometheus registry and instruments (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rectrain_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "rectrain_http_request_duration_seconds",
            "HTTP request latency (SSE streams excluded)",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.jobs = Gauge("rectrain_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.redis_up = Gauge(
            "rectrain_redis_up", "1 if Redis answered the last scrape", registry=self.registry
        )
        self.queue_length = Gauge(
            "rectrain_queue_length", "Jobs waiting in the queue (all owners)", registry=self.registry
        )
        self.jobs_running = Gauge(
            "rectrain_jobs_running", "Jobs holding capacity (starting or running)", registry=self.registry
        )
        self.queue_wait = Histogram(
            "rectrain_queue_wait_seconds",
            "Time from submission to dispatch, for jobs this API process dispatched",
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
        )


class RequestTelemetry:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.t = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = [500]

        async def send_wrapper(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                code[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.t.requests.labels(method, path, str(code[0])).inc()
            if not path.endswith("/events"):
                self.t.latency.labels(method, path).observe(time.perf_counter() - start)
