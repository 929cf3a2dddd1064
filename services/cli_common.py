"""What the CLI's client commands share (services/cli.py, services/study_cli.py): an
HTTP client for the API at ``RECTRAIN_API_URL`` with ``RECTRAIN_TOKEN``, the API's
errors as one line, and how a client command ends when the API is away."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from services.settings import ClientSettings


def api_client():
    """An ``httpx.Client`` for the API (base URL and bearer token from ClientSettings)."""
    import httpx

    c = ClientSettings()
    return httpx.Client(
        base_url=c.api_url.rstrip("/"), headers={"Authorization": f"Bearer {c.token}"}, timeout=30
    )


class ApiError(Exception):
    """The API answered 4xx/5xx; the message is the status and its detail."""


def check_response(r) -> Any:
    """The JSON body of a successful response (None if empty); :class:`ApiError` otherwise."""
    if r.status_code < 400:
        return r.json() if r.content else None
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = r.text
    if isinstance(detail, list):  # validation errors: one line each, field path first
        lines = []
        for d in detail:
            loc = [str(p) for p in d.get("loc", []) if p not in ("body",)]
            if loc[:1] == ["spec"]:
                loc = loc[1:]
            lines.append(f"  {'.'.join(loc) or 'body'}: {d.get('msg')}")
        detail = "invalid job:\n" + "\n".join(lines)
    raise ApiError(f"{r.status_code}: {detail}")


def run_client(fn: Callable[[], int]) -> int:
    """Run a client command: an API error or an unreachable API is one line and exit 1."""
    import httpx

    try:
        return fn()
    except ApiError as e:
        print(f"rectrain: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:
        url = ClientSettings().api_url
        print(f"rectrain: cannot reach the API at {url} ({e}); is `rectrain serve` running?", file=sys.stderr)
        return 1


def format_ts(iso: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SS``."""
    return (iso or "")[:19].replace("T", " ")
