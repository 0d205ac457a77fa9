"""The client's core: every API call described, and every answer read, without I/O.

In the manner of sans-I/O protocol libraries (h11, h2): this module never opens a
connection or sleeps. A method of the client asks it for a ``Call`` (method,
path, query, body, headers, whether it may be retried, and how to read its
answer), hands that to its transport (``client.Client`` sends it with httpx's
blocking client, ``client.AsyncClient`` with the asyncio one, both retrying
with the one ``retry.RetryPolicy``), and gives the answer back to
``Call.result``, which returns the parsed model or raises the typed error.
What cannot be a single call keeps its state here too: ``Pages`` (which page
to ask for next, how many items are left to hand out), ``EventStream`` (the
last event id to resume from, whether the job has ended) and ``Waiter`` (when
to poll again and when to give up). So the two clients differ only in
``await``, and a test can drive the core with no server at all.

A submission's ``Idempotency-Key`` is made when its ``Call`` is built, and the
``Call`` is what the transport retries: every attempt carries the same key, so
a retry after a lost answer returns the job the first attempt made.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, ValidationError

from alto_client.errors import WaitTimeout, describe_validation_error, error_from_response
from alto_client.models import (
    TERMINAL_STATUSES,
    Arm,
    Comparison,
    ComparisonCurves,
    ComparisonList,
    ComparisonRequest,
    Job,
    JobList,
    JobStatus,
    MetricHistory,
)
from alto_client.spec import JobSpec
from alto_client.study import Study, StudyList, StudyPlan, StudyRequest, load_study

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "alto-client/0.1"
OPTIMIZER_NAMES = ("alto", "adamw", "e")

# TypeVars, not PEP 695 parameters (hence the noqa: UP046/UP047 below): the
# client supports Python 3.10 and 3.11 (requires-python), ruff targets the project's 3.12
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
SpecLike = JobSpec | Mapping[str, Any] | str | Path
ArmLike = Arm | Mapping[str, Any] | str
StudyLike = StudyRequest | dict[str, Any] | str | Path


# --------------------------------------------------------------------------- configuration


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


def default_headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# --------------------------------------------------------------------------- specs and arms


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


def _default_baseline(arms: Sequence[Arm]) -> str:
    """AdamW is the usual yardstick; without it, the first arm is the baseline."""
    names = [a.name for a in arms]
    return "adamw" if "adamw" in names else names[0]


# --------------------------------------------------------------------------- calls


def _raw(response: httpx.Response) -> httpx.Response:
    return response


@dataclass(frozen=True)
class Call(Generic[R]):  # noqa: UP046
    """One request to send, and how to read its answer.

    ``options`` are the keyword arguments of ``httpx.Client.request`` (``params``,
    ``json``, ``headers``...). ``idempotent`` says the transport may repeat it.
    ``accept`` lists error statuses that are an answer rather than an error
    (404 for a delete with ``missing_ok``); ``checked=False`` hands every status
    to ``parse`` (the health probe).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], R]
    options: Mapping[str, Any] = field(default_factory=dict)
    idempotent: bool = True
    accept: frozenset[int] = frozenset()
    checked: bool = True

    def result(self, response: httpx.Response) -> R:
        """The parsed answer, or the typed ``ApiError`` for an error status."""
        if (
            self.checked
            and response.status_code >= 400
            and (response.status_code not in self.accept)
        ):
            raise error_from_response(response)
        return self.parse(response)


def _model(model: type[M]) -> Callable[[httpx.Response], M]:  # noqa: UP047
    def parse(response: httpx.Response) -> M:
        return model.model_validate(response.json())

    return parse


def _none(_response: httpx.Response) -> None:
    return None


def _bytes(response: httpx.Response) -> bytes:
    return response.content


def _logs_text(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict):
            for key in ("logs", "text", "content"):
                if isinstance(body.get(key), str):
                    return body[key]
        return str(body)
    return response.text


def raw(method: str, path: str, *, idempotent: bool = True, **options: Any) -> Call[httpx.Response]:
    """Any call on the API; the answer is the response itself (error statuses raise)."""
    return Call(method, path, _raw, options, idempotent=idempotent)


