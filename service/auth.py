"""Bearer API tokens: creation, hashing and the request dependency.

Tokens are long random strings; only their SHA-256 is stored, so a database leak does
not leak usable tokens. A random 256-bit token needs no slow password hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.db.tables import ApiToken, JobRow
from service.repo import TERMINAL
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


HINT_CHARS = 6


def token_hint(token: str) -> str:
    """The last characters of a token: enough to tell tokens apart in a listing, far too
    few to guess the rest (a token holds 256 random bits)."""
    return "..." + token[-HINT_CHARS:]


def store_token(factory: sessionmaker[Session], token: str, owner: str, admin: bool) -> None:
    """Store `token` (hashed) for `owner`; storing an existing token updates its owner/role."""
    validate_owner(owner)
    digest = hash_token(token)
    with session_scope(factory) as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
        if row is None:
            s.add(ApiToken(token_hash=digest, owner=owner, admin=admin, hint=token_hint(token)))
        else:
            row.owner, row.admin, row.revoked = owner, admin, False
            row.hint = token_hint(token)


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


@dataclass(frozen=True)
class TokenInfo:
    """What a listing shows of a token: never the token, only its last characters."""

    id: int
    owner: str
    admin: bool
    created_at: datetime
    revoked: bool
    hint: str | None


def list_tokens(factory: sessionmaker[Session], owner: str | None = None) -> list[TokenInfo]:
    """Every token (or `owner`'s), oldest first."""
    q = select(ApiToken).order_by(ApiToken.id)
    if owner is not None:
        q = q.where(ApiToken.owner == owner)
    with factory() as s:
        return [
            TokenInfo(t.id, t.owner, t.admin, t.created_at, t.revoked, t.hint) for t in s.scalars(q)
        ]


def revoke_tokens(
    factory: sessionmaker[Session], *, token_id: int | None = None, owner: str | None = None
) -> int:
    """Revoke one token (by id) or every token of `owner`; the number revoked. Services
    stop accepting a revoked token within their token cache's lifetime (5 s)."""
    if (token_id is None) == (owner is None):
        raise ValueError("revoke one token by id, or every token of one owner")
    stmt = update(ApiToken).where(ApiToken.revoked.is_(False)).values(revoked=True)
    stmt = stmt.where(ApiToken.id == token_id) if token_id is not None else stmt
    stmt = stmt.where(ApiToken.owner == owner) if owner is not None else stmt
    with session_scope(factory) as s:
        return int(s.execute(stmt).rowcount)


@contextmanager
def token_store(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory on the database `settings` points at, migrated first, so the
    token commands work on a fresh data directory before the service ever started."""
    from service.db.migrate import upgrade
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url())
    try:
        upgrade(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def create_token(settings: Settings, owner: str, admin: bool = False) -> str:
    """Make a token in the database `settings` points at (what `alto token create` calls)."""
    with token_store(settings) as factory:
        return issue_token(factory, owner, admin)


ADMIN_TOKEN_FILE = "admin-token"


def serve_admin_token(settings: Settings) -> str:
    """The admin token `alto serve` prints: ALTO_ADMIN_TOKEN when set; else the one kept
    in the data directory (file mode 0600) from an earlier start, while it is valid; else
    a new one, kept there. So restarts reuse one admin token instead of minting a new,
    unrevocable one each time."""
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.data_dir) / ADMIN_TOKEN_FILE
    with token_store(settings) as factory:
        try:
            kept = path.read_text().strip()
        except OSError:
            kept = ""
        if kept:
            principal = lookup_token(factory, kept)
            if principal is not None and principal.admin:
                return kept
        token = issue_token(factory, ADMIN_OWNER, admin=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)
    return token


INGEST_TOKEN_RULE = "a job's token is valid only while it runs"


def ingest_job_seq(factory: sessionmaker[Session], job_id: str, token: str) -> int | None:
    """The job `token` may post metrics to: `job_id`'s seq while the job is launched and
    not ended, else None. The token is cleared when the job ends, so an ended job's
    results are final whoever read the token from the job's environment."""
    with factory() as s:
        row = s.execute(
            select(JobRow.seq, JobRow.status, JobRow.ingest_token_hash).where(JobRow.id == job_id)
        ).one_or_none()
    if row is None or row.status in TERMINAL or row.ingest_token_hash is None:
        return None
    return row.seq if hmac.compare_digest(hash_token(token), row.ingest_token_hash) else None
