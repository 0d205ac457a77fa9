"""Server-side downsampling of metric histories.

Keeps the first and the last point and, per bucket, the smallest and the largest value,
so spikes and the global extremes survive; a chart drawn from the result looks like
one drawn from everything (min/max decimation, as oscilloscopes do it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def keep_indices(values: Sequence[float | None], max_points: int) -> list[int]:
    """Indices of the points to keep (sorted, at most `max_points`, at least 2 if n >= 2).

    `None` or NaN values are never chosen as extremes but a bucket made only of them
    keeps its first point, so gaps stay visible.
    """
    n = len(values)
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= max_points:
        return list(range(n))
    buckets = (max_points - 2) // 2
    keep = {0, n - 1}
    if buckets > 0:
        inner = n - 2
        for b in range(buckets):
            lo = 1 + (b * inner) // buckets
            hi = 1 + ((b + 1) * inner) // buckets
            best_lo: int | None = None
            best_hi: int | None = None
            for i in range(lo, hi):
                v = values[i]
                if v is None or math.isnan(v):
                    continue
                if best_lo is None or v < values[best_lo]:  # type: ignore[operator]
                    best_lo = i
                if best_hi is None or v > values[best_hi]:  # type: ignore[operator]
                    best_hi = i
            if best_lo is None or best_hi is None:
                if lo < hi:
                    keep.add(lo)
                continue
            keep.add(best_lo)
            keep.add(best_hi)
    return sorted(keep)
