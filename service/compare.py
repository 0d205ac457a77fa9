"""Comparison summaries: did an arm beat the baseline, by how much, at what cost.

Pure functions over metric histories, so they are tested without a database. Per arm,
seeds are aggregated by mean and sample standard deviation. The speed-up follows the
AlgoPerf / optimizer-speedrun convention: the target is the baseline arm's mean final
validation loss; an arm's cost is the steps (and wall time) it needs to first reach
that target, and the speed-up is the baseline's steps over the arm's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from alto_client.metrics import (
    MEM_PEAK_ALLOCATED_BYTES,
    MEM_PEAK_RSS_BYTES,
    OPTIM_STATE_BYTES,
    TRAIN_LOSS,
    TRAIN_TOKENS_PER_S,
    VAL_LOSS,
)
from alto_client.models import ArmSummary, JobStatus

# how severe an arm's status is when its seeds disagree (the worst one wins)
_STATUS_ORDER = [
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.RUNNING,
    JobStatus.QUEUED,
    JobStatus.PENDING,
    JobStatus.SUCCEEDED,
]


@dataclass
class Series:
    """One metric of one job, in step order."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@dataclass
class RunData:
    """What one job (one arm, one seed) reported."""

    job_id: str
    seed: int
    status: JobStatus
    series: dict[str, Series] = field(default_factory=dict)

    def get(self, name: str) -> Series:
        return self.series.get(name) or Series()


def combined_status(statuses: Sequence[JobStatus]) -> JobStatus:
    """The status of a group of jobs: the most severe of its members'."""
    if not statuses:
        return JobStatus.PENDING
    return min(statuses, key=_STATUS_ORDER.index)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean(values: Sequence[float]) -> float | None:
    vals = _finite(values)
    return statistics.fmean(vals) if vals else None


def _std(values: Sequence[float]) -> float | None:
    vals = _finite(values)
    if not vals:
        return None
    return statistics.stdev(vals) if len(vals) > 1 else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def final_val_loss(run: RunData) -> float | None:
    """Last finite validation loss of a run."""
    vals = _finite(run.get(VAL_LOSS).values)
    return vals[-1] if vals else None


def best_val_loss(run: RunData) -> float | None:
    """Lowest finite validation loss of a run."""
    vals = _finite(run.get(VAL_LOSS).values)
    return min(vals) if vals else None


def final_val_step(run: RunData) -> int | None:
    """Step of the last finite validation loss (where the run reached its final loss)."""
    s = run.get(VAL_LOSS)
    for step, v in zip(reversed(s.steps), reversed(s.values)):
        if v is not None and math.isfinite(v):
            return step
    return None


def time_origin(run: RunData) -> float | None:
    """Wall-clock zero of a run: the time of its first training-loss point."""
    s = run.get(TRAIN_LOSS)
    if s.times:
        return s.times[0]
    all_times = [t for series in run.series.values() for t in series.times[:1]]
    return min(all_times) if all_times else None


def reach(run: RunData, target: float) -> tuple[int, float | None] | None:
    """(step, seconds since the run's time origin) of the first val/loss <= target."""
    s = run.get(VAL_LOSS)
    origin = time_origin(run)
    for step, v, t in zip(s.steps, s.values, s.times):
        if v is not None and math.isfinite(v) and v <= target:
            return step, (t - origin if origin is not None else None)
    return None


def median_throughput(run: RunData) -> float | None:
    """Median tokens/s of a run (robust to the slow first steps)."""
    vals = _finite(run.get(TRAIN_TOKENS_PER_S).values)
    return statistics.median(vals) if vals else None


def peak_memory(run: RunData) -> float | None:
    """Peak memory: accelerator bytes allocated when reported, else the process RSS."""
    for name in (MEM_PEAK_ALLOCATED_BYTES, MEM_PEAK_RSS_BYTES):
        vals = _finite(run.get(name).values)
        if vals:
            return max(vals)
    return None


def optimizer_state_bytes(run: RunData) -> float | None:
    vals = _finite(run.get(OPTIM_STATE_BYTES).values)
    return vals[-1] if vals else None


def summarize(arms: dict[str, list[RunData]], baseline: str) -> list[ArmSummary]:
    """Per-arm summaries, in the order of `arms`, relative to the `baseline` arm."""
    base_runs = arms[baseline]
    base_final = _mean([v for r in base_runs if (v := final_val_loss(r)) is not None])
    base_steps = _mean([s for r in base_runs if (s := final_val_step(r)) is not None])
    base_tps = _mean([v for r in base_runs if (v := median_throughput(r)) is not None])
    base_mem = _mean([v for r in base_runs if (v := peak_memory(r)) is not None])
    base_state = _mean([v for r in base_runs if (v := optimizer_state_bytes(r)) is not None])

    out = []
    for name, runs in arms.items():
        finals = [v for r in runs if (v := final_val_loss(r)) is not None]
        bests = [v for r in runs if (v := best_val_loss(r)) is not None]
        final_mean = _mean(finals)
        summary = ArmSummary(
            name=name,
            status=combined_status([r.status for r in runs]),
            job_ids=[r.job_id for r in runs],
            seeds=[r.seed for r in runs],
            final_val_loss_mean=final_mean,
            final_val_loss_std=_std(finals),
            best_val_loss_mean=_mean(bests),
            best_val_loss_std=_std(bests),
        )
        if final_mean is not None and base_final is not None:
            summary.val_loss_delta_vs_baseline = final_mean - base_final
        if base_final is not None and finals:
            hits = [reach(r, base_final) for r in runs if final_val_loss(r) is not None]
            reached = all(h is not None for h in hits)
            summary.reached_baseline = reached
            if reached:
                steps = [float(h[0]) for h in hits if h is not None]
                secs = [h[1] for h in hits if h is not None and h[1] is not None]
                summary.steps_to_baseline = _mean(steps)
                summary.wall_time_to_baseline_s = _mean(secs) if len(secs) == len(hits) else None
                summary.step_speedup_vs_baseline = _ratio(base_steps, summary.steps_to_baseline)
        tps = _mean([v for r in runs if (v := median_throughput(r)) is not None])
        mem = _mean([v for r in runs if (v := peak_memory(r)) is not None])
        state = _mean([v for r in runs if (v := optimizer_state_bytes(r)) is not None])
        summary.tokens_per_s_mean = tps
        summary.tokens_per_s_ratio = _ratio(tps, base_tps)
        summary.peak_memory_bytes_mean = mem
        mem_ratio = _ratio(mem, base_mem)
        summary.peak_memory_overhead_pct = (mem_ratio - 1.0) * 100.0 if mem_ratio else None
        summary.optimizer_state_bytes = state
        summary.optimizer_state_bytes_ratio = _ratio(state, base_state)
        out.append(summary)
    return out
