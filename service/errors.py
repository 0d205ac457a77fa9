"""Every error answer is an `ErrorResponse`: a sentence plus the bad fields, never a trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from alto_client.models import ErrorResponse, FieldError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.body import BodyFieldError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with a status code and a message for the client."""

    def __init__(
        self,
        status_code: int,
        message: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.errors = errors or []
        self.headers = headers


def error_response(
    status_code: int,
    message: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error answer in the shared format."""
    body = ErrorResponse(message=message, errors=errors or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


async def send_error(
    send: Send, status_code: int, message: str, headers: dict[str, str] | None = None
) -> None:
    """The same JSON error answer, sent by ASGI middleware that answers before the app.

    It closes the connection: the request's body was never read, and on a kept-alive
    connection the server would have to read and discard all of it first."""
    data = json.dumps(ErrorResponse(message=message, errors=[]).model_dump(mode="json")).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})


def _loc(loc: Any) -> list[str | int]:
    out: list[str | int] = []
    for part in loc or ():
        out.append(part if isinstance(part, int) else str(part))
    return out


_ECHOED_TEXT = 60  # longest text input repeated in a message


def _with_value(msg: str, error: dict[str, Any]) -> str:
    """pydantic's built-in messages say what is allowed ("Input should be less than or
    equal to 64") but not what was sent; add a short scalar input ("got 65")."""
    value = error.get("input")
    if "got " in msg or isinstance(value, dict | list) or value is None:
        return msg
    if isinstance(value, str) and (len(value) > _ECHOED_TEXT or not value.isprintable()):
        return msg
    if not isinstance(value, str | int | float | bool):
        return msg
    return f"{msg}, got {value!r}"


def field_errors(errors: list[dict[str, Any]]) -> list[FieldError]:
    """pydantic/FastAPI error dicts as FieldErrors (location, message naming the value
    sent, type)."""
    return [
        FieldError(
            loc=_loc(e.get("loc")),
            msg=_with_value(str(e.get("msg", "invalid")), e),
            type=str(e.get("type", "value_error")),
        )
        for e in errors
    ]


def _summary(errors: list[FieldError]) -> str:
    shown = "; ".join(
        f"{'.'.join(str(p) for p in e.loc if p != 'body') or 'body'}: {e.msg}" for e in errors[:10]
    )
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return f"request is invalid ({len(errors)} problem(s)): {shown}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to a JSON `ErrorResponse`."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(list(exc.errors()))
        if any(e.type == "json_invalid" for e in errors):
            return error_response(400, "request body is not valid JSON", errors)
        return error_response(422, _summary(errors), errors)

    @app.exception_handler(BodyFieldError)
    async def _body_field(_request: Request, exc: BodyFieldError) -> JSONResponse:
        return error_response(422, str(exc.detail), exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the service log")
