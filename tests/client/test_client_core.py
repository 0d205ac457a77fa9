"""The transport-free core, the retry policy, and both transports over a scripted server.

The core is driven with no server at all: a ``Call`` is data, and an answer is an
``httpx.Response`` built in the test. The transports are driven through
``httpx.MockTransport`` with a script of answers (or failures) per request, the
same script for ``Client`` and ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import tenacity
from alto_client import core, errors
from alto_client.client import AsyncClient, Client
from alto_client.models import JobList, JobStatus
from alto_client.retry import RetryPolicy, retryable
from blocking import Blocking
from httpx_sse import ServerSentEvent
from livesvc import TINY_SPEC

URL = "http://alto.test"


def job_json(job_id: str = "j1", status: str = "QUEUED") -> dict[str, Any]:
    return {
        "id": job_id,
        "name": "tiny-sim",
        "owner": "admin",
        "status": status,
        "spec": TINY_SPEC,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
    }


def answer(call: core.Call[Any], status: int = 200, **kwargs: Any) -> Any:
    request = httpx.Request(call.method, URL + call.path)
    return call.result(httpx.Response(status, request=request, **kwargs))


# --------------------------------------------------------------------------- the core


def test_a_submission_carries_one_idempotency_key_per_call() -> None:
    call = core.submit_job(TINY_SPEC)
    assert (call.method, call.path, call.idempotent) == ("POST", "/v1/jobs", True)
    assert call.options["json"]["training"]["steps"] == 12
    key = call.options["headers"]["Idempotency-Key"]
    assert (
        len(key) == 32 and core.submit_job(TINY_SPEC).options["headers"]["Idempotency-Key"] != key
    )
    assert core.submit_job(TINY_SPEC, "k1").options["headers"] == {"Idempotency-Key": "k1"}
    comparison = core.submit_comparison(TINY_SPEC, ["alto", "adamw"], 2, None, "n", "k2")
    body = comparison.options["json"]
    assert body["baseline"] == "adamw" and body["seeds"] == [11, 12]
    assert comparison.options["headers"] == {"Idempotency-Key": "k2"}


def test_calls_build_their_queries_and_refuse_bad_arguments() -> None:
    call = core.list_jobs("RUNNING", "demo", "ann", 10, "c1")
    assert call.options["params"] == {
        "limit": 10,
        "owner": "ann",
        "cursor": "c1",
        "status": "RUNNING",
        "tag": "demo",
    }
    metrics = core.job_metrics("j", ["a", "b"], 3, 50)
    assert metrics.options["params"] == {"names": "a,b", "since_step": 3, "max_points": 50}
    with pytest.raises(ValueError, match="page_size"):
        core.list_comparisons(None, 0, None)
    with pytest.raises(ValueError):
        core.list_jobs("DONE", None, None, 1, None)


def test_answers_become_models_or_typed_errors() -> None:
    job = answer(core.get_job("j1"), json=job_json())
    assert job.id == "j1" and job.status == JobStatus.QUEUED
    with pytest.raises(errors.NotFound, match="no job"):
        answer(core.get_job("j1"), 404, json={"message": "no job j1"})
    assert answer(core.delete("/v1/jobs/j1", missing_ok=True), 404, json={}) is None
    with pytest.raises(errors.NotFound):
        answer(core.delete("/v1/jobs/j1", missing_ok=False), 404, json={})
    with pytest.raises(errors.Conflict):  # missing_ok forgives only "already gone"
        answer(core.delete("/v1/jobs/j1", missing_ok=True), 409, json={"message": "running"})
    assert answer(core.health(), 503) is False and answer(core.health(), 200) is True
    assert answer(core.job_logs("j1", None), json={"logs": "hello"}) == "hello"
    assert answer(core.job_logs("j1", 10), text="plain") == "plain"


def test_pages_stop_at_the_limit_the_last_page_or_an_empty_one() -> None:
    asked: list[str | None] = []

    def call_for(cursor: str | None) -> core.Call[Any]:
        asked.append(cursor)
        return core.list_jobs(None, None, None, 2, cursor)

    pages: core.Pages[Any] = core.Pages(call_for, limit=3)
    assert pages.next_call() is not None
    assert pages.take(JobList(items=[job_json("a"), job_json("b")], next_cursor="c2")) != []
    assert pages.next_call() is not None
    last = pages.take(JobList(items=[job_json("c"), job_json("d")], next_cursor="c3"))
    assert [j.id for j in last] == ["c"]  # the limit cuts the page
    assert pages.next_call() is None and asked == [None, "c2"]
    endless: core.Pages[Any] = core.Pages(call_for, limit=None)
    endless.next_call()
    assert endless.take(JobList(items=[], next_cursor="again")) == []
    assert endless.next_call() is None  # an empty page ends the walk even with a cursor
    assert core.Pages(call_for, limit=0).next_call() is None


def test_event_stream_resumes_from_the_last_id_and_knows_the_end() -> None:
    stream = core.EventStream("j1", timeout=5.0)
    assert "Last-Event-ID" not in stream.request().options["headers"]
    assert stream.request().options["timeout"].read is None
    first = stream.event(ServerSentEvent("metrics", '{"points": []}', id="7"))
    assert first is not None and first.id == "7" and first.data == {"points": []}
    # a status event carries no id of its own: it must not lose the resume point
    status = stream.event(ServerSentEvent("status", json.dumps(job_json(status="RUNNING"))))
    assert status is not None and status.status == JobStatus.RUNNING and not stream.ended
    assert stream.request().options["headers"]["Last-Event-ID"] == "7"
    assert stream.event(ServerSentEvent("message", "", id="9")) is None  # no payload
    assert stream.request().options["headers"]["Last-Event-ID"] == "9"
    stream.event(ServerSentEvent("status", json.dumps(job_json(status="FAILED"))))
    assert stream.ended


def test_waiter_polls_until_an_end_state_or_the_deadline() -> None:
    waiter = core.Waiter("j1", timeout=None, poll_interval=2.0)
    assert waiter.pause(JobStatus.RUNNING) == 2.0
    assert waiter.pause(JobStatus.CANCELLED) is None
    short = core.Waiter("j1", timeout=0.05, poll_interval=2.0)
    assert 0 < short.pause(JobStatus.QUEUED) <= 0.05  # never sleeps past the deadline
    time.sleep(0.06)
    with pytest.raises(errors.WaitTimeout, match="j1 did not finish"):
        short.pause(JobStatus.QUEUED)


# --------------------------------------------------------------------------- the retry policy


def test_retry_policy_backoff_is_capped_and_jittered() -> None:
    wait = RetryPolicy(attempts=4, backoff=0.5, max_backoff=2.0).wait()
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 2.0), (9, 2.0)]:
        state.attempt_number = attempt
        delays = [wait(state) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > cap / 10  # jittered, not in step
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(backoff=-1)


def test_what_is_retried() -> None:
    request = httpx.Request("GET", URL)
    assert retryable(httpx.ConnectError("refused"))
    assert retryable(httpx.ReadError("reset"))
    assert retryable(httpx.RemoteProtocolError("cut"))
    assert not retryable(httpx.UnsupportedProtocol("ftp"))
    assert not retryable(ValueError("x"))
    for status, expected in [(502, True), (503, True), (504, True), (500, False), (429, False)]:
        exc = errors.error_from_response(httpx.Response(status, request=request))
        assert retryable(exc) is expected, status


# --------------------------------------------------------------------------- both transports


Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A scripted server: each request takes the next step of the script."""

    def __init__(self, *script: Step) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


