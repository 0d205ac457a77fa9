"""Today's client against a newer server: answers carry fields this client has never heard of.

The server is the real service (``svc``); between it and the client sits a
transport that adds an unknown field to every object of every JSON answer,
walking each answer with its response model so nested models (``LatestMetric``
in a ``Job``, ``MetricSeries`` in a ``MetricHistory``, ``ArmSummary`` in a
``Comparison``, ``FieldError`` in an error body...) get one too, and free-form
mappings (a job's stored ``spec``) are left alone. Every client call must still
work, with the sync and the async client, and every response model of
``alto_client.models`` must have been exercised. Requests stay strict.
"""

from __future__ import annotations

import asyncio
import re
import types
import typing
import uuid
from typing import Any

import httpx
import pytest
from alto_client import errors, models, study
from alto_client.client import AsyncClient, Client
from alto_client.models import JobStatus
from alto_client.spec import JobSpec, SpecError
from blocking import Blocking
from livesvc import TINY_SPEC, LiveService
from pydantic import BaseModel, ValidationError

pytestmark = pytest.mark.timeout(180)

EXTRA = "x_added_by_a_newer_server"
EXTRA_VALUE = {"nested": [1, {"deep": True}], "note": "ignore me"}

REQUEST_MODELS = {
    models.Arm,
    models.ComparisonRequest,
    study.StudyRequest,
    study.StudyArm,
    study.SearchRange,
    study.Budget,
    study.Tuning,
}

ROUTES: list[tuple[str, str, type[BaseModel]]] = [
    ("GET", r"/v1/jobs", models.JobList),
    ("POST", r"/v1/jobs", models.Job),
    ("GET", r"/v1/jobs/[^/]+", models.Job),
    ("POST", r"/v1/jobs/[^/]+/cancel", models.Job),
    ("GET", r"/v1/jobs/[^/]+/metrics", models.MetricHistory),
    ("GET", r"/v1/comparisons", models.ComparisonList),
    ("POST", r"/v1/comparisons", models.Comparison),
    ("GET", r"/v1/comparisons/[^/]+", models.Comparison),
    ("GET", r"/v1/comparisons/[^/]+/curves", models.ComparisonCurves),
    ("POST", r"/v1/studies/plan", study.StudyPlan),
    ("POST", r"/v1/studies", study.Study),
    ("GET", r"/v1/studies", study.StudyList),
    ("GET", r"/v1/studies/[^/]+", study.Study),
    ("POST", r"/v1/studies/[^/]+/cancel", study.Study),
]


def response_models() -> set[type[BaseModel]]:
    """Every model of ``alto_client.models`` and ``alto_client.study`` that a server
    sends (not the requests)."""
    public = [getattr(models, name) for name in models.__all__]
    public += [getattr(study, name) for name in study.__all__]
    found = {obj for obj in public if isinstance(obj, type) and issubclass(obj, BaseModel)}
    return found - REQUEST_MODELS


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _inject_value(annotation: Any, value: Any, seen: set[type[BaseModel]]) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple) and isinstance(value, list) and args:
        return [_inject_value(args[0], item, seen) for item in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {key: _inject_value(args[1], item, seen) for key, item in value.items()}
    found = _models_in(annotation)
    if found and isinstance(value, dict):
        return inject(found[0], value, seen)
    return value


def inject(model: type[BaseModel], data: Any, seen: set[type[BaseModel]]) -> Any:
    """``data`` (an answer shaped like ``model``) with an unknown field in every object."""
    if not isinstance(data, dict):
        return data
    seen.add(model)
    fields = model.model_fields
    out = {
        key: _inject_value(fields[key].annotation, value, seen) if key in fields else value
        for key, value in data.items()
    }
    out[EXTRA] = EXTRA_VALUE
    return out


def model_for(request: httpx.Request, status: int) -> type[BaseModel] | None:
    if status >= 400:
        return models.ErrorResponse
    for method, pattern, model in ROUTES:
        if request.method == method and re.fullmatch(pattern, request.url.path):
            return model
    return None


class NewerServer:
    """Rewrites the real service's JSON answers; event streams pass untouched."""

    def __init__(self) -> None:
        self.seen: set[type[BaseModel]] = set()
        self.error_bodies: list[Any] = []
        self.rewritten = 0

    def rewrite(self, request: httpx.Request, response: httpx.Response) -> httpx.Response:
        model = model_for(request, response.status_code)
        body = response.json()
        body = inject(model, body, self.seen) if model is not None else body
        if isinstance(body, dict) and model is None:
            body = {**body, EXTRA: EXTRA_VALUE}  # e.g. the logs answer: no model, still JSON
        if response.status_code >= 400:
            self.error_bodies.append(body)
        self.rewritten += 1
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in {"content-length", "content-encoding"}
        }
        return httpx.Response(response.status_code, headers=headers, json=body, request=request)

    @staticmethod
    def is_json(response: httpx.Response) -> bool:
        return response.headers.get("content-type", "").startswith("application/json")


class SyncNewer(httpx.BaseTransport):
    def __init__(self, server: NewerServer) -> None:
        self.server = server
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not self.server.is_json(response):
            return response
        response.read()
        response.close()
        return self.server.rewrite(request, response)


