"""The SSE parser against the event-stream format's rules."""

from __future__ import annotations

from alto_client.sse import ServerSentEvent, SSEParser


def _feed(text: str) -> tuple[list[ServerSentEvent], SSEParser]:
    parser = SSEParser()
    events = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            events.append(event)
    return events, parser


def test_named_event_with_json_data_and_id() -> None:
    events, parser = _feed('id: 7\nevent: metrics\ndata: {"step": 3}\n\n')
    assert events == [ServerSentEvent(event="metrics", data='{"step": 3}', id="7")]
    assert events[0].json() == {"step": 3}
    assert parser.last_event_id == "7"


def test_multiline_data_is_joined_with_newlines_and_unnamed_is_message() -> None:
    events, _ = _feed("data: a\ndata:b\ndata:  c\n\n")
    assert [e.event for e in events] == ["message"]
    # one leading space after the colon is dropped, further spaces are data
    assert events[0].data == "a\nb\n c"


def test_comments_and_unknown_fields_are_ignored_and_crlf_is_accepted() -> None:
    events, _ = _feed(": keep-alive\r\nfoo: bar\r\ndata: x\r\n\r\n")
    assert [(e.event, e.data) for e in events] == [("message", "x")]


def test_event_without_data_is_not_dispatched_but_keeps_its_id() -> None:
    events, parser = _feed("event: ping\nid: 41\n\ndata: after\n\n")
    assert [e.data for e in events] == ["after"]
    assert events[0].id == "41"
    assert parser.last_event_id == "41"


def test_empty_data_line_dispatches_empty_string_and_retry_is_parsed() -> None:
    events, _ = _feed("retry: 1500\ndata:\n\nretry: soon\ndata: z\n\n")
    assert events[0].data == "" and events[0].retry == 1500
    assert events[1].retry is None


def test_blank_lines_alone_dispatch_nothing() -> None:
    events, _ = _feed("\n\n\n")
    assert events == []
