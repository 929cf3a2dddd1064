"""FastAPI dependencies, as ``Annotated`` aliases: settings, store, launcher, the caller."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.jobs import JobStore
from services.launcher import JobLauncher
from services.settings import Settings

bearer = HTTPBearer(auto_error=False, description="an API token from RECTRAIN_API_TOKENS")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_launcher(request: Request) -> JobLauncher:
    return request.app.state.launcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
LauncherDep = Annotated[JobLauncher, Depends(get_launcher)]


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


def current_owner_sse(
    settings: SettingsDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    token: Annotated[
        str | None,
        Query(description="API token, for EventSource clients that cannot send an Authorization header"),
    ] = None,
) -> str:
    """Like :func:`current_owner`, also accepting ``?token=`` (browsers' EventSource)."""
    return _owner_of(settings, creds.credentials if creds else token)


CurrentOwner = Annotated[str, Depends(current_owner)]
CurrentOwnerSSE = Annotated[str, Depends(current_owner_sse)]