class AsyncNewer(httpx.AsyncBaseTransport):
    def __init__(self, server: NewerServer) -> None:
        self.server = server
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not self.server.is_json(response):
            return response
        await response.aread()
        await response.aclose()
        return self.server.rewrite(request, response)


def every_call(client: Any) -> None:
    """Each method of the client once, against answers full of unknown fields."""
    spec = {**TINY_SPEC, "tags": [*TINY_SPEC["tags"], f"c{uuid.uuid4().hex[:8]}"]}
    tag = spec["tags"][-1]
    job = client.submit(spec)
    assert job.id and job.spec["name"] == "tiny-sim"
    final = client.wait(job.id, timeout=60, poll_interval=0.1)
    assert final.status == JobStatus.SUCCEEDED
    assert final.latest_metrics["train/loss"].step == 12  # LatestMetric, nested
    assert [j.id for j in client.jobs(tag=tag, page_size=1)] == [job.id]
    assert client.jobs_page(tag=tag, limit=5).items[0].id == job.id
    history = client.metrics(job.id, ["train/loss", "val/loss"])
    assert {s.name for s in history.series} == {"train/loss", "val/loss"}
    assert "training" in client.logs(job.id)
    events = list(client.stream(job.id))
    assert events[-1].kind in {"status", "metrics"}
    comp = client.compare(spec, ["alto", "adamw"], seeds=1)
    done = client.wait_comparison(comp.id, timeout=60, poll_interval=0.1)
    assert done.status == JobStatus.SUCCEEDED and done.arms[0].final_val_loss_mean is not None
    assert client.comparison(comp.id).id == comp.id
    assert comp.id in [c.id for c in client.comparisons(limit=5)]
    assert client.comparisons_page(limit=1).items[0].id == comp.id
    curves = client.comparison_curves(comp.id)
    assert {a.name for a in curves.arms} == {"alto", "adamw"}
    study_body = {
        "spec": spec,
        "arms": [
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 1e-3, "high": 1e-2}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 1e-4, "high": 1e-3}},
            },
        ],
        "batch_sizes": [8],
        "budget": {"steps": 12},
        "tuning": {"trials": 1},
        "seeds": [0],
        "baseline": "adamw",
    }
    assert client.plan_study(study_body).jobs == 4
    started = client.submit_study(study_body)
    ended = client.wait_study(started.id, timeout=120, poll_interval=0.2)
    assert ended.phase == "done" and ended.batches[0].arms[0].trials
    assert client.study(started.id).id == started.id
    assert started.id in [s.id for s in client.studies(limit=5)]
    assert client.studies_page(limit=1).items[0].id == started.id
    with pytest.raises(errors.Conflict):
        client.cancel_study(started.id)  # it has ended
    long_job = client.submit({**spec, "training": {**spec["training"], "steps": 5000}})
    assert client.cancel(long_job.id).id == long_job.id
    with pytest.raises(errors.ValidationFailed) as bad:
        client.request("POST", "/v1/jobs", json={"training": {"steps": 0}})
    assert "training.steps" in {e.field for e in bad.value.field_errors}
    with pytest.raises(errors.NotFound):
        client.job("ffffffffffffffff")
    assert client.health()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_call_survives_unknown_fields_in_every_answer(kind: str, svc: LiveService) -> None:
    server = NewerServer()
    if kind == "sync":
        with Client(svc.url, svc.admin_token, backoff=0.01, transport=SyncNewer(server)) as c:
            every_call(c)
    else:

        async def main() -> None:
            transport = AsyncNewer(server)
            async with AsyncClient(
                svc.url, svc.admin_token, backoff=0.01, transport=transport
            ) as c:
                await asyncio.to_thread(every_call, Blocking(c, asyncio.get_running_loop()))

        asyncio.run(main())
    assert server.rewritten > 10
    # the wire models themselves (not only the client's error parser) read the error bodies
    for body in server.error_bodies:
        parsed = models.ErrorResponse.model_validate(body)
        assert EXTRA not in parsed.model_dump()
    # every response model, nested ones included, met an unknown field, except the
    # ingestion answer, which the engine reads and no client call returns
    untested = response_models() - server.seen
    assert untested == {models.IngestResult}, untested
    ingest = inject(models.IngestResult, {"accepted": 3, "duplicates": 1}, set())
    assert models.IngestResult.model_validate(ingest).accepted == 3


def test_requests_stay_strict() -> None:
    assert {models.FieldError, models.LatestMetric, models.ArmSummary} <= response_models()
    for model in REQUEST_MODELS:
        assert model.model_config.get("extra") == "forbid", model
    arm = {"name": "alto", "optimizer": {"name": "alto"}}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        models.Arm.model_validate({**arm, EXTRA: 1})
    request = {"spec": TINY_SPEC, "arms": [arm, {**arm, "name": "b"}], "baseline": "alto"}
    assert models.ComparisonRequest.model_validate(request).baseline == "alto"
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        models.ComparisonRequest.model_validate({**request, EXTRA: 1})
    with pytest.raises(SpecError):
        JobSpec.from_dict({**TINY_SPEC, "training": {**TINY_SPEC["training"], "stepz": 3}})
