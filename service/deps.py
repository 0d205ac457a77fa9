"""Request dependencies: the caller's identity and the database session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import ApiError
from service.guard import PRINCIPAL_KEY, UNAUTHORIZED_HEADERS
from service.state import ServiceState, get_state

bearer = HTTPBearer(auto_error=False, description="An API token from `alto token create`")


def bearer_token(request: Request) -> str:
    """The token of an `Authorization: Bearer` header, or a 401 naming what is missing."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>' "
            "(an API token from `alto token create`)",
            headers=UNAUTHORIZED_HEADERS,
        )
    return token.strip()


async def current_principal(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from a valid API token; 401 otherwise.

    Async on purpose: FastAPI runs sync dependencies in its thread pool, and a thread
    hop per dependency cost more than the (cached) token lookup itself.
    """
    checked = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if checked is not None:  # found by AuthBeforeBody before the body was read
        return checked
    token = bearer_token(request)
    principal = request.app.state.svc.tokens.get(token)
    if principal is None:
        raise ApiError(401, "invalid or revoked API token", headers=UNAUTHORIZED_HEADERS)
    return principal


async def db_session(request: Request) -> AsyncIterator[Session]:
    """A session for one request; the handler commits what it changes. (Creating and
    closing a session does no I/O, so this runs on the event loop, not in a thread.)"""
    session = request.app.state.svc.factory()
    try:
        yield session
    finally:
        session.close()


PrincipalDep = Annotated[Principal, Depends(current_principal)]
SessionDep = Annotated[Session, Depends(db_session)]
StateDep = Annotated[ServiceState, Depends(get_state)]

# query parameters shared by the listing endpoints
OwnerQuery = Annotated[
    str | None,
    Query(max_length=200, pattern=r"^[^\x00-\x1f]+$", description="only this owner's (admins)"),
]
LimitQuery = Annotated[int, Query(ge=1, le=500, description="page size")]
CursorQuery = Annotated[
    str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the last page")
]


def listed_owner(principal: Principal, asked: str | None) -> tuple[bool, str | None]:
    """(anything visible, owner to filter on) for a listing that asked for `asked`'s
    items: admins see anyone's (everyone's when None), users only their own."""
    if principal.admin:
        return True, asked
    if asked is not None and asked != principal.owner:
        return False, None
    return True, principal.owner
