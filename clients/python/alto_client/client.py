"""Typed sync and async clients for the ALTO service's /v1 API.

Both clients share everything that is not I/O (URL and token resolution, how a
request is built, how answers become models or exceptions, the retry policy,
the SSE parser), so they behave the same and the async one is not a second
implementation to keep in step. Only idempotent calls are retried; a
submission is made idempotent by an ``Idempotency-Key`` header generated once
per call and reused across its retries, so a retry never makes two jobs.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from alto_client.errors import (
    ConnectionFailed,
    NotFound,
    WaitTimeout,
    describe_validation_error,
    error_from_response,
)
from alto_client.models import (
    TERMINAL_STATUSES,
    Arm,
    Comparison,
    ComparisonInfo,
    ComparisonList,
    ComparisonRequest,
    Job,
    JobList,
    JobStatus,
    MetricHistory,
)
from alto_client.retry import RetryPolicy
from alto_client.spec import JobSpec
from alto_client.sse import ServerSentEvent, SSEParser

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "JobEvent",
    "build_arms",
    "load_spec",
]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "alto-client/0.1"

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
OPTIMIZER_NAMES = ("alto", "adamw", "e")
SpecLike = JobSpec | Mapping[str, Any] | str | Path
ArmLike = Arm | Mapping[str, Any] | str


def resolve_url(url: str | None) -> str:
    """The service URL: the argument, else ``ALTO_URL``, else the embedded default."""
    value = (url or os.environ.get("ALTO_URL") or DEFAULT_URL).strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """The bearer token: the argument, else ``ALTO_TOKEN``, else none."""
    value = token if token is not None else os.environ.get("ALTO_TOKEN")
    return value.strip() if value and value.strip() else None


def load_spec(spec: SpecLike) -> JobSpec:
    """Accept a JobSpec, a mapping, a path to a YAML/JSON file, or YAML/JSON text.

    Raises ``SpecError`` (listing every problem) for an invalid spec and
    ``FileNotFoundError`` naming the path for a missing file.
    """
    if isinstance(spec, JobSpec):
        return spec
    if isinstance(spec, Mapping):
        return JobSpec.from_dict(dict(spec))
    if isinstance(spec, Path):
        if not spec.is_file():
            raise FileNotFoundError(f"spec: no such file {str(spec)!r}")
        return JobSpec.load(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if "\n" not in text and Path(text).is_file():
            return JobSpec.load(Path(text))
        if "\n" in text or text.startswith("{") or ": " in text:
            return JobSpec.from_yaml(text)  # YAML reads JSON too
        raise FileNotFoundError(f"spec: no such file {text!r}")
    raise TypeError(f"spec must be a JobSpec, a mapping, or a path/str, got {type(spec).__name__}")


def _spec_payload(spec: JobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def _parse_scalar(text: str) -> Any:
    low = text.lower()
    if low in {"true", "false"}:
        return low == "true"
    if low in {"none", "null"}:
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_arm(text: str) -> dict[str, Any]:
    """Parse the CLI shorthand ``NAME[:key=value,...]`` into an arm mapping.

    ``adamw:lr=3e-4,weight_decay=0.1`` is the arm ``adamw`` training with
    ``{"name": "adamw", "lr": 0.0003, "weight_decay": 0.1}``; an arm may take a
    label different from its optimizer with ``label=optimizer:...``
    (``alto-hi=alto:alpha=1.0``).
    """
    head, _, rest = text.partition(":")
    label, eq, optimizer = head.partition("=")
    label = label.strip()
    optimizer = (optimizer if eq else label).strip()
    if not label or not optimizer:
        raise ValueError(f"arm: expected NAME[:key=value,...], got {text!r}")
    section: dict[str, Any] = {"name": optimizer}
    if rest.strip():
        for item in rest.split(","):
            key, eq2, value = item.partition("=")
            if not eq2 or not key.strip():
                raise ValueError(
                    f"arm {label!r}: expected key=value after ':', got {item.strip()!r}"
                )
            section[key.strip()] = _parse_scalar(value.strip())
    return {"name": label, "optimizer": section}


def build_arms(spec: JobSpec, arms: Sequence[ArmLike]) -> list[Arm]:
    """Turn arm names, shorthands or mappings into ``Arm`` models.

    A bare optimizer name that matches the spec's own optimizer reuses the spec's
    settings (so its learning rate carries over); any other bare name gets that
    optimizer's defaults (ALTO: the paper's defaults for the batch size).
    """
    own = spec.optimizer.model_dump(mode="json", exclude_none=True)
    out: list[Arm] = []
    for arm in arms:
        if isinstance(arm, Arm):
            out.append(arm)
            continue
        if isinstance(arm, str):
            mapping = parse_arm(arm)
            section = mapping["optimizer"]
            if len(section) == 1 and section["name"] == own.get("name"):
                mapping["optimizer"] = own
        elif isinstance(arm, Mapping):
            mapping = dict(arm)
        else:
            raise TypeError(
                f"arms: each arm must be a name, a mapping or an Arm, got {type(arm).__name__}"
            )
        try:
            out.append(Arm.model_validate(mapping))
        except ValidationError as exc:
            raise ValueError(
                f"arm {mapping.get('name')!r} is invalid: {describe_validation_error(exc)} "
                f"(optimizers: {', '.join(OPTIMIZER_NAMES)})"
            ) from None
    return out


def _seed_list(spec: JobSpec, seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds: need at least 1 seed, got {seeds}")
        base = spec.training.seed
        return [base + i for i in range(seeds)]
    return [int(s) for s in seeds]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _default_baseline(arms: Sequence[Arm]) -> str:
    """AdamW is the usual yardstick; without it, the first arm is the baseline."""
    names = [a.name for a in arms]
    return "adamw" if "adamw" in names else names[0]


class _Page(Protocol[T_co]):
    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


def _items(fetch: Callable[[str | None], _Page[T]], limit: int | None) -> Iterator[T]:
    """The items of successive pages (`fetch(cursor)`), at most `limit` of them."""
    cursor: str | None = None
    seen = 0
    while True:
        page = fetch(cursor)
        for item in page.items:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield item
        if not page.next_cursor or not page.items:
            return
        cursor = page.next_cursor


async def _aitems(
    fetch: Callable[[str | None], Awaitable[_Page[T]]], limit: int | None
) -> AsyncIterator[T]:
    """`_items` for an async `fetch`."""
    cursor: str | None = None
    seen = 0
    while True:
        page = await fetch(cursor)
        for item in page.items:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield item
        if not page.next_cursor or not page.items:
            return
        cursor = page.next_cursor


@dataclass(frozen=True)
class JobEvent:
    """One live event of a job: ``kind`` is the SSE event name (``metrics``, ``status``...).

    ``data`` is the decoded JSON payload; ``status`` is set on status events so a
    watcher can tell when the job has ended without knowing the payload's shape.
    """

    kind: str
    data: Any
    id: str | None = None

    @property
    def status(self) -> JobStatus | None:
        if isinstance(self.data, dict) and "status" in self.data:
            try:
                return JobStatus(self.data["status"])
            except ValueError:
                return None
        return None

    @classmethod
    def from_sse(cls, event: ServerSentEvent) -> JobEvent:
        try:
            data: Any = event.json()
        except ValueError:
            data = event.data
        return cls(kind=event.event, data=data, id=event.id)


class _Base:
    """Configuration and request/response handling shared by both clients."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
    ) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.retry = RetryPolicy(attempts=retries, backoff=backoff)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    @staticmethod
    def _model(model: type[M], response: httpx.Response) -> M:
        return model.model_validate(response.json())

    @staticmethod
    def _page_params(owner: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        if limit < 1:
            raise ValueError(f"page_size must be >= 1, got {limit}")
        params: dict[str, Any] = {"limit": limit}
        if owner:
            params["owner"] = owner
        if cursor:
            params["cursor"] = cursor
        return params

    @classmethod
    def _jobs_params(
        cls,
        status: JobStatus | str | None,
        tag: str | None,
        owner: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        params = cls._page_params(owner, limit, cursor)
        if status is not None:
            params["status"] = JobStatus(status).value if isinstance(status, str) else status.value
        if tag:
            params["tag"] = tag
        return params

    @staticmethod
    def _metrics_params(
        names: Iterable[str] | str | None, since_step: int | None, max_points: int | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if names:
            params["names"] = names if isinstance(names, str) else ",".join(names)
        if since_step is not None:
            params["since_step"] = since_step
        if max_points is not None:
            params["max_points"] = max_points
        return params

    @staticmethod
    def _logs_text(response: httpx.Response) -> str:
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            if isinstance(body, dict):
                for key in ("logs", "text", "content"):
                    if isinstance(body.get(key), str):
                        return body[key]
            return str(body)
        return response.text

    def _comparison_body(
        self,
        spec: SpecLike,
        arms: Sequence[ArmLike],
        seeds: int | Sequence[int],
        baseline: str | None,
        name: str | None,
    ) -> dict[str, Any]:
        job_spec = load_spec(spec)
        arm_models = build_arms(job_spec, arms)
        request = ComparisonRequest(
            spec=job_spec,
            arms=arm_models,
            seeds=_seed_list(job_spec, seeds),
            baseline=baseline or _default_baseline(arm_models),
            name=name,
        )
        return request.model_dump(mode="json", exclude_none=True)


class Client(_Base):
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
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """A raw call on the API with the client's auth, retries and error mapping.

        ``idempotent=False`` disables retries (use it for a POST without an
        Idempotency-Key). Raises ``ApiError`` subclasses or ``ConnectionFailed``.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if idempotent and self.retry.should_retry_exception(exc, attempt):
                    time.sleep(self.retry.delay(attempt))
                    continue
                raise ConnectionFailed(self.url, exc, attempt) from exc
            if idempotent and self.retry.should_retry_status(response.status_code, attempt):
                time.sleep(self.retry.delay(attempt))
                continue
            return self._check(response)

    # -- jobs -----------------------------------------------------------------------

    def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        """Submit a job; returns it as stored (status PENDING or QUEUED)."""
        body = _spec_payload(load_spec(spec))
        key = idempotency_key or uuid.uuid4().hex
        response = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return self._model(Job, response)

    def job(self, job_id: str) -> Job:
        return self._model(Job, self.request("GET", f"/v1/jobs/{job_id}"))

    def jobs_page(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        params = self._jobs_params(status, tag, owner, limit, cursor)
        return self._model(JobList, self.request("GET", "/v1/jobs", params=params))

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
        return _items(
            lambda cursor: self.jobs_page(
                status=status, tag=tag, owner=owner, limit=page_size, cursor=cursor
            ),
            limit,
        )

    def cancel(self, job_id: str) -> Job:
        """Ask the service to stop a job; an ended job raises ``Conflict``."""
        return self._model(Job, self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def _delete(self, path: str, missing_ok: bool) -> None:
        try:
            self.request("DELETE", path)
        except NotFound:
            if not missing_ok:
                raise

    def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        """Delete an ended job and its metric history (``Conflict`` while it runs or
        when it belongs to a comparison). ``missing_ok``: a job already gone is fine,
        e.g. when a retry follows a delete whose answer was lost."""
        self._delete(f"/v1/jobs/{job_id}", missing_ok)

    def logs(self, job_id: str, *, tail_bytes: int | None = None) -> str:
        """The job's driver log (its last ``tail_bytes`` bytes); empty before launch."""
        params = {} if tail_bytes is None else {"tail_bytes": tail_bytes}
        return self._logs_text(self.request("GET", f"/v1/jobs/{job_id}/logs", params=params))

    def metrics(
        self,
        job_id: str,
        names: Iterable[str] | str | None = None,
        *,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> MetricHistory:
        params = self._metrics_params(names, since_step, max_points)
        response = self.request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        return self._model(MetricHistory, response)

    def stream(self, job_id: str, *, reconnect: bool = True) -> Iterator[JobEvent]:
        """Live events of a job until the server ends the stream.

        A dropped connection is resumed with ``Last-Event-ID`` (so nothing is
        missed or repeated) until the job has ended or the retries run out.
        """
        parser = SSEParser()
        failures = 0
        ended = False
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_event_id is not None:
                headers["Last-Event-ID"] = parser.last_event_id
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from_response(response)
                    failures = 0
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        job_event = JobEvent.from_sse(event)
                        if job_event.status in TERMINAL_STATUSES:
                            ended = True
                        yield job_event
                return
            except httpx.TransportError as exc:
                failures += 1
                if ended or not reconnect or not self.retry.should_retry_exception(exc, failures):
                    if ended:
                        return
                    raise ConnectionFailed(self.url, exc, failures) from exc
                time.sleep(self.retry.delay(failures))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Job:
        """Block until the job has ended; returns the final job (any end state)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job(job_id)
        while job.status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, timeout or 0.0, job.status.value)
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)
            job = self.job(job_id)
        return job

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
        body = self._comparison_body(spec, arms, seeds, baseline, name)
        key = idempotency_key or uuid.uuid4().hex
        response = self.request(
            "POST", "/v1/comparisons", json=body, headers={"Idempotency-Key": key}
        )
        return self._model(Comparison, response)

    def comparisons_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ComparisonList:
        params = self._page_params(owner, limit, cursor)
        return self._model(ComparisonList, self.request("GET", "/v1/comparisons", params=params))

    def comparisons(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> Iterator[ComparisonInfo]:
        """Every comparison the caller may see, newest first, page by page."""
        return _items(
            lambda cursor: self.comparisons_page(owner=owner, limit=page_size, cursor=cursor),
            limit,
        )

    def delete_comparison(self, comparison_id: str, *, missing_ok: bool = False) -> None:
        """Delete a comparison whose jobs have all ended, with those jobs and metrics."""
        self._delete(f"/v1/comparisons/{comparison_id}", missing_ok)

    def comparison(self, comparison_id: str) -> Comparison:
        return self._model(Comparison, self.request("GET", f"/v1/comparisons/{comparison_id}"))

    def wait_comparison(
        self, comparison_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Comparison:
        """Block until every job of the comparison has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        comp = self.comparison(comparison_id)
        while comp.status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(comparison_id, timeout or 0.0, comp.status.value)
            time.sleep(poll_interval)
            comp = self.comparison(comparison_id)
        return comp

    def plot_png(self, comparison_id: str) -> bytes:
        """The comparison's loss/memory plot as PNG bytes."""
        return self.request("GET", f"/v1/comparisons/{comparison_id}/plot.png").content

    def plot(self, comparison_id: str, path: str | Path) -> Path:
        """Save the comparison's loss/memory plot (PNG) to ``path``."""
        return _write_bytes(Path(path), self.plot_png(comparison_id))

    # -- service --------------------------------------------------------------------

    def health(self) -> bool:
        """True when the service answers /healthz (one attempt, no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient(_Base):
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
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if idempotent and self.retry.should_retry_exception(exc, attempt):
                    await asyncio.sleep(self.retry.delay(attempt))
                    continue
                raise ConnectionFailed(self.url, exc, attempt) from exc
            if idempotent and self.retry.should_retry_status(response.status_code, attempt):
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            return self._check(response)

    async def submit(self, spec: SpecLike, *, idempotency_key: str | None = None) -> Job:
        body = _spec_payload(load_spec(spec))
        key = idempotency_key or uuid.uuid4().hex
        response = await self.request(
            "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}
        )
        return self._model(Job, response)

    async def job(self, job_id: str) -> Job:
        return self._model(Job, await self.request("GET", f"/v1/jobs/{job_id}"))

    async def jobs_page(
        self,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobList:
        params = self._jobs_params(status, tag, owner, limit, cursor)
        return self._model(JobList, await self.request("GET", "/v1/jobs", params=params))

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
        return _aitems(
            lambda cursor: self.jobs_page(
                status=status, tag=tag, owner=owner, limit=page_size, cursor=cursor
            ),
            limit,
        )

    async def cancel(self, job_id: str) -> Job:
        return self._model(Job, await self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    async def _delete(self, path: str, missing_ok: bool) -> None:
        try:
            await self.request("DELETE", path)
        except NotFound:
            if not missing_ok:
                raise

    async def delete(self, job_id: str, *, missing_ok: bool = False) -> None:
        await self._delete(f"/v1/jobs/{job_id}", missing_ok)

    async def logs(self, job_id: str, *, tail_bytes: int | None = None) -> str:
        params = {} if tail_bytes is None else {"tail_bytes": tail_bytes}
        response = await self.request("GET", f"/v1/jobs/{job_id}/logs", params=params)
        return self._logs_text(response)

    async def metrics(
        self,
        job_id: str,
        names: Iterable[str] | str | None = None,
        *,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> MetricHistory:
        params = self._metrics_params(names, since_step, max_points)
        response = await self.request("GET", f"/v1/jobs/{job_id}/metrics", params=params)
        return self._model(MetricHistory, response)

    async def stream(self, job_id: str, *, reconnect: bool = True) -> AsyncIterator[JobEvent]:
        parser = SSEParser()
        failures = 0
        ended = False
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_event_id is not None:
                headers["Last-Event-ID"] = parser.last_event_id
            try:
                async with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response)
                    failures = 0
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None:
                            continue
                        job_event = JobEvent.from_sse(event)
                        if job_event.status in TERMINAL_STATUSES:
                            ended = True
                        yield job_event
                return
            except httpx.TransportError as exc:
                failures += 1
                if ended or not reconnect or not self.retry.should_retry_exception(exc, failures):
                    if ended:
                        return
                    raise ConnectionFailed(self.url, exc, failures) from exc
                await asyncio.sleep(self.retry.delay(failures))

    async def wait(
        self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.job(job_id)
        while job.status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, timeout or 0.0, job.status.value)
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            await asyncio.sleep(pause)
            job = await self.job(job_id)
        return job

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
        body = self._comparison_body(spec, arms, seeds, baseline, name)
        key = idempotency_key or uuid.uuid4().hex
        response = await self.request(
            "POST", "/v1/comparisons", json=body, headers={"Idempotency-Key": key}
        )
        return self._model(Comparison, response)

    async def comparisons_page(
        self, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> ComparisonList:
        params = self._page_params(owner, limit, cursor)
        return self._model(
            ComparisonList, await self.request("GET", "/v1/comparisons", params=params)
        )

    def comparisons(
        self, *, owner: str | None = None, page_size: int = 50, limit: int | None = None
    ) -> AsyncIterator[ComparisonInfo]:
        """Every comparison the caller may see, newest first, page by page."""
        return _aitems(
            lambda cursor: self.comparisons_page(owner=owner, limit=page_size, cursor=cursor),
            limit,
        )

    async def delete_comparison(self, comparison_id: str, *, missing_ok: bool = False) -> None:
        await self._delete(f"/v1/comparisons/{comparison_id}", missing_ok)

    async def comparison(self, comparison_id: str) -> Comparison:
        response = await self.request("GET", f"/v1/comparisons/{comparison_id}")
        return self._model(Comparison, response)

    async def wait_comparison(
        self, comparison_id: str, *, timeout: float | None = None, poll_interval: float = 2.0
    ) -> Comparison:
        deadline = None if timeout is None else time.monotonic() + timeout
        comp = await self.comparison(comparison_id)
        while comp.status not in TERMINAL_STATUSES:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(comparison_id, timeout or 0.0, comp.status.value)
            await asyncio.sleep(poll_interval)
            comp = await self.comparison(comparison_id)
        return comp

    async def plot_png(self, comparison_id: str) -> bytes:
        response = await self.request("GET", f"/v1/comparisons/{comparison_id}/plot.png")
        return response.content

    async def plot(self, comparison_id: str, path: str | Path) -> Path:
        return _write_bytes(Path(path), await self.plot_png(comparison_id))

    async def health(self) -> bool:
        try:
            return (await self._http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False