def _submission(path: str, body: dict[str, Any], key: str | None, parse: Callable) -> Call:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return Call("POST", path, parse, {"json": body, "headers": headers})


def submit_job(spec: SpecLike, idempotency_key: str | None = None) -> Call[Job]:
    body = load_spec(spec).model_dump(mode="json", exclude_none=True)
    return _submission("/v1/jobs", body, idempotency_key, _model(Job))


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _model(Job))


def _page_params(owner: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
    if limit < 1:
        raise ValueError(f"page_size must be >= 1, got {limit}")
    params: dict[str, Any] = {"limit": limit}
    if owner:
        params["owner"] = owner
    if cursor:
        params["cursor"] = cursor
    return params


def list_jobs(
    status: JobStatus | str | None,
    tag: str | None,
    owner: str | None,
    limit: int,
    cursor: str | None,
) -> Call[JobList]:
    params = _page_params(owner, limit, cursor)
    if status is not None:
        params["status"] = JobStatus(status).value
    if tag:
        params["tag"] = tag
    return Call("GET", "/v1/jobs", _model(JobList), {"params": params})


def cancel_job(job_id: str) -> Call[Job]:
    return Call("POST", f"/v1/jobs/{job_id}/cancel", _model(Job))


def delete(path: str, missing_ok: bool) -> Call[None]:
    return Call("DELETE", path, _none, accept=frozenset({404}) if missing_ok else frozenset())


def job_logs(job_id: str, tail_bytes: int | None) -> Call[str]:
    params = {} if tail_bytes is None else {"tail_bytes": tail_bytes}
    return Call("GET", f"/v1/jobs/{job_id}/logs", _logs_text, {"params": params})


def job_metrics(
    job_id: str,
    names: Iterable[str] | str | None,
    since_step: int | None,
    max_points: int | None,
) -> Call[MetricHistory]:
    params: dict[str, Any] = {}
    if names:
        params["names"] = names if isinstance(names, str) else ",".join(names)
    if since_step is not None:
        params["since_step"] = since_step
    if max_points is not None:
        params["max_points"] = max_points
    return Call("GET", f"/v1/jobs/{job_id}/metrics", _model(MetricHistory), {"params": params})


def submit_comparison(
    spec: SpecLike,
    arms: Sequence[ArmLike],
    seeds: int | Sequence[int],
    baseline: str | None,
    name: str | None,
    idempotency_key: str | None = None,
) -> Call[Comparison]:
    job_spec = load_spec(spec)
    arm_models = build_arms(job_spec, arms)
    request = ComparisonRequest(
        spec=job_spec,
        arms=arm_models,
        seeds=_seed_list(job_spec, seeds),
        baseline=baseline or _default_baseline(arm_models),
        name=name,
    )
    body = request.model_dump(mode="json", exclude_none=True)
    return _submission("/v1/comparisons", body, idempotency_key, _model(Comparison))


def get_comparison(comparison_id: str) -> Call[Comparison]:
    return Call("GET", f"/v1/comparisons/{comparison_id}", _model(Comparison))


def list_comparisons(owner: str | None, limit: int, cursor: str | None) -> Call[ComparisonList]:
    params = _page_params(owner, limit, cursor)
    return Call("GET", "/v1/comparisons", _model(ComparisonList), {"params": params})


def comparison_curves(comparison_id: str, max_points: int | None) -> Call[ComparisonCurves]:
    params = {} if max_points is None else {"max_points": max_points}
    return Call(
        "GET",
        f"/v1/comparisons/{comparison_id}/curves",
        _model(ComparisonCurves),
        {"params": params},
    )


def comparison_plot(comparison_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/comparisons/{comparison_id}/plot.png", _bytes)


def _study_body(study: StudyLike) -> dict[str, Any]:
    return load_study(study).model_dump(mode="json", exclude_none=True)


def plan_study(study: StudyLike) -> Call[StudyPlan]:
    """The plan of a study (a dry run: nothing is stored)."""
    return Call("POST", "/v1/studies/plan", _model(StudyPlan), {"json": _study_body(study)})


def submit_study(study: StudyLike, idempotency_key: str | None = None) -> Call[Study]:
    return _submission("/v1/studies", _study_body(study), idempotency_key, _model(Study))


def get_study(study_id: str) -> Call[Study]:
    return Call("GET", f"/v1/studies/{study_id}", _model(Study))


def list_studies(owner: str | None, limit: int, cursor: str | None) -> Call[StudyList]:
    params = _page_params(owner, limit, cursor)
    return Call("GET", "/v1/studies", _model(StudyList), {"params": params})


def cancel_study(study_id: str) -> Call[Study]:
    return Call("POST", f"/v1/studies/{study_id}/cancel", _model(Study), idempotent=False)


def study_plot(study_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/studies/{study_id}/plot.png", _bytes)


def health() -> Call[bool]:
    """One attempt, any answer: the probe says whether the service is up now."""
    return Call("GET", "/healthz", lambda r: r.status_code == 200, idempotent=False, checked=False)


# --------------------------------------------------------------------------- pagination


class Page(Protocol[T_co]):
    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


class Pages(Generic[T]):  # noqa: UP046
    """Walks a cursor-paged list: ``next_call()`` says what to fetch (None: done),
    ``take(page)`` returns the items to hand out, at most ``limit`` in all."""

    def __init__(self, call_for: Callable[[str | None], Call[Any]], limit: int | None) -> None:
        self._call_for = call_for
        self._left = limit
        self._cursor: str | None = None
        self._done = limit is not None and limit <= 0

    def next_call(self) -> Call[Any] | None:
        return None if self._done else self._call_for(self._cursor)

    def take(self, page: Page[T]) -> list[T]:
        items = list(page.items)
        if self._left is not None:
            items = items[: self._left]
            self._left -= len(items)
        self._cursor = page.next_cursor
        if not page.next_cursor or not page.items or self._left == 0:
            self._done = True
        return items


# --------------------------------------------------------------------------- events


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


class EventStream:
    """The state of one job's event stream across reconnections.

    ``request()`` is the call that opens (or resumes) the stream: it carries
    ``Last-Event-ID`` once an event with an id has arrived, so the server
    resends nothing already seen and skips nothing. ``event(sse)`` turns a
    decoded server-sent event into a ``JobEvent`` and notes its id and whether
    the job has ended; after the end a dropped connection is simply the end.
    """

    def __init__(self, job_id: str, timeout: float) -> None:
        self.path = f"/v1/jobs/{job_id}/events"
        self.timeout = timeout
        self.last_event_id: str | None = None
        self.ended = False

    def request(self) -> Call[httpx.Response]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        # no read timeout: the server sends a keep-alive every 15 s, and a job may be
        # silent (queued) for much longer than any timeout we could pick
        options = {"headers": headers, "timeout": httpx.Timeout(self.timeout, read=None)}
        return Call("GET", self.path, _raw, options)

    def event(self, sse: ServerSentEvent) -> JobEvent | None:
        if sse.id:
            self.last_event_id = sse.id
        if sse.data == "":
            return None  # no payload: nothing of this API (a bare id or retry field)
        try:
            data: Any = sse.json()
        except ValueError:
            data = sse.data
        event = JobEvent(kind=sse.event, data=data, id=sse.id or None)
        if event.status in TERMINAL_STATUSES:
            self.ended = True
        return event


# --------------------------------------------------------------------------- waiting


class Waiter:
    """When to poll a job (or comparison) again, and when to give up."""

    def __init__(self, what: str, timeout: float | None, poll_interval: float) -> None:
        self.what = what
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def pause(self, status: JobStatus) -> float | None:
        """Seconds to sleep before the next poll; None once ``status`` is an end state.

        Raises ``WaitTimeout`` when the deadline has passed.
        """
        if status in TERMINAL_STATUSES:
            return None
        if self.deadline is None:
            return self.poll_interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(self.what, self.timeout or 0.0, status.value)
        return min(self.poll_interval, left)
