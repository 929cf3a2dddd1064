"""The metrics bus: the trainer's writer into a job's Redis Stream, and the API's readers.

The writer half (:class:`RedisStreamSink`, idempotent batched XADDs from the trainer's
rank-0 process) lives in :mod:`trainer.metrics.redis_sink`, since the trainer never
imports services/, and is re-exported here.

Readers (async, API side): :func:`read_events` (cursor poll) and :func:`wait_events`
(blocking, for SSE).
"""

from __future__ import annotations

import json

from services import keys
from trainer.metrics.redis_sink import (  # noqa: F401  (re-exported: the writer half)
    BATCH_MAX_EVENTS,
    BUFFER_MAX_EVENTS,
    CLOSE_TIMEOUT_S,
    RedisStreamSink,
    add_events_once,
    decode_entry,
    event_key,
    progress_from_results,
    progress_updates,
    replay_events_file,
    stream_fields,
)

# -------------------------------------------------------------------- readers (API side)


def _exclusive_start(after: str | None) -> str:
    if not after or after in ("0", "0-0"):
        return "-"
    return "(" + after


async def read_events(r, job_id: str, after: str | None = None, limit: int = 100) -> list[tuple[str, dict]]:
    """Events after stream id ``after`` (exclusive), oldest first, at most ``limit``."""
    entries = await r.xrange(
        keys.events_stream_key(job_id), min=_exclusive_start(after), max="+", count=limit
    )
    return [(eid, decode_entry(f)) for eid, f in entries]


async def read_events_raw(
    r, job_id: str, after: str | None = None, limit: int = 100
) -> list[tuple[str, str]]:
    """Like :func:`read_events` but each event as its stored JSON text (no decode)."""
    entries = await r.xrange(
        keys.events_stream_key(job_id), min=_exclusive_start(after), max="+", count=limit
    )
    return [(eid, f.get("data") or json.dumps({"type": f.get("type", "unknown")})) for eid, f in entries]


async def wait_events(r, job_id: str, after: str, block_ms: int, count: int = 500) -> list[tuple[str, dict]]:
    """Like :func:`read_events` but waits up to ``block_ms`` for the first new event."""
    res = await r.xread({keys.events_stream_key(job_id): after or "0-0"}, count=count, block=block_ms)
    out: list[tuple[str, dict]] = []
    for _stream, entries in res or []:
        out.extend((eid, decode_entry(f)) for eid, f in entries)
    return out
