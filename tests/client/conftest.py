"""One live service (real app, simulated cluster) shared by the client tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from livesvc import LiveService, live_service


@pytest.fixture(scope="session")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("alto-svc")) as service:
        yield service
