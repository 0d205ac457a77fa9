"""The dashboard tests share the client tests' live service (real app, simulated cluster)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))

from livesvc import LiveService, live_service


@pytest.fixture(scope="session")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("alto-dash-svc")) as service:
        yield service
