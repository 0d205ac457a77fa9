"""Typed sync and async clients for the ALTO service's /v1 API.

Both are thin transports over ``alto_client.core``, which builds every request
and reads every answer without doing I/O: a method here asks the core for a
``Call``, sends it (with httpx, retried by tenacity under the one
``RetryPolicy``), and returns what ``Call.result`` makes of the answer. So the
async client is the sync one with ``await``, not a second implementation.
Only idempotent calls are retried; a submission is made idempotent by an
``Idempotency-Key`` generated once per call and reused across its retries, so a
retry never makes two jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from alto_client import core
from alto_client.core import (
    DEFAULT_URL,
    ArmLike,
    Call,
    JobEvent,
    SpecLike,
    StudyLike,
    build_arms,
    load_spec,
    parse_arm,
    resolve_token,
    resolve_url,
)
from alto_client.errors import ConnectionFailed
from alto_client.models import (
    Comparison,
    ComparisonCurves,
    ComparisonInfo,
    ComparisonList,
    Job,
    JobList,
    JobStatus,
    MetricHistory,
)
from alto_client.retry import RetryPolicy
from alto_client.study import Study, StudyInfo, StudyList, StudyPlan

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "JobEvent",
    "build_arms",
    "load_spec",
    "parse_arm",
    "resolve_token",
    "resolve_url",
]

R = TypeVar("R")
T = TypeVar("T")


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class _Config:
    """What both clients are configured with (URL, token, timeout, retry policy)."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        *,
        timeout: float,
        retries: int,
        backoff: float,
    ) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.retry = RetryPolicy(attempts=retries, backoff=backoff)

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.url,
            "headers": core.default_headers(self.token),
            "timeout": self.timeout,
        }