def run(kind: str, server: Server, scenario: Callable[[Any], Any], **options: Any) -> Any:
    """Run ``scenario(client)`` with a sync or an async client over ``server``.

    An async scenario gets an adapter whose methods are awaited for it, so one
    scenario checks both transports.
    """
    options = {"backoff": 0.0, **options}
    if kind == "sync":
        with Client(URL, "t", transport=httpx.MockTransport(server), **options) as client:
            return scenario(client)

    async def main() -> Any:
        transport = httpx.MockTransport(server)
        async with AsyncClient(URL, "t", transport=transport, **options) as client:
            return await asyncio.to_thread(scenario, Blocking(client, asyncio.get_running_loop()))

    return asyncio.run(main())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_a_retried_submission_sends_the_same_key_every_time(kind: str) -> None:
    server = Server(
        httpx.Response(503, json={"message": "restarting"}),
        httpx.ConnectError("refused"),
        httpx.Response(201, json=job_json()),
    )
    job = run(kind, server, lambda c: c.submit(TINY_SPEC))
    assert job.id == "j1" and len(server.requests) == 3
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(keys) == 1
    assert all(r.headers["Authorization"] == "Bearer t" for r in server.requests)


@KINDS
def test_retries_give_up_with_the_last_error(kind: str) -> None:
    refused = Server(httpx.ConnectError("refused"))
    with pytest.raises(errors.ConnectionFailed) as info:
        run(kind, refused, lambda c: c.job("j1"), retries=3)
    assert info.value.attempts == 3 and len(refused.requests) == 3 and URL in str(info.value)
    busy = Server(httpx.Response(503, json={"message": "no Ray"}))
    with pytest.raises(errors.ServerError, match="no Ray"):
        run(kind, busy, lambda c: c.logs("j1"), retries=2)
    assert len(busy.requests) == 2
    for status, cls in [
        (500, errors.ServerError),
        (429, errors.ApiError),
        (422, errors.ValidationFailed),
    ]:
        once = Server(httpx.Response(status, json={"message": "no"}))
        with pytest.raises(cls):
            run(kind, once, lambda c: c.job("j1"))
        assert len(once.requests) == 1, status
    raw = Server(httpx.Response(503, json={}))
    with pytest.raises(errors.ServerError):
        run(kind, raw, lambda c: c.request("POST", "/v1/x", idempotent=False))
    assert len(raw.requests) == 1
    down = Server(httpx.ConnectError("refused"))
    assert run(kind, down, lambda c: c.health()) is False and len(down.requests) == 1


