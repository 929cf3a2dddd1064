"""A job's event log and what is summed up from it: the store's ``events`` part.

Each job has a metrics stream (``keys.events_stream_key``: the trainer's events and the
store's ``status`` events, in order) and a progress hash (``keys.progress_key``: per-pass
fields mirrored from its ``pass`` events, which survive stream trimming). :class:`JobEvents`
reads the one and writes the other; :func:`summarize_progress` turns the progress hash
into the job summary the API shows; stream tickets let a browser follow a stream.
Reach it as ``JobStore.events``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from services import keys
from services.failure import split_failure
from services.metrics_bus import read_events, read_events_raw
from services.redis_conn import redis_fields, text, text_hash
from trainer.report import summarize_passes


def summarize_progress(progress: Mapping[str, str]) -> dict[str, Any]:
    """The job summary from its progress hash: per-pass table, the pass selected by
    validation NE and its test NE (the same rule as the trainer's results.json, see
    :func:`trainer.report.summarize_passes`), oracle NE, throughput."""
    passes = []
    for k, v in progress.items():
        if k.startswith("pass:"):
            try:
                passes.append(json.loads(v))
            except ValueError:
                continue
    passes.sort(key=lambda p: p.get("pass", 0))
    out = summarize_passes(passes)
    eps = progress.get("last_examples_per_s")
    if eps:  # the latest train window is fresher than the last finished pass
        out["last_examples_per_s"] = float(eps)
    wall = progress.get("wall_split")
    if wall:  # a finished run's wall split (results.json)
        with contextlib.suppress(ValueError):
            out["wall_split"] = json.loads(wall)
    return out


class JobEvents:
    """A job's event stream and progress hash, over the job store's Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    async def read(self, job_id: str, after: str | None, limit: int) -> list[tuple[str, dict]]:
        """A job's events after stream id ``after`` (:func:`services.metrics_bus.read_events`)."""
        return await read_events(self.r, job_id, after, limit)

    async def read_raw(self, job_id: str, after: str | None, limit: int) -> list[tuple[str, str]]:
        """Like :meth:`read`, each as its stored JSON text."""
        return await read_events_raw(self.r, job_id, after, limit)

    async def record_progress(self, job_id: str, mapping: Mapping[str, str]) -> None:
        """Write per-pass progress fields (``HSET`` of the job's progress hash)."""
        await self.r.hset(keys.progress_key(job_id), mapping=redis_fields(mapping))

    async def summary(self, job_id: str) -> dict[str, Any]:
        return summarize_progress(text_hash(await self.r.hgetall(keys.progress_key(job_id))))

    async def summaries(self, job_ids: list[str]) -> list[dict[str, Any]]:
        async with self.r.pipeline(transaction=False) as pipe:
            for i in job_ids:
                pipe.hgetall(keys.progress_key(i))
            return [summarize_progress(p) for p in await pipe.execute()]

    async def split_failure(self, job_id: str, raw: str | None) -> tuple[str, str | None]:
        """``(error, error_log)`` of a failed job (:func:`services.failure.split_failure`)."""
        return await split_failure(self.r, job_id, raw)

    # a stream ticket lets an EventSource client, which cannot send a token, follow one
    # job's or study's stream for a while (api/deps.py)

    async def put_stream_ticket(self, ticket: str, value: str, ttl_s: int) -> None:
        await self.r.set(keys.stream_ticket_key(ticket), value, ex=ttl_s)

    async def stream_ticket(self, ticket: str) -> str:
        """What :meth:`put_stream_ticket` stored under ``ticket`` ("" when none or expired)."""
        return text(await self.r.get(keys.stream_ticket_key(ticket)) or "")
