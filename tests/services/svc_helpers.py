"""Helpers for the services tests (a module with a unique name: both test dirs have a conftest)."""

from __future__ import annotations

import asyncio
import contextlib


@contextlib.asynccontextmanager
async def open_store(url: str):
    from services.jobs import JobStore
    from services.redis_conn import async_client

    r = async_client(url)
    try:
        yield JobStore(r)
    finally:
        await r.aclose()


def run(coro):
    return asyncio.run(coro)
