"""Metric uploads: parsed, checked and stored off the event loop, in bounded pieces.

An upload of the largest allowed size is about a megabyte of JSON. Parsing and
validating it in one call holds the GIL for a long stretch; here the JSON is parsed
once (in C, quickly), then the points are validated a thousand at a time, so the
event loop gets the interpreter back between pieces and status polls stay fast while
jobs upload.
"""

from __future__ import annotations

import json
import math
from typing import Any

from alto_client.metrics import MetricBatch, MetricPoint
from alto_client.models import FieldError, IngestResult
from pydantic import TypeAdapter, ValidationError

from service.body import parse_json_body
from service.errors import ApiError, field_errors
from service.repo import insert_points
from service.state import ServiceState
from service.validation import MAX_STEP, METRIC_NAME_RE

METRIC_BATCH_REF = "#/components/schemas/MetricBatch"
VALIDATE_CHUNK = 1000
_POINTS = TypeAdapter(list[MetricPoint])
_MAX_ERRORS = 50


def parse_upload(raw: bytes, limit: int) -> list[MetricPoint]:
    """The points of one upload body, or an ApiError naming what is wrong."""
    try:
        data = parse_json_body(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "request body is not valid JSON",
            [
                FieldError(
                    loc=["body", exc.pos], msg=f"JSON decode error: {exc.msg}", type="json_invalid"
                )
            ],
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        envelope: Any = data
    else:
        envelope = {**data, "points": []}
    try:
        MetricBatch.model_validate(envelope)  # the envelope: keys and types, not the points
    except ValidationError as exc:
        errors = _located(exc, ["body"])
        raise ApiError(422, f"body is invalid: {errors[0].msg}", errors) from None
    raw_points: list[Any] = data["points"]
    if len(raw_points) > limit:
        raise ApiError(413, f"points: at most {limit} points per request, got {len(raw_points)}")
    points: list[MetricPoint] = []
    errors: list[FieldError] = []
    for start in range(0, len(raw_points), VALIDATE_CHUNK):
        piece = raw_points[start : start + VALIDATE_CHUNK]
        try:
            checked = _POINTS.validate_python(piece)
        except ValidationError as exc:
            for e in _located(exc, ["body", "points"]):
                if isinstance(e.loc[2], int):
                    e.loc[2] += start
                errors.append(e)
            if len(errors) >= _MAX_ERRORS:
                break
            continue
        errors.extend(_point_problems(checked, start))
        if len(errors) >= _MAX_ERRORS:
            break
        points.extend(checked)
    if errors:
        raise ApiError(422, f"points are invalid: {errors[0].msg}", errors[:_MAX_ERRORS])
    return points


def _located(exc: ValidationError, prefix: list[str | int]) -> list[FieldError]:
    errors = field_errors(list(exc.errors()))
    for e in errors:
        e.loc = [*prefix, *e.loc]
    return errors


def _point_problems(points: list[MetricPoint], offset: int) -> list[FieldError]:
    """What the service adds to a point's own schema: storable steps, names, times."""
    out: list[FieldError] = []
    for i, p in enumerate(points, start=offset):
        if p.step > MAX_STEP:
            out.append(FieldError(loc=["body", "points", i, "step"], msg=f"must be <= {MAX_STEP}"))
        if not METRIC_NAME_RE.match(p.name):
            out.append(
                FieldError(
                    loc=["body", "points", i, "name"],
                    msg="a metric name is 1-200 letters, digits or _.:/- characters",
                )
            )
        if not math.isfinite(p.time):
            out.append(FieldError(loc=["body", "points", i, "time"], msg="must be finite"))
    return out


def ingest_upload(state: ServiceState, seq: int, raw: bytes) -> IngestResult:
    """Parse, check and store one upload for job `seq` (runs in a worker thread)."""
    points = parse_upload(raw, state.settings.max_metric_points_per_request)
    with state.factory() as s:
        accepted = insert_points(s, seq, ((p.step, p.name, p.value, p.time) for p in points))
        s.commit()
    state.metrics.points.inc(accepted)
    return IngestResult(accepted=accepted, duplicates=len(points) - accepted)
