"""FastAPI dependencies, as ``Annotated`` aliases: settings, job and study stores, launcher,
the caller; stream tickets and slots of the event-stream routes."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.models import StreamTicket
from services.jobs import JobStore
from services.launcher import JobLauncher
from services.settings import Settings
from services.stream_hub import StreamLimit, StreamSlot
from services.studies import StudyStore

bearer = HTTPBearer(auto_error=False, description="an API token from RECTRAIN_API_TOKENS")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_launcher(request: Request) -> JobLauncher:
    return request.app.state.launcher


def get_studies(request: Request) -> StudyStore:
    return request.app.state.studies


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
LauncherDep = Annotated[JobLauncher, Depends(get_launcher)]
StudiesDep = Annotated[StudyStore, Depends(get_studies)]


def _owner_of(settings: Settings, token: str | None) -> str:
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Not authenticated", headers={"WWW-Authenticate": "Bearer"}
        )
    owner = None
    for known, who in settings.tokens.items():  # constant time per token
        if hmac.compare_digest(known.encode(), token.encode()):
            owner = who
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return owner


def current_owner(
    settings: SettingsDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The owner name of the bearer token (401 without a valid one)."""
    return _owner_of(settings, creds.credentials if creds else None)


def _stream_subject(request: Request) -> str:
    """What an event-stream route streams: ``job:<id>`` or ``study:<id>``."""
    for kind in ("job", "study"):
        value = request.path_params.get(f"{kind}_id")
        if value is not None:
            return f"{kind}:{value}"
    return ""


def acquire_stream_slot(request: Request, owner: str) -> StreamSlot:
    """One of the capped event-stream slots (per owner and in total; job and study
    streams count alike), or 429 with Retry-After."""
    try:
        return request.app.state.stream_hub.acquire(owner)
    except StreamLimit as e:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, e.message, headers={"Retry-After": "5"}
        ) from None


async def issue_stream_ticket(store: JobStore, settings: Settings, owner: str, subject: str) -> StreamTicket:
    """A random ticket, valid ``stream_ticket_ttl_s`` for ``owner`` on ``subject``
    (``job:<id>`` or ``study:<id>``) only."""
    ticket = secrets.token_hex(24)
    await store.events.put_stream_ticket(ticket, f"{owner} {subject}", settings.stream_ticket_ttl_s)
    return StreamTicket(ticket=ticket, expires_in=settings.stream_ticket_ttl_s)


async def current_owner_sse(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ticket: Annotated[
        str | None,
        Query(
            max_length=128,
            description=(
                "a stream ticket from POST .../stream-ticket, for EventSource clients that cannot "
                "send an Authorization header (API tokens are never accepted in the URL)"
            ),
        ),
    ] = None,
) -> str:
    """The owner of the bearer token, or of a short-lived stream ticket for this stream."""
    if creds is not None or not ticket:
        return _owner_of(settings, creds.credentials if creds else None)
    value = await store.events.stream_ticket(ticket) if ticket.isalnum() else ""
    owner, _, subject = value.partition(" ")
    if not value or not hmac.compare_digest(subject.encode(), _stream_subject(request).encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Invalid or expired stream ticket",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return owner


CurrentOwner = Annotated[str, Depends(current_owner)]
CurrentOwnerSSE = Annotated[str, Depends(current_owner_sse)]
