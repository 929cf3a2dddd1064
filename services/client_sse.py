"""Server-Sent Events as the Python client (services/client.py) reads them: the stream's
messages parsed (:func:`parse_sse`) and a stream followed to its ``end`` event,
reconnecting after the last id received when the connection is lost
(:func:`read_events`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx

from services.client_models import ApiUnreachable, Event, raise_for_status


def read_events(
    http: httpx.Client,
    url: str,
    path: str,
    after: str | None,
    reconnect_for_s: float,
    on_reconnect: Callable[[Exception], None] | None,
) -> Iterator[Event]:
    """The messages of an event stream (after stream id ``after``) until its ``end``
    event; reconnects, resuming after the last id received, when the connection is
    lost or the server says ``stream_error``."""
    down_since: float | None = None
    last = after
    while True:
        headers = {"Accept": "text/event-stream"}
        if last:
            headers["Last-Event-ID"] = last
        retry_s = 1.0
        try:
            with http.stream("GET", path, headers=headers, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for_status(r)
                down_since = None
                for ev in parse_sse(r.iter_lines()):
                    if ev.type == "end":
                        return
                    if ev.type == "stream_error":  # the server cannot go on: resume later
                        retry_s = float(ev.data.get("retry_ms", 1000)) / 1000
                        raise httpx.RemoteProtocolError(str(ev.data.get("detail", "stream error")))
                    last = ev.id or last
                    yield ev
            raise httpx.RemoteProtocolError("the stream closed before its end")
        except httpx.TransportError as e:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > reconnect_for_s:
                raise ApiUnreachable(url, e) from e
            if on_reconnect is not None:
                on_reconnect(e)
            time.sleep(retry_s)


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """An event stream's lines as its messages (comments, the keep-alives, skipped)."""
    event, data, eid = None, None, None
    for line in lines:
        if line == "":
            if data is not None:
                yield Event(type=event or "message", data=json.loads(data), id=eid)
            event, data, eid = None, None, None
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip() if data is None else data + "\n" + line[5:].strip()
        elif line.startswith("id:"):
            eid = line[3:].strip()
