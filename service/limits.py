"""Request-body size limits, enforced before any handler reads the body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import send_error
from service.guard import INGEST_PATH


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over their limit, judged by Content-Length or, for
    chunked uploads, by reading at most the limit before the app sees the body.

    Metric uploads (`service.guard.INGEST_PATH`) may be up to `upload_max_bytes`; every
    other body (a spec, a comparison) up to `other_max_bytes`: no spec needs more."""

    def __init__(self, app: ASGIApp, upload_max_bytes: int, other_max_bytes: int) -> None:
        self.app = app
        self.upload_max_bytes = upload_max_bytes
        self.other_max_bytes = other_max_bytes

    def limit_for(self, path: str) -> int:
        """The largest body accepted at `path`."""
        upload = INGEST_PATH.match(path) is not None
        return self.upload_max_bytes if upload else self.other_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers", []))
        if b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                await send_error(send, 400, "Content-Length is not a number")
                return
            if length > limit:
                await send_error(send, 413, _too_large(length, limit))
                return
            # the server delivers no more than Content-Length bytes, checked above
            await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)  # no GET handler reads a body
            return
        # no length given (chunked upload): read the body up to the limit, then replay it
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                await send_error(send, 413, _too_large(seen, limit))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int) -> str:
    return f"request body of {size} bytes is over the limit of {limit} bytes"
