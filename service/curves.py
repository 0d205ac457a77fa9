"""Seed bands of an arm's loss curves: computed once, here, for every picture of them.

The dashboard (through `GET /v1/comparisons/{id}/curves`) and `plot.png` draw the
same arrays, so a band means one thing wherever it is seen. The definition:

- the grid is the union of the steps at which any seed logged a finite value;
- at each grid step, every seed whose finite values span that step contributes one
  value: its own where it logged that step, else the linear interpolation between its
  neighbouring logged steps (seeds of one comparison log at the same steps, so this
  only matters for a seed that skipped a point). A seed contributes nothing before its
  first or after its last finite value: while seeds are still running, the curve goes
  on with the seeds that have got further, and `n` says how many there are;
- mean over the contributing seeds, and the band mean +- their sample standard
  deviation (0 where one seed contributes), the spread the comparison summary
  reports as `*_std`;
- non-finite values (a diverged seed) contribute nothing; a step whose mean or band
  overflows is dropped;
- a curve longer than `max_points` keeps the first, the last and, per bucket, the
  steps of the lowest and the highest mean (`service.downsample`), with the band at
  those steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmCurves, ComparisonCurves, CurveBand

from service.compare import RunData, Series
from service.downsample import keep_indices

LOSS_METRICS: tuple[str, ...] = (TRAIN_LOSS, VAL_LOSS)
# what the dashboard asks for and the PNG draws: about one point per pixel of either
DEFAULT_MAX_POINTS = 1000


@dataclass(frozen=True)
class Band:
    """One metric of one arm over its seeds (see the module docstring)."""

    steps: np.ndarray  # int64
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n: np.ndarray  # seeds contributing at each step
    n_seeds: int  # seeds with at least one finite value
    total_points: int  # grid steps before downsampling
    downsampled: bool


def _finite_points(series: Series) -> tuple[np.ndarray, np.ndarray] | None:
    """The series' finite points in step order, one per step (the first one stored)."""
    steps = np.asarray(series.steps, dtype=np.int64)
    values = np.array(series.values, dtype=np.float64)  # None -> nan
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if steps.size == 0:
        return None
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    unique, first = np.unique(steps, return_index=True)
    return unique, values[first]


def seed_band(series: Sequence[Series], max_points: int | None = DEFAULT_MAX_POINTS) -> Band | None:
    """The band of one metric over seeds (one `Series` per seed); None when no seed has a
    finite value of it. `max_points=None` keeps every step."""
    seeds = [p for s in series if (p := _finite_points(s)) is not None]
    if not seeds:
        return None
    grid = np.unique(np.concatenate([steps for steps, _ in seeds]))
    values = np.full((len(seeds), grid.size), np.nan)
    for i, (steps, vals) in enumerate(seeds):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        values[i, inside] = np.interp(grid[inside].astype(np.float64), steps, vals)
    present = np.isfinite(values)
    n = present.sum(axis=0)  # >= 1: every grid step is some seed's own finite point
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.where(present, values, 0.0).sum(axis=0) / n
        sq = np.where(present, (values - mean) ** 2, 0.0).sum(axis=0)
        std = np.sqrt(sq / np.maximum(n - 1, 1))
        lower, upper = mean - std, mean + std
    keep = np.isfinite(lower) & np.isfinite(upper) & np.isfinite(mean)
    grid, mean, lower, upper, n = grid[keep], mean[keep], lower[keep], upper[keep], n[keep]
    total = int(grid.size)
    if total == 0:
        return None
    downsampled = max_points is not None and total > max_points
    if downsampled:
        assert max_points is not None
        idx = np.asarray(keep_indices(mean.tolist(), max_points), dtype=np.int64)
        grid, mean, lower, upper, n = grid[idx], mean[idx], lower[idx], upper[idx], n[idx]
    return Band(
        steps=grid,
        mean=mean,
        lower=lower,
        upper=upper,
        n=n.astype(np.int64),
        n_seeds=len(seeds),
        total_points=total,
        downsampled=bool(downsampled),
    )


def arm_bands(
    arms: Mapping[str, Sequence[RunData]],
    metrics: Sequence[str] = LOSS_METRICS,
    max_points: int | None = DEFAULT_MAX_POINTS,
) -> dict[str, dict[str, Band]]:
    """arm -> metric -> band, in the order of `arms` and `metrics`; a metric no seed of
    the arm reported yet is absent."""
    out: dict[str, dict[str, Band]] = {}
    for arm, runs in arms.items():
        bands: dict[str, Band] = {}
        for metric in metrics:
            band = seed_band([run.get(metric) for run in runs], max_points)
            if band is not None:
                bands[metric] = band
        out[arm] = bands
    return out


def curve_model(metric: str, band: Band) -> CurveBand:
    """The wire form of a band (numbers as the PNG draws them: float64 to JSON floats)."""
    return CurveBand(
        metric=metric,
        steps=band.steps.tolist(),
        mean=band.mean.tolist(),
        lower=band.lower.tolist(),
        upper=band.upper.tolist(),
        n=band.n.tolist(),
        n_seeds=band.n_seeds,
        total_points=band.total_points,
        downsampled=band.downsampled,
    )


def comparison_curves(
    comparison_id: str,
    baseline: str,
    arms: Mapping[str, Sequence[RunData]],
    bands: Mapping[str, Mapping[str, Band]],
) -> ComparisonCurves:
    """The answer of `GET /v1/comparisons/{id}/curves`."""
    return ComparisonCurves(
        comparison_id=comparison_id,
        baseline=baseline,
        arms=[
            ArmCurves(
                name=arm,
                job_ids=[run.job_id for run in runs],
                curves=[curve_model(m, b) for m, b in bands.get(arm, {}).items()],
            )
            for arm, runs in arms.items()
        ],
    )
