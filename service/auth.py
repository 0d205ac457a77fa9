"""Bearer API tokens: creation, hashing and the request dependency.

Tokens are long random strings; only their SHA-256 is stored, so a database leak does
not leak usable tokens. A random 256-bit token needs no slow password hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.db.tables import ApiToken
from service.settings import Settings

TOKEN_PREFIX = "alto_"
ADMIN_OWNER = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's owner, and whether it may see every owner's jobs."""

    owner: str
    admin: bool


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token, the form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def validate_owner(owner: str) -> str:
    """Owners are short printable names; they appear in URLs filters and logs."""
    if not owner or len(owner) > 200 or not owner.isprintable() or owner.strip() != owner:
        raise ValueError(
            f"owner must be 1-200 printable characters without surrounding spaces, got {owner!r}"
        )
    return owner


def store_token(factory: sessionmaker[Session], token: str, owner: str, admin: bool) -> None:
    """Store `token` (hashed) for `owner`; storing an existing token updates its owner/role."""
    validate_owner(owner)
    digest = hash_token(token)
    with session_scope(factory) as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
        if row is None:
            s.add(ApiToken(token_hash=digest, owner=owner, admin=admin))
        else:
            row.owner, row.admin, row.revoked = owner, admin, False


def issue_token(factory: sessionmaker[Session], owner: str, admin: bool = False) -> str:
    """Create, store and return a new token for `owner`."""
    token = new_token()
    store_token(factory, token, owner, admin)
    return token


def lookup_token(factory: sessionmaker[Session], token: str) -> Principal | None:
    """The principal a token belongs to, or None when it is unknown or revoked."""
    with factory() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if row is None or row.revoked:
            return None
        return Principal(owner=row.owner, admin=row.admin)


def create_token(settings: Settings, owner: str, admin: bool = False) -> str:
    """Make a token in the database `settings` points at (what `alto token create` calls).

    Runs the migrations first, so it works on a fresh data directory before the
    service ever started.
    """
    from service.db.migrate import upgrade
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url())
    try:
        upgrade(engine)
        return issue_token(make_session_factory(engine), owner, admin)
    finally:
        engine.dispose()
