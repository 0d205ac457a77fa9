"""Metric rollups: every metric is also kept in buckets of 2**k steps.

For each level k in `ROLLUP_LEVELS` (4..16: 16 to 65,536 steps) and each bucket
(`step >> k`) the table `metric_rollups` holds the point count, the count, sum,
minimum and maximum of the finite values, and the point at the bucket's largest step
(its step, value and time). These merge: two partial buckets combine by adding counts
and sums, taking the smaller minimum and the larger maximum, and keeping the `last` of
the larger step. So `insert_points` folds the points an upload really inserted into
bucket deltas and upserts them in the same transaction (re-posted points are not
inserted, so not counted twice), whatever order the steps arrive in.

Reading: a series of n points (after `since_step`) that fits in `max_points` is read
raw. A longer one is read at the finest level whose bucket count over the series' step
span, `(last >> k) - (first >> k) + 1`, is at most `max_points` (an upper bound on the
buckets that hold points, so the answer never has more); one point per bucket: the
bucket's last step and time, the mean of its finite values (None if it has none), and
its minimum and maximum. Past the coarsest level, consecutive buckets are merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.orm import Session

from service.db.tables import ROLLUP_LEVELS

COARSEST = ROLLUP_LEVELS[-1]


@dataclass
class Bucket:
    """A partial or whole bucket of one metric at one level (see the module doc)."""

    n: int
    vn: int
    vsum: float
    vmin: float | None
    vmax: float | None
    last_step: int
    last_value: float | None
    last_time: float

    @classmethod
    def of(cls, step: int, value: float | None, t: float) -> Bucket:
        if value is not None and math.isfinite(value):
            return cls(1, 1, value, value, value, step, value, t)
        return cls(1, 0, 0.0, None, None, step, value, t)

    def merge(self, o: Bucket) -> None:
        self.n += o.n
        self.vn += o.vn
        self.vsum += o.vsum
        if o.vmin is not None and (self.vmin is None or o.vmin < self.vmin):
            self.vmin = o.vmin
        if o.vmax is not None and (self.vmax is None or o.vmax > self.vmax):
            self.vmax = o.vmax
        if o.last_step > self.last_step:
            self.last_step, self.last_value, self.last_time = o.last_step, o.last_value, o.last_time

    @property
    def mean(self) -> float | None:
        return self.vsum / self.vn if self.vn else None


def fold(
    points: Iterable[tuple[int, str, float | None, float]],
    levels: Sequence[int] = ROLLUP_LEVELS,
) -> dict[tuple[str, int, int], Bucket]:
    """(step, name, value, time) points as buckets keyed by (name, level, bucket).

    Points fold into the finest level once; each coarser level merges the one below,
    so an upload costs one pass over its points plus a pass over its buckets per level.
    """
    out: dict[tuple[str, int, int], Bucket] = {}
    finest = levels[0]
    below: dict[tuple[str, int], Bucket] = {}
    for step, name, value, t in points:
        key = (name, step >> finest)
        b = below.get(key)
        if b is None:
            below[key] = Bucket.of(step, value, t)
        else:
            b.merge(Bucket.of(step, value, t))
    for name, bucket in below:
        out[(name, finest, bucket)] = below[(name, bucket)]
    prev = finest
    for level in levels[1:]:
        shift = level - prev
        here: dict[tuple[str, int], Bucket] = {}
        for (name, bucket), b in below.items():
            key = (name, bucket >> shift)
            have = here.get(key)
            if have is None:
                here[key] = Bucket(**vars(b))
            else:
                have.merge(b)
        for (name, bucket), b in here.items():
            out[(name, level, bucket)] = b
        below, prev = here, level
    return out


_UPSERT = text(
    "INSERT INTO metric_rollups (job_seq, name, level, bucket, n, vn, vsum, vmin, vmax, "
    "last_step, last_value, last_time) VALUES (:job_seq, :name, :level, :bucket, :n, :vn, "
    ":vsum, :vmin, :vmax, :last_step, :last_value, :last_time) "
    "ON CONFLICT (job_seq, name, level, bucket) DO UPDATE SET "
    "n = metric_rollups.n + excluded.n, "
    "vn = metric_rollups.vn + excluded.vn, "
    "vsum = metric_rollups.vsum + excluded.vsum, "
    "vmin = CASE WHEN metric_rollups.vmin IS NULL OR excluded.vmin < metric_rollups.vmin "
    "THEN excluded.vmin ELSE metric_rollups.vmin END, "
    "vmax = CASE WHEN metric_rollups.vmax IS NULL OR excluded.vmax > metric_rollups.vmax "
    "THEN excluded.vmax ELSE metric_rollups.vmax END, "
    "last_value = CASE WHEN excluded.last_step > metric_rollups.last_step "
    "THEN excluded.last_value ELSE metric_rollups.last_value END, "
    "last_time = CASE WHEN excluded.last_step > metric_rollups.last_step "
    "THEN excluded.last_time ELSE metric_rollups.last_time END, "
    "last_step = CASE WHEN excluded.last_step > metric_rollups.last_step "
    "THEN excluded.last_step ELSE metric_rollups.last_step END"
)


def add_points(
    s: Session, job_seq: int, points: Iterable[tuple[int, str, float | None, float]]
) -> None:
    """Fold newly inserted (step, name, value, time) points into job `job_seq`'s rollups,
    in the caller's transaction. Rows go in key order, so concurrent uploads of one job
    lock shared buckets in the same order (no deadlock on PostgreSQL)."""
    buckets = fold(points)
    if not buckets:
        return
    rows = [
        {"job_seq": job_seq, "name": name, "level": level, "bucket": bucket, **vars(b)}
        for (name, level, bucket), b in sorted(buckets.items(), key=lambda kv: kv[0])
    ]
    s.connection().execute(_UPSERT, rows)


# ---------------------------------------------------------------- reading


def level_for(first: int, last: int, max_points: int) -> int | None:
    """The finest level whose buckets over steps [first, last] number at most
    `max_points`; None when even the coarsest has more."""
    for level in ROLLUP_LEVELS:
        if (last >> level) - (first >> level) + 1 <= max_points:
            return level
    return None


_SUMMARY_AFTER = text(
    "SELECT name, SUM(n), MAX(last_step) FROM metric_rollups "
    f"WHERE job_seq = :seq AND level = {COARSEST} AND bucket > :b GROUP BY name ORDER BY name"
)
_RAW_RANGE = text(
    "SELECT step, value, time FROM metric_points "
    "WHERE job_seq = :seq AND name = :name AND step >= :lo AND step < :hi ORDER BY step"
)
_FIRST_AFTER = text(
    "SELECT MIN(step) FROM metric_points WHERE job_seq = :seq AND name = :name AND step > :after"
)
_COUNT_RANGE = text(
    "SELECT COUNT(*), MAX(step) FROM metric_points "
    "WHERE job_seq = :seq AND name = :name AND step >= :lo AND step < :hi"
)
_ROLLUP_ROWS = text(
    "SELECT bucket, n, vn, vsum, vmin, vmax, last_step, last_value, last_time "
    "FROM metric_rollups WHERE job_seq = :seq AND name = :name AND level = :level "
    "AND bucket >= :b ORDER BY bucket"
)


@dataclass
class SeriesInfo:
    """A metric of a job after some step: how many points, and its first and last step."""

    name: str
    n: int
    first: int
    last: int


def series_info(
    s: Session, seq: int, since_step: int | None, names: Sequence[str] | None = None
) -> list[SeriesInfo]:
    """Every metric of job `seq` (of `names`, when given) with points after
    `since_step` (all when None), by name, from the coarsest rollups (a few rows a
    metric) and, for the bucket `since_step` cuts, the raw index."""
    after = -1 if since_step is None else since_step
    cut = after >> COARSEST  # the coarsest bucket that holds `after` (-1: none)
    counts: dict[str, list[int]] = {}
    for name, n, last in s.execute(_SUMMARY_AFTER, {"seq": seq, "b": cut}):
        counts[name] = [int(n), int(last)]
    if after >= 0:
        # the cut bucket's points after `after` (the rows before it are not counted)
        hi = (cut + 1) << COARSEST
        for (name,) in s.execute(
            text(
                "SELECT name FROM metric_rollups WHERE job_seq = :seq AND level = :level "
                "AND bucket = :b AND last_step > :after"
            ),
            {"seq": seq, "level": COARSEST, "b": cut, "after": after},
        ):
            n, last = s.execute(
                _COUNT_RANGE, {"seq": seq, "name": name, "lo": after + 1, "hi": hi}
            ).one()
            have = counts.setdefault(name, [0, int(last)])
            have[0] += int(n)
            have[1] = max(have[1], int(last))
    out = []
    for name in sorted(counts):
        if names is not None and name not in names:
            continue
        n, last = counts[name]
        if n == 0:
            continue
        first = s.scalar(_FIRST_AFTER, {"seq": seq, "name": name, "after": after})
        out.append(SeriesInfo(name, n, int(first), last))
    return out


def rolled_series(
    s: Session, seq: int, info: SeriesInfo, max_points: int, since_step: int | None = None
) -> list[Bucket]:
    """At most `max_points` buckets covering `info`'s points after `since_step`, in step
    order, read at `level_for`'s level (merged further past the coarsest)."""
    level = level_for(info.first, info.last, max_points)
    merge = 1
    if level is None:
        level = COARSEST
        spread = (info.last >> level) - (info.first >> level) + 1
        merge = -(-spread // max_points)
    lo = info.first  # no points between since_step and first
    b0 = lo >> level
    out: list[tuple[int, Bucket]] = []
    start = b0
    if since_step is not None and (b0 << level) <= since_step:
        # bucket b0 also holds points up to since_step: fold its later points from raw
        part: Bucket | None = None
        for step, value, t in s.execute(
            _RAW_RANGE, {"seq": seq, "name": info.name, "lo": lo, "hi": (b0 + 1) << level}
        ):
            one = Bucket.of(step, value, t)
            if part is None:
                part = one
            else:
                part.merge(one)
        if part is not None:
            out.append((b0, part))
        start = b0 + 1
    for bucket, *fields in s.execute(
        _ROLLUP_ROWS, {"seq": seq, "name": info.name, "level": level, "b": start}
    ):
        out.append((bucket, Bucket(*fields)))
    if merge == 1:
        return [b for _, b in out]
    grouped: dict[int, Bucket] = {}
    for bucket, b in out:
        key = (bucket - b0) // merge
        have = grouped.get(key)
        if have is None:
            grouped[key] = Bucket(**vars(b))
        else:
            have.merge(b)
    return [grouped[k] for k in sorted(grouped)]


_ROLLUP_COLUMNS = text(
    "SELECT vn, vsum, vmin, vmax, last_step, last_time "
    "FROM metric_rollups WHERE job_seq = :seq AND name = :name AND level = :level "
    "AND bucket >= :b ORDER BY bucket"
)


@dataclass
class Columns:
    """A series as the history answers it: one list per field, in step order."""

    steps: list[int]
    values: list[float | None]
    times: list[float]
    mins: list[float | None]
    maxs: list[float | None]


def _finite_mean(vsum: float, vn: int) -> float | None:
    if not vn:
        return None
    mean = vsum / vn
    return mean if math.isfinite(mean) else None


def rolled_columns(
    s: Session, seq: int, info: SeriesInfo, max_points: int, since_step: int | None = None
) -> Columns:
    """`rolled_series` as columns: each bucket's last step and time, the mean of its
    finite values (None if it has none or the mean is not finite) and its minimum and
    maximum. A series that needs no partial bucket and no merging (the usual case) is
    read as plain rows, without a `Bucket` per row."""
    level = level_for(info.first, info.last, max_points)
    partial = (
        level is not None
        and since_step is not None
        and ((info.first >> level) << level) <= since_step
    )
    if level is None or partial:
        buckets = rolled_series(s, seq, info, max_points, since_step)
        return Columns(
            steps=[b.last_step for b in buckets],
            values=[_finite_mean(b.vsum, b.vn) for b in buckets],
            times=[b.last_time for b in buckets],
            mins=[b.vmin for b in buckets],
            maxs=[b.vmax for b in buckets],
        )
    rows = s.execute(
        _ROLLUP_COLUMNS,
        {"seq": seq, "name": info.name, "level": level, "b": info.first >> level},
    ).all()
    if not rows:
        return Columns([], [], [], [], [])
    vn, vsum, vmin, vmax, last_step, last_time = zip(*rows, strict=True)
    return Columns(
        steps=list(last_step),
        values=list(map(_finite_mean, vsum, vn)),
        times=list(last_time),
        mins=list(vmin),
        maxs=list(vmax),
    )


def raw_columns(s: Session, seq: int, info: SeriesInfo) -> tuple[list[int], list[Any], list[Any]]:
    """(steps, values, times) of `info`'s points, all of them: its steps lie in
    [first, last], the ones after the history's `since_step`."""
    rows = s.execute(
        _RAW_RANGE, {"seq": seq, "name": info.name, "lo": info.first, "hi": info.last + 1}
    ).all()
    if not rows:
        return [], [], []
    steps, values, times = zip(*rows, strict=True)
    return list(steps), list(values), list(times)


def peaks(s: Session, seqs: list[int], names: Sequence[str]) -> list[Any]:
    """(job_seq, name, step, value, time) per job and name: the largest finite value,
    with the largest step and time of the buckets that have one (as the raw GROUP BY
    it replaces answered), from the coarsest rollups."""
    q = text(
        "SELECT job_seq, name, MAX(last_step), MAX(vmax), MAX(last_time) FROM metric_rollups "
        f"WHERE level = {COARSEST} AND job_seq IN :seqs AND name IN :names "
        "AND vmax IS NOT NULL GROUP BY job_seq, name"
    ).bindparams(bindparam("seqs", expanding=True), bindparam("names", expanding=True))
    return list(s.execute(q, {"seqs": list(seqs), "names": list(names)}))


def finite_counts(s: Session, seqs: Sequence[int], name: str) -> dict[int, int]:
    """Per job of `seqs`: how many finite values it has of `name` (coarsest rollups)."""
    q = text(
        "SELECT job_seq, COALESCE(SUM(vn), 0) FROM metric_rollups "
        f"WHERE level = {COARSEST} AND name = :name AND job_seq IN :seqs GROUP BY job_seq"
    ).bindparams(bindparam("seqs", expanding=True))
    return {int(seq): int(n) for seq, n in s.execute(q, {"seqs": list(seqs), "name": name})}


def finite_count(s: Session, seq: int, name: str) -> int:
    """How many finite values job `seq` has of `name` (from the coarsest rollups)."""
    q = text(
        "SELECT COALESCE(SUM(vn), 0) FROM metric_rollups "
        f"WHERE job_seq = :seq AND name = :name AND level = {COARSEST}"
    )
    return int(s.scalar(q, {"seq": seq, "name": name}) or 0)
