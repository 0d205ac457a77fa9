"""`alto demo` end to end, reduced: real service, real local Ray, real engine.

This is the product's main job as CI runs it (`--steps` shortens training);
it takes a few minutes on 2 cores, most of it Ray and Ray Train start-up.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("engine.run") is None, reason="the engine (engine.run) is not built"
)
def test_demo_runs_alto_against_adamw(tmp_path: Path) -> None:
    steps = os.environ.get("ALTO_DEMO_TEST_STEPS", "6")
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alto_client.cli",
            "demo",
            "--steps",
            steps,
            "--exit",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    out = proc.stdout + proc.stderr
    log = tmp_path / "service.log"
    assert proc.returncode == 0, (
        out + "\n--- service.log ---\n" + (log.read_text() if log.exists() else "")
    )
    assert re.search(r"alto\s+.*SUCCEEDED", out) and re.search(r"adamw \(baseline\)", out)
    alto_row = next(line for line in out.splitlines() if re.match(r"\W*alto\s", line))
    assert re.search(r"\d\.\d+", alto_row), alto_row  # a final validation loss, not "-"
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/comparisons/\w+#token=", out)
