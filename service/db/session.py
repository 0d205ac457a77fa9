"""Engine and session creation for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

API_THREADS = 40  # AnyIO's default limit on threads running sync endpoints
DEFAULT_POOL_SIZE = API_THREADS + 8  # plus the scheduler, SSE snapshots and some slack
SQLITE_MMAP_BYTES = 1 << 30  # address space, not memory: the pages are the OS's cache


def make_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine tuned per backend: SQLite gets WAL and a busy timeout so the API's
    threads and the scheduler can write concurrently. Both keep `pool_size` connections
    open: a pool smaller than the API's thread pool makes busy moments open and close a
    connection per request (with SQLite's pragmas, about 1 ms of GIL-held work each)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size // 2,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # read the database file through a memory map (shared by every connection in
            # the OS page cache) instead of a read() call per page not in the connection's
            # 2 MB cache: a history's scattered rollup rows cost half as much
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cur.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size // 2, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (we serialize after commit)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session committed on success and rolled back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
