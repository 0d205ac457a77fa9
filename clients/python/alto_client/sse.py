"""A server-sent-events parser (the WHATWG event-stream format).

Kept separate from the HTTP code so the same parser serves the sync and the
async client and can be tested line by line: the stream is fed lines without
their terminators, and every blank line dispatches the event gathered so far.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` when unnamed), data, id and retry."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data decoded as JSON (the service sends JSON payloads)."""
        return json.loads(self.data)


class SSEParser:
    """Incremental parser: ``feed(line)`` returns an event when one is complete.

    ``last_event_id`` survives across events, as the spec requires, so a client
    that reconnects can send it as ``Last-Event-ID`` and miss nothing.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self._has_fields = False
        self.last_event_id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """Consume one line (without its line terminator)."""
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment; servers send these as keep-alives
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
            self._has_fields = True
        elif name == "data":
            self._data.append(value)
            self._has_fields = True
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
            self._has_fields = True
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
            self._has_fields = True
        # any other field name is ignored, as the format requires
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_fields:
            return None
        has_data = bool(self._data)
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
            retry=self._retry,
        )
        self._event = ""
        self._data = []
        self._retry = None
        self._has_fields = False
        # an event without any data line is not dispatched (only its id is kept)
        return event if has_data else None