@KINDS
def test_lists_page_through_cursors_lazily(kind: str) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        if cursor is None:
            return httpx.Response(
                200, json={"items": [job_json("a"), job_json("b")], "next_cursor": "2"}
            )
        return httpx.Response(200, json={"items": [job_json("c")], "next_cursor": None})

    server = Server(page)
    ids = run(kind, server, lambda c: [j.id for j in c.jobs(tag="x", page_size=2)])
    assert ids == ["a", "b", "c"]
    assert [r.url.params.get("cursor") for r in server.requests] == [None, "2"]
    assert all(r.url.params["tag"] == "x" for r in server.requests)


def sse(chunks: list[str], kind: str, then: Exception | None = None) -> httpx.Response:
    """An event-stream answer that sends ``chunks`` and then fails with ``then``."""
    data = [c.encode() for c in chunks]
    if kind == "sync":

        def body() -> Iterator[bytes]:
            yield from data
            if then is not None:
                raise then

        content: Any = body()
    else:

        async def abody() -> AsyncIterator[bytes]:
            for chunk in data:
                yield chunk
            if then is not None:
                raise then

        content = abody()
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)


def metrics_event(event_id: int) -> str:
    points = [{"step": event_id, "name": "train/loss", "value": 1.0}]
    return f"id: {event_id}\nevent: metrics\ndata: {json.dumps({'points': points})}\n\n"


def status_event(status: str) -> str:
    return f"event: status\ndata: {json.dumps(job_json(status=status))}\n\n"


@KINDS
def test_a_cut_stream_resumes_with_last_event_id(kind: str) -> None:
    cut = httpx.ReadError("connection reset")
    server = Server(
        lambda r: sse(
            [status_event("RUNNING"), metrics_event(1), ": ping\n\n", metrics_event(2)], kind, cut
        ),
        httpx.ConnectError("refused"),  # the first reconnection fails too
        lambda r: sse(
            [status_event("RUNNING"), metrics_event(3), status_event("SUCCEEDED")], kind, cut
        ),
    )
    events = run(kind, server, lambda c: list(c.stream("j1")), retries=3)
    steps = [e.data["points"][0]["step"] for e in events if e.kind == "metrics"]
    assert steps == [1, 2, 3]
    assert events[-1].status == JobStatus.SUCCEEDED  # the cut after the end is just the end
    assert [r.headers.get("Last-Event-ID") for r in server.requests] == [None, "2", "2"]
    assert all(r.headers["Accept"] == "text/event-stream" for r in server.requests)


@KINDS
def test_a_stream_that_never_delivers_gives_up(kind: str) -> None:
    # the server accepts and drops every connection before any event: the retries
    # start afresh only when an event arrives, so this ends instead of looping forever
    server = Server(lambda r: sse([": ping\n\n"], kind, httpx.ReadError("reset")))
    with pytest.raises(errors.ConnectionFailed):
        run(kind, server, lambda c: list(c.stream("j1")), retries=3)
    assert len(server.requests) == 3
    once = Server(lambda r: sse([metrics_event(1)], kind, httpx.ReadError("reset")))
    with pytest.raises(errors.ConnectionFailed):
        run(kind, once, lambda c: list(c.stream("j1", reconnect=False)))
    assert len(once.requests) == 1
    missing = Server(httpx.Response(404, json={"message": "no job j1"}))
    with pytest.raises(errors.NotFound, match="no job j1"):
        run(kind, missing, lambda c: list(c.stream("j1")))
    assert len(missing.requests) == 1


@KINDS
def test_wait_polls_until_the_end(kind: str) -> None:
    server = Server(
        httpx.Response(200, json=job_json(status="QUEUED")),
        httpx.Response(200, json=job_json(status="RUNNING")),
        httpx.Response(200, json=job_json(status="SUCCEEDED")),
    )
    job = run(kind, server, lambda c: c.wait("j1", poll_interval=0.01))
    assert job.status == JobStatus.SUCCEEDED and len(server.requests) == 3
    stuck = Server(httpx.Response(200, json=job_json(status="RUNNING")))
    with pytest.raises(errors.WaitTimeout):
        run(kind, stuck, lambda c: c.wait("j1", timeout=0.05, poll_interval=0.01))
