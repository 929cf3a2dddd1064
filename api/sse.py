"""Server-Sent Events as the job and study event streams write them: the framing, the
reconnect delay, the error event and the streaming response that frees its stream slot."""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from services.stream_hub import StreamSlot

# how long a client waits before reconnecting: the ``retry:`` field every stream opens
# with, and the ``retry_ms`` of its ``stream_error`` event
RETRY_MS = 3000

OPEN = f"retry: {RETRY_MS}\n\n"
KEEPALIVE = ": keepalive\n\n"


def event(name: str, data: Any, event_id: str | None = None) -> str:
    """One message: optional ``id``, ``event`` and compact JSON ``data``."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def redis_error() -> str:
    """The ``stream_error`` a stream ends with when Redis is unavailable: reconnect after
    ``retry_ms``."""
    return event("stream_error", {"detail": "Redis unavailable", "retry_ms": RETRY_MS})


def response(events: AsyncIterator[str], slot: StreamSlot) -> StreamingResponse:
    """``events`` as a ``text/event-stream`` response; ``slot`` is freed when the stream
    ends (the generator's ``finally``) or, for a response never started, when the
    generator is collected."""
    weakref.finalize(events, slot.release)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
