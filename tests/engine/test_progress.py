"""The driver's progress lines in a job's log (what `alto` and the service show)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.progress import MetricFollower, ProgressReporter


def test_the_last_step_is_printed_even_when_the_run_ends_between_two_polls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("")
    # the run ends well within the reporter's one-second polling period
    with (
        ProgressReporter(MetricFollower(log), total=12, title="t", tty=False),
        log.open("a") as f,
    ):
        for step in range(1, 13):
            point = {"step": step, "name": "train/loss", "value": 1.0, "time": 0.0}
            f.write(json.dumps(point) + "\n")
    out = capsys.readouterr().out
    assert "step 12/12" in out.splitlines()[-1]
