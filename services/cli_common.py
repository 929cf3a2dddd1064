"""What the CLI's client commands share (services/cli.py, services/study_cli.py): the
API's Python client (services/client.py) at ``RECTRAIN_API_URL`` with
``RECTRAIN_TOKEN``, how a client command ends when the API answers an error or is away,
and timestamps as the tables print them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.client import Client


def api_client() -> Client:
    """The API's Python client (services/client.py) at RECTRAIN_API_URL with RECTRAIN_TOKEN."""
    from services.client import Client

    return Client()


def run_client(fn: Callable[[], int]) -> int:
    """Run a client command: an API error or an unreachable API is one line and exit 1."""
    from services.client import ApiError, ApiUnreachable

    try:
        return fn()
    except (ApiError, ApiUnreachable) as e:
        print(f"rectrain: {e}", file=sys.stderr)
        return 1


def format_ts(t: datetime | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` (empty when unset)."""
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else ""
