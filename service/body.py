"""Request bodies as the service accepts them: JSON whose every string is valid Unicode,
parsed off the event loop.

Python's `json` accepts a lone UTF-16 surrogate (`"\\ud800"` is legal JSON text), but
such a string cannot be encoded as UTF-8: storing it works on SQLite, then every later
serialization of the row (the spec sent to Ray, a listing) raises. So the check sits
where text enters the service, for every route with a JSON body, and names the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from alto_client.models import FieldError
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException


class BodyFieldError(HTTPException):
    """A body that parsed as JSON but holds a value the service refuses; 422 with the
    fields. (An HTTPException, so FastAPI's body reader passes it through unchanged.)"""

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        super().__init__(status_code=422, detail=message)
        self.errors = errors


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_strings(value: Any, loc: list[str | int], limit: int = 20) -> list[FieldError]:
    """Every string (or object key) under `value` that is not valid Unicode, located."""
    out: list[FieldError] = []
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack and len(out) < limit:
        item, where = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                out.append(_surrogate_error(where, item))
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and not _is_unicode(key):
                    out.append(_surrogate_error(where, key, is_key=True))
                    continue
                stack.append((sub, [*where, key]))
        elif isinstance(item, list):
            stack.extend((sub, [*where, i]) for i, sub in enumerate(item))
    return out


def _surrogate_error(loc: list[str | int], text: str, is_key: bool = False) -> FieldError:
    bad = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    what = "a key" if is_key else "text"
    return FieldError(
        loc=loc,
        msg=f"must be valid Unicode {what}: it holds a lone UTF-16 surrogate "
        f"(\\u{ord(bad):04x}); send each character as UTF-8 or as a surrogate pair",
        type="string_unicode",
    )


def parse_json_body(raw: bytes) -> Any:
    """JSON text to Python values, refusing strings that are not valid Unicode."""
    data = json.loads(raw)
    problems = invalid_strings(data, ["body"])
    if problems:
        where = ".".join(str(p) for p in problems[0].loc[1:]) or "body"
        raise BodyFieldError(f"{where}: {problems[0].msg}", problems)
    return data


class CheckedJSONRequest(Request):
    """A request whose `json()` parses in a worker thread and refuses invalid Unicode."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            self._json = await run_in_threadpool(parse_json_body, raw)
        return self._json


class CheckedJSONRoute(APIRoute):
    """Routes of the routers with JSON bodies: their requests are `CheckedJSONRequest`s."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedJSONRequest(request.scope, request.receive))

        return checked
