"""The async client driven from a worker thread, so one test scenario checks both clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from alto_client.client import AsyncClient


class Blocking:
    """``AsyncClient``'s methods called like ``Client``'s: each call runs on the client's
    event loop and is waited for; an async iterator is collected into a list."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if isinstance(result, AsyncIterator):
                return self._collect(result)
            return asyncio.run_coroutine_threadsafe(result, self._loop).result()

        return call

    def _collect(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [item async for item in iterator]

        return iter(asyncio.run_coroutine_threadsafe(collect(), self._loop).result())
