"""Exceptions the client raises.

The service answers every user error with a JSON body that names the problem
(``{"message": ..., "errors": [{"field": ..., "message": ...}]}``); the client
turns that body into one exception per HTTP status family so callers can catch
``NotFound`` or ``ValidationFailed`` without parsing anything, and so the CLI can
print one clear line. Connection problems that survive the retries become
``ConnectionFailed`` carrying the URL that could not be reached.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

_SOURCES = frozenset({"body", "query", "path", "header"})


def _loc_of(field: str) -> list[str | int]:
    """``"data.files.0"`` as a location: ``["data", "files", 0]``."""
    if not field:
        return []
    return [int(p) if p.isdigit() and str(int(p)) == p else p for p in field.split(".")]


class FieldError(BaseModel):
    """One bad field: where it is (``loc``) and what is wrong with it (``msg``).

    The one definition of "one bad field" for the whole project: the service
    sends a list of these in every error body (``ErrorResponse.errors``, the
    wire shape FastAPI and pydantic use: ``loc``, ``msg``, ``type``), the client
    raises them in ``ApiError.field_errors``, and a spec checked on the client
    lists them in ``SpecError.problems`` (``alto_client.spec.SpecProblem`` is
    this class). ``FieldError("training.steps", "must be > 0")`` builds one from
    a dotted path; ``field`` and ``message`` read it back that way.

    Unknown keys are ignored when parsing, so a newer server may add some. Not
    frozen: the service re-roots locations in place (``e.loc = ["body", ...]``).
    """

    model_config = ConfigDict(extra="ignore")

    loc: list[str | int] = Field(default_factory=list)
    msg: str
    type: str = "value_error"

    def __init__(self, field: str | None = None, message: str | None = None, **data: Any) -> None:
        if field is not None:
            data["loc"] = _loc_of(field)
        if message is not None:
            data["msg"] = message
        super().__init__(**data)

    @property
    def field(self) -> str:
        """The location as a dotted path (``training.steps``, ``data.files.0``)."""
        return ".".join(str(part) for part in self.loc)

    @property
    def message(self) -> str:
        return self.msg

    def __str__(self) -> str:
        return f"{self.field}: {self.msg}" if self.loc else self.msg


class AltoError(Exception):
    """Base class of everything the client raises on purpose."""


class ConnectionFailed(AltoError):
    """The server could not be reached (after the retries allowed for the call)."""

    def __init__(self, url: str, cause: BaseException | None = None, attempts: int = 1) -> None:
        self.url = url
        self.cause = cause
        self.attempts = attempts
        reason = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"cannot reach the ALTO service at {url}{tries}{reason}")


class WaitTimeout(AltoError):
    """``wait()`` gave up before the job reached an end state."""

    def __init__(self, job_id: str, timeout: float, last_status: str | None) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.last_status = last_status
        super().__init__(
            f"job {job_id} did not finish within {timeout:g} s (last status: {last_status})"
        )


class ApiError(AltoError):
    """The server answered with an error status; carries its message and field errors."""

    status_code: int = 0

    def __init__(
        self,
        status_code: int,
        message: str,
        field_errors: list[FieldError] | None = None,
        *,
        method: str = "",
        url: str = "",
        body: Any = None,
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.field_errors = list(field_errors or [])
        self.method = method
        self.url = url
        self.body = body
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.status_code} {self.message}"
        if self.field_errors:
            text += "; " + "; ".join(str(e) for e in self.field_errors)
        return text


class BadRequest(ApiError):
    """400: the request could not be understood."""


class Unauthorized(ApiError):
    """401: no token, or a token the server does not know."""


class Forbidden(ApiError):
    """403: the token is valid but may not do this."""


class NotFound(ApiError):
    """404: no such job or comparison (or it belongs to someone else)."""


class Conflict(ApiError):
    """409: the request clashes with the resource's state."""


class PayloadTooLarge(ApiError):
    """413: the body is larger than the server accepts."""


class ValidationFailed(ApiError):
    """422: the spec or parameters are invalid; ``field_errors`` lists every problem."""


class ServerError(ApiError):
    """5xx: the server failed; retried for idempotent calls before it is raised."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
}


def _location(loc: Any) -> list[str | int]:
    if isinstance(loc, (list, tuple)):
        parts = [p if isinstance(p, int) else str(p) for p in loc]
        # FastAPI prefixes the location with where the value came from.
        if parts and parts[0] in _SOURCES:
            parts = parts[1:]
        return parts
    return [] if loc is None else _loc_of(str(loc))


def _parse_field_errors(items: Any) -> list[FieldError]:
    out: list[FieldError] = []
    if not isinstance(items, list):
        return out
    for item in items:
        if isinstance(item, dict):
            field = item.get("field")
            loc = _loc_of(str(field)) if field is not None else _location(item.get("loc"))
            message = item.get("message") or item.get("msg") or ""
            kind = item.get("type")
            extra = {"type": kind} if isinstance(kind, str) and kind else {}
            out.append(FieldError(loc=loc, msg=str(message), **extra))
        else:
            out.append(FieldError("", str(item)))
    return out


def parse_error_body(body: Any, fallback: str) -> tuple[str, list[FieldError]]:
    """Pull the message and field errors out of an error body of any shape we know.

    Our service answers ``ErrorResponse`` (``message`` + ``errors``); FastAPI's own
    defaults answer ``{"detail": str | list}``; a proxy may answer plain text.
    """
    if isinstance(body, dict):
        fields = _parse_field_errors(body.get("errors") or body.get("field_errors"))
        message = body.get("message")
        detail = body.get("detail")
        if isinstance(detail, list):
            fields = fields or _parse_field_errors(detail)
        elif isinstance(detail, dict) and not message:
            inner_message, inner_fields = parse_error_body(detail, fallback)
            message = inner_message
            fields = fields or inner_fields
        elif isinstance(detail, str) and not message:
            message = detail
        if not message:
            message = fallback if not fields else "invalid request"
        return str(message), fields
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], []
    return fallback, []


def error_from_response(response: httpx.Response) -> ApiError:
    """Build the exception for an error response (status >= 400)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    message, fields = parse_error_body(body, response.reason_phrase or "error")
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    request = response.request
    return cls(
        status,
        message,
        fields,
        method=request.method if request is not None else "",
        url=str(request.url) if request is not None else "",
        body=body,
    )


_UNION_TAGS = {"alto", "adamw", "e"}


def describe_validation_error(exc: Any) -> str:
    """One line for a pydantic ``ValidationError``: ``field: problem (got x); ...``.

    The offending value is quoted only when short, so a model-level error does not
    dump the whole spec into the user's terminal.
    """
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in _UNION_TAGS)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        got = repr(err.get("input"))
        if "input" in err and err.get("type") != "missing" and len(got) <= 60:
            msg = f"{msg} (got {got})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
