"""Answers computed from a comparison's metrics, kept until the metrics change.

A comparison's summary and plot are pure functions of its jobs' statuses and points.
Points are only ever added (a re-posted point is skipped, a deleted job takes its
comparison with it), and every added point is counted in the job's rollups in the same
transaction (`service.rollups`). So a few rows of the coarsest rollup level say whether
anything changed: per job, its status, how many points it holds and its last step.
That is the data version; an answer is cached under (what, comparison, version), and the
version is also the plot's ETag, so a browser's refresh of an unchanged plot is a 304.

The version is read before the data: a request that races an upload may cache
slightly newer data under the older version, and the next request (which sees the
newer version) computes afresh. Each server process has its own cache (a few MB).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session
from starlette.responses import Response

from service.rollups import COARSEST

T = TypeVar("T")

# bump when the rendering of a cached answer changes (a deploy invalidates old ETags)
RENDER_VERSION = "1"

_COUNTS = text(
    "SELECT job_seq, SUM(n), MAX(last_step) FROM metric_rollups "
    f"WHERE level = {COARSEST} AND job_seq IN :seqs GROUP BY job_seq"
).bindparams(bindparam("seqs", expanding=True))


def data_version(s: Session, jobs: Sequence[tuple[int, str]], extra: str = "") -> str:
    """A digest of (job seq, status, points stored, last step) over `jobs` ((seq,
    status) pairs) and `extra` (what else the answer reads, e.g. a study's phase): it
    changes whenever a job's status changes or a point is added."""
    counts: dict[int, tuple[int, int]] = {}
    seqs = [seq for seq, _ in jobs]
    if seqs:
        for seq, n, last in s.execute(_COUNTS, {"seqs": seqs}):
            counts[int(seq)] = (int(n or 0), int(last if last is not None else -1))
    parts = [
        f"{seq}:{status}:{counts.get(seq, (0, -1))[0]}:{counts.get(seq, (0, -1))[1]}"
        for seq, status in sorted(jobs)
    ]
    raw = RENDER_VERSION + "|" + ",".join(parts) + "|" + extra
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class RenderCache:
    """A bounded, thread-safe LRU of computed answers."""

    def __init__(self, max_entries: int = 128) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
        value = compute()  # outside the lock: a slow render must not block other keys
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_ATTACH_LOCK = threading.Lock()


def cache_of(app_state: Any) -> RenderCache:
    """The render cache of one app (`request.app.state`), made on first use."""
    cache = getattr(app_state, "render_cache", None)
    if cache is None:
        with _ATTACH_LOCK:
            cache = getattr(app_state, "render_cache", None)
            if cache is None:
                cache = RenderCache()
                app_state.render_cache = cache
    return cache


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (quoted, weak or `*`)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def png_answer(etag: str, png: bytes | None) -> Response:
    """A cached plot's answer: the PNG, or a 304 when the caller already holds `etag`
    (`png` is None); either way with the ETag and no-cache (revalidate every time)."""
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if png is None:
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)
