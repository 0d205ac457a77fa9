"""Prometheus metrics of the service: jobs by status, queue length, request latencies,
and the scheduler's passes and lost compare-and-set writes.

Each app gets its own registry, so several apps (tests, embedded use) never collide.
Job counts are read from the database at scrape time, so they are right after restarts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from alto_client.models import JobStatus
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db.tables import JobRow
from service.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _JobsCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._factory() as s:
            counts = dict(
                s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
            )
        jobs = GaugeMetricFamily("alto_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], float(counts.get(status.value, 0)))
        yield jobs
        queue = GaugeMetricFamily("alto_queue_length", "Jobs waiting to run (PENDING or QUEUED)")
        queue.add_metric(
            [],
            float(counts.get(JobStatus.PENDING.value, 0) + counts.get(JobStatus.QUEUED.value, 0)),
        )
        yield queue


class _SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[CounterMetricFamily | SummaryMetricFamily]:
        stats = self._scheduler.stats
        passes = SummaryMetricFamily(
            "alto_scheduler_pass_seconds", "Scheduler passes (reconcile with Ray, then admit)"
        )
        passes.add_metric([], count_value=stats.passes, sum_value=stats.pass_seconds)
        yield passes
        yield CounterMetricFamily(
            "alto_scheduler_failed_passes",
            "Scheduler passes cut short because the Ray cluster did not answer",
            value=stats.failed_passes,
        )
        yield CounterMetricFamily(
            "alto_scheduler_stale_writes",
            "Status writes that lost to a concurrent change (e.g. a cancel) and were "
            "decided again on the next pass",
            value=stats.stale_writes,
        )


class ServiceMetrics:
    """The registry and instruments of one app."""

    def __init__(self, factory: sessionmaker[Session], scheduler: Scheduler | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "alto_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.points = Counter(
            "alto_metric_points_ingested", "Metric points stored", registry=self.registry
        )
        self.registry.register(_JobsCollector(factory))
        if scheduler is not None:
            self.registry.register(_SchedulerCollector(scheduler))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """Wrap `app` so every HTTP request is timed under its route template (never the
        raw path, which would make label values unbounded)."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.requests.labels(scope["method"], template, str(status)).observe(
                    time.perf_counter() - start
                )

        return timed
