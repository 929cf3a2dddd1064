"""The FastAPI application: wiring only (settings, Redis, middleware, routers).

Run it with ``rectrain serve``, or ``uvicorn api.main:create_app --factory``. With
``RECTRAIN_CONTROL_LOOPS=in-process`` (the default) its lifespan also runs the control
loops (dispatcher, reaper, study reconciler: :mod:`services.worker`); with ``off`` a
``rectrain worker`` process runs them and this process only answers requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.logs import install_access_log_redaction
from api.middleware import BodySizeLimit, RequestTelemetry, Telemetry
from api.routes import health, jobs, studies
from api.routes.health import refresh_job_gauges_loop, start_metrics_server
from api.spec_errors import request_error_loc
from services.jobs import JobStore
from services.launcher import JobLauncher
from services.redis_conn import EmbeddedRedis, RedisSupervisor, async_client
from services.settings import Settings
from services.stream_hub import StreamHub
from services.studies import StudyStore
from services.worker import ControlLoops

log = logging.getLogger("rectrain.api")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    embedded = None
    tasks: list[asyncio.Task] = []
    url = settings.redis_url
    app.state.redis_supervisor = None
    if not url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
        log.info("embedded Redis at %s", url)
        # restart it (from its append-only file) if it dies; /healthz reports it
        app.state.redis_supervisor = RedisSupervisor(embedded)
        tasks.append(asyncio.create_task(app.state.redis_supervisor.run()))
    # blocking pools: past the limit a request waits (bounded) instead of failing
    redis = async_client(
        url, max_connections=settings.redis_max_connections, pool_timeout_s=settings.redis_pool_timeout_s
    )
    # the streams' shared watchers block up to the keepalive interval: a longer socket timeout
    stream_redis = async_client(
        url,
        max_connections=settings.sse_max_streams + 2,
        pool_timeout_s=settings.redis_pool_timeout_s,
        socket_timeout=settings.sse_keepalive_s + 10,
    )
    app.state.redis_url = url
    app.state.store = JobStore(redis)
    app.state.stream_redis = stream_redis
    app.state.stream_hub = StreamHub(
        stream_redis,
        block_ms=int(settings.sse_keepalive_s * 1000),
        max_streams=settings.sse_max_streams,
        max_per_owner=settings.sse_max_streams_per_owner,
    )
    app.state.launcher = JobLauncher(settings, url)
    app.state.studies = StudyStore(app.state.store)
    # the dispatcher, reaper and study reconciler: here, or in a `rectrain worker`
    # (RECTRAIN_CONTROL_LOOPS=off; services/worker.py)
    app.state.control_loops = None
    app.state.dispatcher = None
    if settings.control_loops == "in-process":
        wait_hist = app.state.telemetry.queue_wait
        loops = ControlLoops(
            app.state.store,
            app.state.studies,
            app.state.launcher,
            on_dispatch=lambda _id, waited: wait_hist.observe(waited),
        )
        tasks += loops.start()
        app.state.control_loops = loops
        app.state.dispatcher = loops.dispatcher
    else:
        log.info("control loops off (RECTRAIN_CONTROL_LOOPS=off): a `rectrain worker` runs them")
    metrics_server = start_metrics_server(app, settings)
    if metrics_server is not None:
        tasks.append(asyncio.create_task(refresh_job_gauges_loop(app)))
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        # bounded: a task stuck in a thread (or a dead Redis) must not hold the shutdown;
        # with the loops off, an external Redis and no metrics port there may be none
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if metrics_server is not None:
            metrics_server.shutdown()
        for closing in (app.state.stream_hub.close(), redis.aclose(), stream_redis.aclose()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 5)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for this class only
    detail = []
    for e in exc.errors():
        loc, msg = request_error_loc(e)
        detail.append({"loc": loc, "msg": msg, "type": e.get("type", "value_error")})
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable: %s", exc)
    return JSONResponse({"detail": "Redis unavailable"}, status_code=503)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "Internal server error"}, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="rectrain",
        version="0.1.0",
        summary="Submit recommender training jobs, follow their normalized entropy live.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = Telemetry()
    install_access_log_redaction()
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTelemetry, telemetry=app.state.telemetry)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(studies.router)
    try:
        from api.dashboard import router as dashboard_router
    except ModuleNotFoundError as e:
        if e.name != "api.dashboard":  # the dashboard exists but its own import failed
            raise
    else:
        app.include_router(dashboard_router)
    return app


app: FastAPI  # built on first access by __getattr__ below


def __getattr__(name: str) -> FastAPI:
    # ``uvicorn api.main:app`` works too; the app is built on first access, not import
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
