"""Metrics: a JSONL log in the run directory, and a reporter that ships it to the service.

The JSONL file is the durable record and also the reporter's spool: the reporter
thread sends lines from a byte offset that it persists (``report.offset``) only
after the service answered 2xx.  So a service that is down or restarting loses
nothing (the lines wait in the file and are retried with backoff), a killed worker
loses nothing (the next one resumes from the offset), and training never waits
on the network except for a bounded final flush.  The service is idempotent by
(job, step, name), so re-sending after a resume is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from alto_client.metrics import MetricBatch, MetricPoint
from alto_client.spec import ReportSpec

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
OFFSET_FILE = "report.offset"


class MetricLog:
    """Append-only JSONL of metric points, one line per point, flushed per step."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop points of steps > ``step``: a resumed run re-logs them, so none is doubled."""
        if not self.path.exists():
            return
        keep = [line for line in self._lines() if json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)
        offset_path = self.path.parent / OFFSET_FILE
        size = self.path.stat().st_size
        if offset_path.exists() and int(offset_path.read_text() or 0) > size:
            offset_path.write_text(str(size))

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line.strip()]

    def write(self, points: Iterable[MetricPoint]) -> None:
        with self.path.open("a") as stream:
            for p in points:
                stream.write(p.model_dump_json() + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def read(self) -> list[MetricPoint]:
        if not self.path.exists():
            return []
        return [MetricPoint.model_validate_json(line) for line in self._lines()]


def points_at(step: int, values: dict[str, float], now: float | None = None) -> list[MetricPoint]:
    """Metric points for one step, skipping metrics that were not measured (None)."""
    t = time.time() if now is None else now
    return [
        MetricPoint(step=step, name=name, value=float(value), time=t)
        for name, value in values.items()
        if value is not None
    ]


class ServiceReporter:
    """Background thread that posts the JSONL's new lines to the service in batches."""

    def __init__(
        self,
        report: ReportSpec,
        run_dir: Path,
        *,
        batch_size: int = 500,
        poll_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.report = report
        self.metrics_path = Path(run_dir) / METRICS_FILE
        self.offset_path = Path(run_dir) / OFFSET_FILE
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.url = f"{report.url}/v1/jobs/{report.job_id}/metrics"
        self.sent_points = 0
        self.failures = 0
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alto-metrics-reporter", daemon=True)

    def start(self) -> ServiceReporter:
        self._thread.start()
        return self

    def poke(self) -> None:
        """New lines were written: send soon instead of waiting for the next poll."""
        self._wake.set()

    def close(self, deadline_s: float = 30.0) -> bool:
        """Stop after one last drain, bounded by ``deadline_s``; True if all lines were sent."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=deadline_s)
        if self._thread.is_alive():  # the service is still unreachable: leave it to a resume
            self._abandon.set()
            self._wake.set()
        return self.pending_bytes() == 0

    def acked_offset(self) -> int:
        """Bytes of the spool the service has acknowledged."""
        return self._offset()

    def pending_bytes(self) -> int:
        size = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        return max(0, size - self._offset())

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def _save_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self.offset_path)

    def _read_batch(self) -> tuple[list[dict], int]:
        """Up to batch_size complete lines after the saved offset, and the offset past them."""
        offset = self._offset()
        if not self.metrics_path.exists():
            return [], offset
        with self.metrics_path.open("rb") as stream:
            stream.seek(offset)
            points, end = [], offset
            for raw in stream:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                end += len(raw)
                if raw.strip():
                    points.append(json.loads(raw))
                if len(points) >= self.batch_size:
                    break
        return points, end

    def _post(self, client, points: list[dict]) -> bool:
        body = MetricBatch(points=[MetricPoint.model_validate(p) for p in points])
        try:
            response = client.post(
                self.url,
                content=body.model_dump_json(),
                headers={
                    "Authorization": f"Bearer {self.report.token}",
                    "Content-Type": "application/json",
                },
            )
        except Exception as exc:  # network errors of any kind: retry later
            log.warning("metrics post to %s failed: %s", self.url, exc)
            return False
        if 200 <= response.status_code < 300:
            return True
        log.warning(
            "metrics post to %s answered %s: %s",
            self.url,
            response.status_code,
            response.text[:200],
        )
        return False

    def _run(self) -> None:
        import httpx

        backoff = 0.5
        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                points, end = self._read_batch()
                if points:
                    if self._post(client, points):
                        self._save_offset(end)
                        self.sent_points += len(points)
                        backoff = 0.5
                        continue  # more may be waiting
                    self.failures += 1
                    if self._abandon.is_set():
                        return
                    wait = backoff
                    backoff = min(self.max_backoff_s, backoff * 2)
                elif end > self._offset():  # only blank lines
                    self._save_offset(end)
                    continue
                else:
                    if self._stop.is_set():
                        return
                    wait = self.poll_s
                self._wake.wait(wait)
                self._wake.clear()
