"""Error bodies of every shape become typed exceptions with message and field errors."""

from __future__ import annotations

import httpx
import pytest
from alto_client import errors
from alto_client.errors import FieldError, error_from_response, parse_error_body


def _response(status: int, **kwargs: object) -> httpx.Response:
    request = httpx.Request("GET", "http://127.0.0.1:1/v1/jobs/x")
    return httpx.Response(status, request=request, **kwargs)  # type: ignore[arg-type]


def test_service_error_response_keeps_message_and_field_paths() -> None:
    body = {
        "message": "the job spec is invalid",
        "errors": [
            {"loc": ["body", "training", "micro_batch_size"], "msg": "must divide 16"},
            {"loc": ["body", "model", "hidden_size"], "msg": "not divisible by heads"},
        ],
    }
    exc = error_from_response(_response(422, json=body))
    assert isinstance(exc, errors.ValidationFailed)
    assert exc.status_code == 422
    assert exc.message == "the job spec is invalid"
    assert exc.field_errors == [
        FieldError("training.micro_batch_size", "must divide 16"),
        FieldError("model.hidden_size", "not divisible by heads"),
    ]
    assert "training.micro_batch_size: must divide 16" in str(exc)
    assert exc.method == "GET" and exc.url.endswith("/v1/jobs/x")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.Unauthorized),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (413, errors.PayloadTooLarge),
        (429, errors.ApiError),  # the service never sends 429: no class of its own
        (500, errors.ServerError),
        (503, errors.ServerError),
        (418, errors.ApiError),
    ],
)
def test_status_maps_to_exception_class(status: int, cls: type[errors.ApiError]) -> None:
    exc = error_from_response(_response(status, json={"message": "nope"}))
    assert type(exc) is cls
    assert exc.message == "nope"


def test_fastapi_detail_string_and_list_shapes() -> None:
    assert parse_error_body({"detail": "Not Found"}, "x") == ("Not Found", [])
    message, fields = parse_error_body(
        {"detail": [{"loc": ["query", "limit"], "msg": "must be >= 1", "type": "x"}]}, "fb"
    )
    assert message == "invalid request"
    assert fields == [FieldError(loc=["limit"], msg="must be >= 1", type="x")]
    assert fields[0].field == "limit" and fields[0].message == "must be >= 1"


def test_field_error_is_one_definition_for_wire_client_and_spec() -> None:
    from alto_client import models

    assert models.FieldError is errors.FieldError
    wire = models.ErrorResponse.model_validate(
        {"message": "bad", "errors": [{"loc": ["body", "data", "files", 0], "msg": "missing"}]}
    )
    assert wire.errors[0].loc == ["body", "data", "files", 0]
    # a dotted path reads back the same, list indices as ints, so both spellings are equal
    problem = FieldError("data.files.0", "missing")
    assert problem == FieldError(loc=["data", "files", 0], msg="missing")
    assert problem.field == "data.files.0" and str(problem) == "data.files.0: missing"
    assert str(FieldError("", "not valid YAML")) == "not valid YAML"
    assert problem == FieldError(field="data.files.0", message="missing")
    # the service re-roots a location in place (service/ingest.py, routers/comparisons.py)
    problem.loc = ["body", *problem.loc]
    problem.loc[3] += 1
    assert problem.loc == ["body", "data", "files", 1]
    assert wire.model_dump(mode="json")["errors"][0]["loc"] == ["body", "data", "files", 0]


def test_plain_text_and_empty_bodies_fall_back() -> None:
    exc = error_from_response(_response(502, text="Bad gateway from proxy"))
    assert exc.message == "Bad gateway from proxy"
    exc = error_from_response(_response(500, content=b""))
    assert exc.message == "Internal Server Error"


def test_connection_failed_names_the_url_and_attempts() -> None:
    exc = errors.ConnectionFailed("http://127.0.0.1:9", httpx.ConnectError("refused"), 4)
    assert "http://127.0.0.1:9" in str(exc) and "4 attempts" in str(exc) and "refused" in str(exc)
