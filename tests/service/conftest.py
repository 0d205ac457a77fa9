"""Fixtures for service tests: the real app on SQLite (always) and PostgreSQL (when
ALTO_TEST_POSTGRES_URL is set), with an in-process cluster the tests drive."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from svc_fakes import FakeCluster

from service.app import create_app
from service.auth import issue_token
from service.settings import Settings

POSTGRES_URL = os.environ.get("ALTO_TEST_POSTGRES_URL")
ADMIN_TOKEN = "alto_test_admin_token_0123456789"

TABLES = (
    "metric_rollups",
    "metric_points",
    "job_tags",
    "jobs",
    "comparisons",
    "studies",
    "api_tokens",
)

BACKENDS = ["sqlite"]
if POSTGRES_URL:
    BACKENDS.append("postgresql")


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from service.db.migrate import MIGRATIONS_DIR

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def _reset_postgres(url: str) -> None:
    """Empty the test database; one left at another schema revision (a reused server,
    an interrupted run) is dropped whole, and the app migrates it from scratch."""
    engine = create_engine(url)
    with engine.begin() as conn:
        version = None
        if conn.execute(text("SELECT to_regclass('public.alembic_version')")).scalar():
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if version is not None and version != _head_revision():
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        elif conn.execute(text("SELECT to_regclass('public.jobs')")).scalar():
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@dataclass
class Svc:
    """One service under test: app, HTTP client, simulated cluster and tokens."""

    app: FastAPI
    client: TestClient
    cluster: FakeCluster
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]

    def tick(self, n: int = 1) -> None:
        """Run scheduler passes (the background loop is off in these tests)."""
        for _ in range(n):
            self.app.state.svc.scheduler.run_once()

    def ingest_token(self, job_id: str) -> str:
        return self.cluster.jobs[f"alto-{job_id}"].spec["report"]["token"]


def make_settings(backend: str, tmp_path: Path, **overrides: object) -> Settings:
    url = POSTGRES_URL if backend == "postgresql" else None
    if url:
        _reset_postgres(url)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        admin_token=ADMIN_TOKEN,
        public_url="http://127.0.0.1:9",
        **overrides,
    )


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    """make_settings for tests that build their own app; a fixture, because
    `from conftest import ...` resolves to whichever tests/*/conftest.py came first."""
    return make_settings


@pytest.fixture
def admin_token() -> str:
    return ADMIN_TOKEN


@pytest.fixture
def svc(db_backend: str, tmp_path: Path) -> Iterator[Svc]:
    cluster = FakeCluster(nodes=[{"CPU": 2.0}])
    app = create_app(make_settings(db_backend, tmp_path), backend=cluster, start_scheduler=False)
    factory = app.state.svc.factory
    alice = issue_token(factory, "alice")
    bob = issue_token(factory, "bob")
    with TestClient(app) as client:
        yield Svc(
            app=app,
            client=client,
            cluster=cluster,
            admin={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            alice={"Authorization": f"Bearer {alice}"},
            bob={"Authorization": f"Bearer {bob}"},
        )