class Client(_Config):
    """Blocking client. Use as a context manager, or call ``close()``.

    ``Client(url, token)``; both default to ``ALTO_URL`` / ``ALTO_TOKEN``.
    ``transport`` lets tests and embedders plug an ``httpx`` transport in.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.Client(**self._http_options(), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------

    def _retried(self, attempt: Callable[[], R], idempotent: bool) -> R:
        retrying = self.retry.retrying(idempotent=idempotent)
        try:
            return retrying(attempt)
        except httpx.TransportError as exc:
            tries = retrying.statistics.get("attempt_number", 1)
            raise ConnectionFailed(self.url, exc, tries) from exc

    def _send(self, call: Call[R]) -> R:
        def attempt() -> R:
            return call.result(self._http.request(call.method, call.path, **call.options))

        return self._retried(attempt, call.idempotent)

    def _items(self, pages: core.Pages[T]) -> Iterator[T]:
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._send(call))

    def _wait(self, call: Call[Any], what: str, timeout: float | None, poll: float) -> Any:
        waiter = core.Waiter(what, timeout, poll)
        current = self._send(call)
        while (pause := waiter.pause(current.status)) is not None:
            time.sleep(pause)
            current = self._send(call)
        return current

    def request(
        self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """A raw call on the API with the client's auth, retries and error mapping.

        ``idempotent=False`` disables retries (use it for a POST without an
        Idempotency-Key). Raises ``ApiError`` subclasses or ``ConnectionFailed``.
        """
        return self._send(core.raw(method, path, idempotent=idempotent, **kwargs))

    # -- jobs -----------------------------------------------------------------------

    def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        """Submit a job; returns it as stored (status PENDING or QUEUED)."""
        return self._send(core.submit_job(spec, idempotency_key))

    def job(self, job_id: str) -> Job:
        return self._send(core.get_job(job_id))

    def jobs_page(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        return self._send(core.list_jobs(status, tag, owner, limit, cursor))

    def jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetching pages as the caller iterates."""
        return self._items(
            core.Pages(lambda cursor: core.list_jobs(status, tag, owner, page_size, cursor), limit)
        )

    def cancel(self, job_id: str) -> Job:
        """Ask the service to stop a job; an ended job raises ``Conflict``."""
        return self._send(core.cancel_job(job_id))

    def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        """Delete an ended job and its metric history (``Conflict`` while it runs or
        when it belongs to a comparison). ``missing_ok``: a job already gone is fine,
        e.g. when a retry follows a delete whose answer was lost."""
        self._send(core.delete(f"/v1/jobs/{job_id}", missing_ok))

    def logs(self, job_id: str, *, tail_bytes: int | None = None) -> str:
        """The job's driver log (its last ``tail_bytes`` bytes); empty before launch."""
        return self._send(core.job_logs(job_id, tail_bytes))

    def metrics(
        self,
        job_id: str,
        names: Iterable[str] | str | None = None,
        *,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> MetricHistory:
        return self._send(core.job_metrics(job_id, names, since_step, max_points))

    def stream(self, job_id: str, *, reconnect: bool = True) -> Iterator[JobEvent]:
        """Live events of a job until the server ends the stream.

        A dropped connection is resumed with ``Last-Event-ID`` (so nothing is
        missed or repeated) until the job has ended or the retries run out; the
        retries start afresh with every event that arrives.
        """
        state = core.EventStream(job_id, self.timeout)
        with contextlib.ExitStack() as connection:
            events: Iterator[ServerSentEvent] | None = None

            def next_event() -> ServerSentEvent | None:
                nonlocal events
                try:
                    if events is None:
                        call = state.request()
                        source = connection.enter_context(
                            connect_sse(self._http, call.method, call.path, **call.options)
                        )
                        if source.response.status_code >= 400:
                            source.response.read()
                        call.result(source.response)
                        events = connection.enter_context(contextlib.closing(source.iter_sse()))
                    return next(events, None)
                except Exception as exc:
                    connection.close()
                    events = None
                    if state.ended and isinstance(exc, httpx.TransportError):
                        return None  # the job has ended: a dropped connection is the end
                    raise

            while (sse := self._retried(next_event, reconnect)) is not None:
                event = state.event(sse)
                if event is not None:
                    yield event

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Job:
        """Block until the job has ended; returns the final job (any end state)."""
        return self._wait(core.get_job(job_id), job_id, timeout, poll_interval)

    # -- comparisons ----------------------------------------------------------------

    def compare(
        self,
        spec: SpecLike,
        arms: Sequence[ArmLike] = ("alto", "adamw"),
        seeds: int | Sequence[int] = 1,
        *,
        baseline: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Comparison:
        """Start one job per arm and seed; the baseline defaults to ``adamw`` (else the first arm)."""
        return self._send(
            core.submit_comparison(spec, arms, seeds, baseline, name, idempotency_key)
        )

    def comparisons_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ComparisonList:
        return self._send(core.list_comparisons(owner, limit, cursor))

    def comparisons(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[ComparisonInfo]:
        """Every comparison the caller may see, newest first, page by page."""
        return self._items(
            core.Pages(lambda cursor: core.list_comparisons(owner, page_size, cursor), limit)
        )

    def delete_comparison(self, comparison_id: str, *, missing_ok: bool = False) -> None:
        """Delete a comparison whose jobs have all ended, with those jobs and metrics."""
        self._send(core.delete(f"/v1/comparisons/{comparison_id}", missing_ok))

    def comparison(self, comparison_id: str) -> Comparison:
        return self._send(core.get_comparison(comparison_id))

    def wait_comparison(
        self, comparison_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Comparison:
        """Block until every job of the comparison has ended."""
        call = core.get_comparison(comparison_id)
        return self._wait(call, comparison_id, timeout, poll_interval)

    def comparison_curves(
        self, comparison_id: str, *, max_points: int | None = None
    ) -> ComparisonCurves:
        """Per arm, the mean and the band mean +- std over seeds of its loss curves (the
        numbers the plot and the dashboard draw)."""
        return self._send(core.comparison_curves(comparison_id, max_points))

    def plot_png(self, comparison_id: str) -> bytes:
        """The comparison's loss/memory plot as PNG bytes."""
        return self._send(core.comparison_plot(comparison_id))

    def plot(self, comparison_id: str, path: str | Path) -> Path:
        """Save the comparison's loss/memory plot (PNG) to ``path``."""
        return _write_bytes(Path(path), self.plot_png(comparison_id))

    # -- studies --------------------------------------------------------------------

    def plan_study(self, study: StudyLike) -> StudyPlan:
        """What a study would run and cost on this service (nothing is stored)."""
        return self._send(core.plan_study(study))

    def study(self, study_id: str) -> Study:
        return self._send(core.get_study(study_id))

    def submit_study(self, study: StudyLike, *, idempotency_key: str | None = None) -> Study:
        """Start a study (a YAML/JSON file, a mapping or a `StudyRequest`); the answer
        carries its plan."""
        return self._send(core.submit_study(study, idempotency_key))

    def studies_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> StudyList:
        return self._send(core.list_studies(owner, limit, cursor))

    def studies(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[StudyInfo]:
        """Every study the caller may see, newest first, page by page."""
        return self._items(
            core.Pages(lambda cursor: core.list_studies(owner, page_size, cursor), limit)
        )

    def cancel_study(self, study_id: str) -> Study:
        """Cancel a study and every unfinished job of it."""
        return self._send(core.cancel_study(study_id))

    def delete_study(self, study_id: str, *, missing_ok: bool = False) -> None:
        """Delete an ended study with its jobs and their metrics."""
        self._send(core.delete(f"/v1/studies/{study_id}", missing_ok))

    def wait_study(
        self, study_id: str, *, timeout: float | None = None, poll_interval: float = 5.0
    ) -> Study:
        """Block until the study is done or cancelled."""
        return self._wait(core.get_study(study_id), study_id, timeout, poll_interval)

    def study_plot_png(self, study_id: str) -> bytes:
        return self._send(core.study_plot(study_id))

    def study_plot(self, study_id: str, path: str | Path) -> Path:
        """Save the study's plot (PNG) to ``path``."""
        return _write_bytes(Path(path), self.study_plot_png(study_id))

    # -- service --------------------------------------------------------------------

    def health(self) -> bool:
        """True when the service answers /healthz (one attempt, no retries)."""
        try:
            return self._send(core.health())
        except ConnectionFailed:
            return False


class AsyncClient(_Config):
    """The asyncio twin of ``Client``: same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout=timeout, retries=retries, backoff=backoff)
        self._http = httpx.AsyncClient(**self._http_options(), transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport ------------------------------------------------------------------

    async def _retried(self, attempt: Callable[[], Awaitable[R]], idempotent: bool) -> R:
        retrying = self.retry.async_retrying(idempotent=idempotent)
        try:
            return await retrying(attempt)
        except httpx.TransportError as exc:
            tries = retrying.statistics.get("attempt_number", 1)
            raise ConnectionFailed(self.url, exc, tries) from exc

    async def _send(self, call: Call[R]) -> R:
        async def attempt() -> R:
            return call.result(await self._http.request(call.method, call.path, **call.options))

        return await self._retried(attempt, call.idempotent)

    async def _items(self, pages: core.Pages[T]) -> AsyncIterator[T]:
        while (call := pages.next_call()) is not None:
            for item in pages.take(await self._send(call)):
                yield item

    async def _wait(self, call: Call[Any], what: str, timeout: float | None, poll: float) -> Any:
        waiter = core.Waiter(what, timeout, poll)
        current = await self._send(call)
        while (pause := waiter.pause(current.status)) is not None:
            await asyncio.sleep(pause)
            current = await self._send(call)
        return current

    async def request(
        self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any
    ) -> httpx.Response:
        return await self._send(core.raw(method, path, idempotent=idempotent, **kwargs))

    # -- jobs -----------------------------------------------------------------------

    async def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        return await self._send(core.submit_job(spec, idempotency_key))

    async def job(self, job_id: str) -> Job:
        return await self._send(core.get_job(job_id))

    async def jobs_page(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        return await self._send(core.list_jobs(status, tag, owner, limit, cursor))

    def jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        page_size: int = 50,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every job that matches, newest first, fetching pages as the caller iterates."""
        return self._items(
            core.Pages(lambda cursor: core.list_jobs(status, tag, owner, page_size, cursor), limit)
        )

    async def cancel(self, job_id: str) -> Job:
        return await self._send(core.cancel_job(job_id))

    async def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        await self._send(core.delete(f"/v1/jobs/{job_id}", missing_ok))

    async def logs(self, job_id: str, *, tail_bytes: int | None = None) -> str:
        return await self._send(core.job_logs(job_id, tail_bytes))

    async def metrics(
        self,
        job_id: str,
        names: Iterable[str] | str | None = None,
        *,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> MetricHistory:
        return await self._send(core.job_metrics(job_id, names, since_step, max_points))

    async def stream(self, job_id: str, *, reconnect: bool = True) -> AsyncIterator[JobEvent]:
        state = core.EventStream(job_id, self.timeout)
        async with contextlib.AsyncExitStack() as connection:
            events: AsyncIterator[ServerSentEvent] | None = None

            async def next_event() -> ServerSentEvent | None:
                nonlocal events
                try:
                    if events is None:
                        call = state.request()
                        source = await connection.enter_async_context(
                            aconnect_sse(self._http, call.method, call.path, **call.options)
                        )
                        if source.response.status_code >= 400:
                            await source.response.aread()
                        call.result(source.response)
                        events = await connection.enter_async_context(
                            contextlib.aclosing(source.aiter_sse())
                        )
                    return await anext(events, None)
                except Exception as exc:
                    await connection.aclose()
                    events = None
                    if state.ended and isinstance(exc, httpx.TransportError):
                        return None
                    raise

            while (sse := await self._retried(next_event, reconnect)) is not None:
                event = state.event(sse)
                if event is not None:
                    yield event

    async def wait(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Job:
        return await self._wait(core.get_job(job_id), job_id, timeout, poll_interval)

    # -- comparisons ----------------------------------------------------------------

    async def compare(
        self,
        spec: SpecLike,
        arms: Sequence[ArmLike] = ("alto", "adamw"),
        seeds: int | Sequence[int] = 1,
        *,
        baseline: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Comparison:
        return await self._send(
            core.submit_comparison(spec, arms, seeds, baseline, name, idempotency_key)
        )

    async def comparisons_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ComparisonList:
        return await self._send(core.list_comparisons(owner, limit, cursor))

    def comparisons(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> AsyncIterator[ComparisonInfo]:
        """Every comparison the caller may see, newest first, page by page."""
        return self._items(
            core.Pages(lambda cursor: core.list_comparisons(owner, page_size, cursor), limit)
        )

    async def delete_comparison(self, comparison_id: str, *, missing_ok: bool = False) -> None:
        await self._send(core.delete(f"/v1/comparisons/{comparison_id}", missing_ok))

    async def comparison(self, comparison_id: str) -> Comparison:
        return await self._send(core.get_comparison(comparison_id))

    async def wait_comparison(
        self, comparison_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Comparison:
        call = core.get_comparison(comparison_id)
        return await self._wait(call, comparison_id, timeout, poll_interval)

    async def comparison_curves(
        self, comparison_id: str, *, max_points: int | None = None
    ) -> ComparisonCurves:
        return await self._send(core.comparison_curves(comparison_id, max_points))

    async def plot_png(self, comparison_id: str) -> bytes:
        return await self._send(core.comparison_plot(comparison_id))

    async def plot(self, comparison_id: str, path: str | Path) -> Path:
        return _write_bytes(Path(path), await self.plot_png(comparison_id))

    # -- studies --------------------------------------------------------------------

    async def plan_study(self, study: StudyLike) -> StudyPlan:
        return await self._send(core.plan_study(study))

    async def study(self, study_id: str) -> Study:
        return await self._send(core.get_study(study_id))

    async def submit_study(self, study: StudyLike, *, idempotency_key: str | None = None) -> Study:
        return await self._send(core.submit_study(study, idempotency_key))

    async def studies_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> StudyList:
        return await self._send(core.list_studies(owner, limit, cursor))

    def studies(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> AsyncIterator[StudyInfo]:
        return self._items(
            core.Pages(lambda cursor: core.list_studies(owner, page_size, cursor), limit)
        )

    async def cancel_study(self, study_id: str) -> Study:
        return await self._send(core.cancel_study(study_id))

    async def delete_study(self, study_id: str, *, missing_ok: bool = False) -> None:
        await self._send(core.delete(f"/v1/studies/{study_id}", missing_ok))

    async def wait_study(
        self, study_id: str, *, timeout: float | None = None, poll_interval: float = 5.0
    ) -> Study:
        return await self._wait(core.get_study(study_id), study_id, timeout, poll_interval)

    async def study_plot_png(self, study_id: str) -> bytes:
        return await self._send(core.study_plot(study_id))

    async def study_plot(self, study_id: str, path: str | Path) -> Path:
        return _write_bytes(Path(path), await self.study_plot_png(study_id))

    async def health(self) -> bool:
        try:
            return await self._send(core.health())
        except ConnectionFailed:
            return False
