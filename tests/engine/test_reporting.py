"""Metric log and the service reporter against a real local HTTP server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.spec import ReportSpec
from fake_service import FakeService

from engine.reporting import MetricLog, ServiceReporter, points_at


@pytest.fixture
def service():
    s = FakeService()
    yield s
    s.close()


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_truncate_after_drops_later_steps(tmp_path: Path) -> None:
    log = MetricLog(tmp_path)
    for step in range(1, 6):
        log.write(points_at(step, {TRAIN_LOSS: 5.0 - step, VAL_LOSS: None}))
    log.truncate_after(3)
    assert [p.step for p in log.read()] == [1, 2, 3]
    assert all(p.name == TRAIN_LOSS for p in log.read())  # None means not measured


def test_reporter_posts_batches_with_token(tmp_path: Path, service: FakeService) -> None:
    log = MetricLog(tmp_path)
    report = ReportSpec(url=service.url, job_id="job-7", token="tok")
    reporter = ServiceReporter(report, tmp_path, batch_size=3, poll_s=0.05).start()
    for step in range(1, 8):
        log.write(points_at(step, {TRAIN_LOSS: float(step)}))
        reporter.poke()
    assert reporter.close(deadline_s=10)
    assert service.points == {(s, TRAIN_LOSS): float(s) for s in range(1, 8)}
    assert service.posts >= 3  # batches of at most 3
    assert set(service.auth) == {"Bearer tok"}


def test_nothing_lost_while_service_is_down(tmp_path: Path, service: FakeService) -> None:
    log = MetricLog(tmp_path)
    report = ReportSpec(url=service.url, job_id="job-7", token="tok")
    service.down = True
    reporter = ServiceReporter(report, tmp_path, poll_s=0.05, max_backoff_s=0.2).start()
    log.write(points_at(1, {TRAIN_LOSS: 1.0}))
    reporter.poke()
    assert _wait(lambda: reporter.failures >= 2)
    assert not service.points
    log.write(points_at(2, {TRAIN_LOSS: 2.0}))
    service.down = False
    assert _wait(lambda: len(service.points) == 2)
    assert reporter.close(deadline_s=5)


def test_a_new_reporter_resumes_from_the_saved_offset(tmp_path: Path, service: FakeService) -> None:
    """A restarted worker neither loses nor needlessly re-sends acknowledged points."""
    log = MetricLog(tmp_path)
    report = ReportSpec(url=service.url, job_id="job-7", token="tok")
    log.write(points_at(1, {TRAIN_LOSS: 1.0}))
    first = ServiceReporter(report, tmp_path, poll_s=0.05).start()
    assert first.close(deadline_s=5)
    posts = service.posts
    log.write(points_at(2, {TRAIN_LOSS: 2.0}))
    second = ServiceReporter(report, tmp_path, poll_s=0.05).start()
    assert second.close(deadline_s=5)
    assert second.sent_points == 1 and service.posts == posts + 1
    assert set(service.points) == {(1, TRAIN_LOSS), (2, TRAIN_LOSS)}


def test_close_gives_up_after_its_deadline(tmp_path: Path, service: FakeService) -> None:
    log = MetricLog(tmp_path)
    service.down = True
    report = ReportSpec(url=service.url, job_id="job-7", token="tok")
    reporter = ServiceReporter(report, tmp_path, poll_s=0.05, max_backoff_s=0.1).start()
    log.write(points_at(1, {TRAIN_LOSS: 1.0}))
    start = time.monotonic()
    assert reporter.close(deadline_s=0.5) is False
    assert time.monotonic() - start < 3
    assert reporter.pending_bytes() > 0
