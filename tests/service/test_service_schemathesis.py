"""Property-based fuzzing of every operation in the OpenAPI document: no input may
produce a 5xx. Bounded example counts keep it to seconds."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svc_fakes import FakeCluster  # noqa: E402

from service.app import create_app  # noqa: E402
from service.auth import issue_token  # noqa: E402
from service.settings import Settings  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="alto-schemathesis-")
ADMIN = "alto_schemathesis_admin"
app = create_app(
    Settings(data_dir=Path(_DIR), admin_token=ADMIN, public_url="http://127.0.0.1:9"),
    backend=FakeCluster(nodes=[{"CPU": 4.0}]),
    start_scheduler=False,
)
USER = issue_token(app.state.svc.factory, "fuzzer")
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
@pytest.mark.timeout(300)
def test_no_server_errors(case):
    # a user token everywhere; on the ingestion route it is the wrong kind (401 expected)
    token = USER
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
    )
