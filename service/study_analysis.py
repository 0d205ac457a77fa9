"""Study analysis: pick each arm's best trial, then compare the winners' final runs.

Pure functions over metric histories (no database, no web framework), so they are tested
from synthetic curves. A study's jobs arrive as `StudyRun`s: tuning trials (one seed each,
one point of the arm's search space) and final runs (the chosen point, every seed).

Per (batch size, arm): the best trial is the finished, non-diverged one with the lowest
final validation loss (ties: the lowest trial index). Per batch size, AlgoPerf-style: the
target is the tuned baseline's mean final validation loss over its seeds; each arm's
cost is the steps (tokens, seconds) its final runs need to first reach it, and its
speed-up is the baseline's steps over the arm's. Uncertainty over seeds is a bootstrap
confidence interval (`scipy.stats.bootstrap`, a fixed seed so that a summary is
reproducible); a difference is called only when its interval excludes zero and it is
larger than twice the noise of one evaluation (`val/loss_sem`).

Everything tolerates partial data: a study in its tuning phase has no final runs (their
fields stay None), metrics may be missing, jobs may fail or diverge. Final-run statistics
use the final runs that finished (SUCCEEDED) without diverging; the others are reported
in the findings.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS, VAL_LOSS_SEM
from alto_client.models import JobStatus
from alto_client.study import (
    ScalingPoint,
    StudyArm,
    StudyArmResult,
    StudyBatch,
    StudyRequest,
    TrialResult,
)
from scipy import stats

from service.compare import (
    RunData,
    combined_status,
    final_val_loss,
    final_val_step,
    median_throughput,
    optimizer_state_bytes,
    peak_memory,
    reach,
)

__all__ = [
    "VERDICT_BETTER",
    "VERDICT_NOISE",
    "VERDICT_UNDECIDED",
    "VERDICT_WORSE",
    "StudyRun",
    "StudySummary",
    "bootstrap_ci",
    "is_diverged",
    "select_best",
    "summarize_study",
]

VERDICT_BETTER = "better"
VERDICT_WORSE = "worse"
VERDICT_NOISE = "inside the noise"
VERDICT_UNDECIDED = "too few seeds to decide"

CONFIDENCE = 0.95
N_RESAMPLES = 4999
BOOTSTRAP_SEED = 20240612
NOISE_MULTIPLE = 2.0
"""A difference smaller than this many evaluation standard errors is noise."""

_TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class StudyRun:
    """One job of a study: a tuning trial or a final run, with what it reported."""

    job_id: str
    role: Literal["trial", "final"]
    arm: str
    batch_size: int
    trial: int | None
    seed: int
    params: dict[str, float]
    status: JobStatus
    run: RunData


@dataclass
class StudySummary:
    """What `summarize_study` finds: the `Study` response's result fields."""

    batches: list[StudyBatch] = field(default_factory=list)
    common_target: float | None = None
    scaling: list[ScalingPoint] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------- helpers


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = _finite(values)
    return statistics.fmean(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _num(x: float) -> str:
    """A loss or a difference of losses, for a sentence."""
    return f"{x:.3g}" if abs(x) < 0.01 else f"{x:.3f}"


def _seeds_word(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def is_diverged(run: RunData) -> bool:
    """True when the run blew up: a non-finite validation loss anywhere, or a non-finite
    last training loss (a FAILED job that stopped on a NaN is covered by the latter)."""
    if any(v is None or not math.isfinite(v) for v in run.get(VAL_LOSS).values):
        return True
    train = run.get(TRAIN_LOSS).values
    return bool(train) and (train[-1] is None or not math.isfinite(train[-1]))


def _usable(r: StudyRun) -> bool:
    """Finished without diverging, with a final validation loss to compare."""
    return (
        r.status == JobStatus.SUCCEEDED
        and not is_diverged(r.run)
        and final_val_loss(r.run) is not None
    )


def _trial_loss(r: StudyRun) -> float | None:
    return final_val_loss(r.run) if _usable(r) else None


def bootstrap_ci(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., Any],
) -> tuple[float, float] | None:
    """95% bootstrap confidence interval of `statistic` over one or more independent
    samples (``statistic(*samples, axis=...)``, vectorized). BCa, falling back to the
    percentile method where BCa is degenerate (e.g. identical values); None with fewer
    than 2 values in any sample. A fixed seed makes the interval reproducible."""
    data = [np.asarray(s, dtype=float) for s in samples]
    if any(len(d) < 2 for d in data):
        return None
    if all(np.all(d == d[0]) for d in data):
        # no spread at all: every resample gives the same statistic
        v = float(statistic(*data, axis=-1))
        return (v, v) if math.isfinite(v) else None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = stats.bootstrap(
                    tuple(data),
                    statistic,
                    n_resamples=N_RESAMPLES,
                    confidence_level=CONFIDENCE,
                    method=method,
                    paired=False,
                    vectorized=True,
                    rng=np.random.default_rng(BOOTSTRAP_SEED),
                )
            except (ValueError, ZeroDivisionError, FloatingPointError):
                continue
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _diff_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _speedup_stat(base: np.ndarray, arm: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(base, axis=axis) / np.mean(arm, axis=axis)


def _by_key(runs: Sequence[StudyRun], role: str) -> dict[tuple[int, str], list[StudyRun]]:
    out: dict[tuple[int, str], list[StudyRun]] = {}
    for r in runs:
        if r.role == role:
            out.setdefault((r.batch_size, r.arm), []).append(r)
    return out


# ----------------------------------------------------------------------- selection


def select_best(
    request: StudyRequest, runs: list[StudyRun]
) -> dict[tuple[int, str], StudyRun | None]:
    """Per (batch size, arm) of the request: the trial with the lowest final validation
    loss among those that SUCCEEDED without diverging (ties: the lowest trial index);
    None where no trial qualifies (yet)."""
    trials = _by_key(runs, "trial")
    out: dict[tuple[int, str], StudyRun | None] = {}
    for bs in request.batch_sizes:
        for arm in request.arms:
            best: tuple[float, int, StudyRun] | None = None
            for r in trials.get((bs, arm.name), []):
                loss = _trial_loss(r)
                if loss is None:
                    continue
                idx = r.trial if r.trial is not None else 0
                if best is None or (loss, idx) < best[:2]:
                    best = (loss, idx, r)
            out[(bs, arm.name)] = best[2] if best else None
    return out


def _tuning_curve(trials: list[StudyRun]) -> list[float | None]:
    curve: list[float | None] = []
    best: float | None = None
    for r in trials:
        loss = _trial_loss(r)
        if loss is not None and (best is None or loss < best):
            best = loss
        curve.append(best)
    return curve


def _on_edge(arm: StudyArm, trials: list[StudyRun], chosen: dict[str, float]) -> dict[str, str]:
    """Searched field -> "bottom" / "top" where the chosen value is the lowest / highest
    value tried (and more than one distinct value was tried)."""
    out: dict[str, str] = {}
    for name in arm.search:
        if name not in chosen:
            continue
        tried = _finite([r.params.get(name) for r in trials])
        if len(set(tried)) < 2:
            continue
        v = chosen[name]
        if math.isclose(v, min(tried), rel_tol=1e-9, abs_tol=0.0):
            out[name] = "bottom"
        elif math.isclose(v, max(tried), rel_tol=1e-9, abs_tol=0.0):
            out[name] = "top"
    return out


# ----------------------------------------------------------------------- summary


@dataclass
class _Finals:
    """The final runs of one (batch size, arm), split by what they can tell."""

    runs: list[StudyRun]
    usable: list[StudyRun]
    losses: list[float]
    bad: list[StudyRun]  # finished but failed or diverged

    @classmethod
    def of(cls, runs: list[StudyRun]) -> _Finals:
        runs = sorted(runs, key=lambda r: r.seed)
        usable = [r for r in runs if _usable(r)]
        losses = [v for r in usable if (v := final_val_loss(r.run)) is not None]
        bad = [
            r
            for r in runs
            if r.status in _TERMINAL and not _usable(r) and r.status != JobStatus.CANCELLED
        ]
        return cls(runs, usable, losses, bad)

    @property
    def settled(self) -> bool:
        """Every final run has ended."""
        return bool(self.runs) and all(r.status in _TERMINAL for r in self.runs)


def _eval_noise(finals: list[StudyRun]) -> float | None:
    sems = []
    for r in finals:
        vals = _finite(r.run.get(VAL_LOSS_SEM).values)
        if vals:
            sems.append(vals[-1])
    return statistics.median(sems) if sems else None


def _verdict(
    delta: float | None, ci: tuple[float, float] | None, noise: float | None
) -> str | None:
    if delta is None:
        return None
    if ci is None:
        return VERDICT_UNDECIDED
    excludes_zero = ci[0] > 0 or ci[1] < 0
    above_noise = noise is None or abs(delta) > NOISE_MULTIPLE * noise
    if excludes_zero and above_noise:
        return VERDICT_BETTER if delta < 0 else VERDICT_WORSE
    return VERDICT_NOISE


def summarize_study(request: StudyRequest, runs: list[StudyRun]) -> StudySummary:
    """Every batch size and arm of the request, with what the runs so far tell."""
    seq = request.spec.model.seq_length
    base = request.baseline
    trials_by = _by_key(runs, "trial")
    finals_by = _by_key(runs, "final")
    best = select_best(request, runs)
    summary = StudySummary()
    findings = summary.findings

    if len(request.seeds) < 2:
        findings.append(
            f"the study runs each winner with {_seeds_word(len(request.seeds))}: its "
            "numbers cannot tell a difference from seed noise (use 3 seeds or more)"
        )

    targets: dict[int, float] = {}
    finals_at: dict[tuple[int, str], _Finals] = {}
    for bs in request.batch_sizes:
        steps = request.budget.steps_at(bs, seq)
        finals = {a.name: _Finals.of(finals_by.get((bs, a.name), [])) for a in request.arms}
        for a in request.arms:
            finals_at[(bs, a.name)] = finals[a.name]
        all_finals = [r for f in finals.values() for r in f.runs]
        noise = _eval_noise(all_finals)
        b = finals[base]
        target = _mean(b.losses)
        if target is not None:
            targets[bs] = target
        base_steps = [float(s) for r in b.usable if (s := final_val_step(r.run)) is not None]
        base_steps_mean = _mean(base_steps)
        base_tps = _mean([median_throughput(r.run) for r in b.usable])
        base_mem = _mean([peak_memory(r.run) for r in b.usable])
        base_state = _mean([optimizer_state_bytes(r.run) for r in b.usable])

        results = []
        for arm in request.arms:
            name = arm.name
            trials = sorted(
                trials_by.get((bs, name), []),
                key=lambda r: (r.trial if r.trial is not None else -1, r.job_id),
            )
            res = StudyArmResult(
                name=name,
                trials=[
                    TrialResult(
                        trial=r.trial if r.trial is not None else -1,
                        params=dict(r.params),
                        job_id=r.job_id,
                        status=r.status,
                        final_val_loss=_trial_loss(r),
                        diverged=is_diverged(r.run),
                    )
                    for r in trials
                ],
                tuning_curve=_tuning_curve(trials),
            )
            chosen = best.get((bs, name))
            if chosen is not None:
                res.chosen = dict(chosen.params)
                res.chosen_trial = chosen.trial
                edges = _on_edge(arm, trials, chosen.params)
                res.on_edge = list(edges)
                for fld, side in edges.items():
                    lo, hi = arm.search[fld].bounds
                    word = "highest" if side == "top" else "lowest"
                    findings.append(
                        f"batch {bs}: {name}'s best {fld} {chosen.params[fld]:g} is the "
                        f"{word} value tried (range {lo:g}..{hi:g}): the optimum may lie "
                        f"beyond it; widen or shift the range, or add trials"
                    )
            elif trials and all(r.status in _TERMINAL for r in trials):
                findings.append(f"batch {bs}: no {name} trial finished without diverging")
            elif trials:
                n_div = sum(is_diverged(r.run) for r in trials)
                if n_div:
                    findings.append(
                        f"batch {bs}: {n_div} of {len(trials)} {name} trials diverged so far"
                    )

            f = finals[name]
            if f.runs:
                res.final_status = combined_status([r.status for r in f.runs])
                res.final_job_ids = [r.job_id for r in f.runs]
                res.seeds = [r.seed for r in f.runs]
            if f.bad:
                findings.append(
                    f"batch {bs}: {len(f.bad)} of {len(f.runs)} {name} final runs failed "
                    "or diverged (left out of its statistics)"
                )
            if f.losses:
                res.final_val_loss_mean = statistics.fmean(f.losses)
                res.final_val_loss_std = statistics.stdev(f.losses) if len(f.losses) > 1 else None
                ci = bootstrap_ci([f.losses], _mean_stat)
                res.final_val_loss_ci = ci
            if name != base and f.losses and b.losses:
                assert res.final_val_loss_mean is not None and target is not None
                res.delta_vs_baseline = res.final_val_loss_mean - target
                res.delta_ci = bootstrap_ci([f.losses, b.losses], _diff_stat)
                res.verdict = _verdict(res.delta_vs_baseline, res.delta_ci, noise)
                findings.append(
                    _delta_sentence(bs, name, base, res.delta_vs_baseline, res.delta_ci)
                    + _verdict_tail(res.verdict, noise, len(f.losses), len(b.losses))
                )
            if target is not None and f.usable:
                hits = [(r, reach(r.run, target)) for r in f.usable]
                reached = [(r, h) for r, h in hits if h is not None]
                res.reached_target = len(reached)
                if reached:
                    arm_steps = [float(h[0]) for _, h in reached]
                    secs = [h[1] for _, h in reached if h[1] is not None]
                    res.steps_to_target = statistics.fmean(arm_steps)
                    res.tokens_to_target = res.steps_to_target * bs * seq
                    res.wall_time_to_target_s = _mean(secs) if len(secs) == len(reached) else None
                    res.speedup = _ratio(base_steps_mean, res.steps_to_target)
                    res.speedup_ci = bootstrap_ci([base_steps, arm_steps], _speedup_stat)
                if name != base and len(reached) < len(f.usable):
                    findings.append(
                        f"batch {bs}: {len(f.usable) - len(reached)} of {len(f.usable)} "
                        f"{name} seeds did not reach {base}'s final validation loss "
                        f"{_num(target)}"
                    )
                elif name != base and res.speedup is not None:
                    ci_txt = (
                        f", 95% CI {res.speedup_ci[0]:.2f}..{res.speedup_ci[1]:.2f}"
                        if res.speedup_ci
                        else ""
                    )
                    findings.append(
                        f"batch {bs}: {name} reaches {base}'s final validation loss "
                        f"{_num(target)} in {res.steps_to_target:.0f} steps: speedup "
                        f"{res.speedup:.2f}x{ci_txt}"
                    )
            if f.usable:
                res.tokens_per_s_ratio = _ratio(
                    _mean([median_throughput(r.run) for r in f.usable]), base_tps
                )
                res.peak_memory_ratio = _ratio(
                    _mean([peak_memory(r.run) for r in f.usable]), base_mem
                )
                res.optimizer_state_ratio = _ratio(
                    _mean([optimizer_state_bytes(r.run) for r in f.usable]), base_state
                )
            results.append(res)

        summary.batches.append(
            StudyBatch(batch_size=bs, steps=steps, target=target, eval_noise=noise, arms=results)
        )

    # across batch sizes: one loss every final run of the tuned baseline reaches at every
    # batch size (its worst seed's final loss at its worst batch size; the mean there
    # would be out of reach for the seeds that end above it)
    worst = [
        (loss, bs)
        for bs in request.batch_sizes
        if bs in targets
        for loss in finals_at[(bs, base)].losses
    ]
    if worst:
        summary.common_target, worst_bs = max(worst)
        findings.append(
            f"common target {_num(summary.common_target)}: the worst final validation loss "
            f"of the tuned {base}'s seeds, at batch {worst_bs}"
        )
    for arm in request.arms:
        points = []
        for bs in request.batch_sizes:
            point = ScalingPoint(arm=arm.name, batch_size=bs)
            f = finals_at[(bs, arm.name)]
            if summary.common_target is not None and f.usable:
                hits = [reach(r.run, summary.common_target) for r in f.usable]
                steps_hit = [float(h[0]) for h in hits if h is not None]
                point.steps_to_target = _mean(steps_hit)
                point.reached = bool(steps_hit) and len(steps_hit) == len(hits) and not f.bad
            points.append(point)
            summary.scaling.append(point)
        findings.extend(_scaling_sentences(arm.name, points))
    return summary


def _delta_sentence(
    bs: int, name: str, base: str, delta: float, ci: tuple[float, float] | None
) -> str:
    direction = "lower" if delta < 0 else "higher"
    ci_txt = f" (95% CI {_num(ci[0])}..{_num(ci[1])})" if ci else ""
    if delta == 0:
        return f"batch {bs}: {name}'s final validation loss equals {base}'s{ci_txt}"
    return (
        f"batch {bs}: {name}'s final validation loss is {_num(abs(delta))} {direction} "
        f"than {base}'s{ci_txt}"
    )


def _verdict_tail(verdict: str | None, noise: float | None, n_arm: int, n_base: int) -> str:
    if verdict == VERDICT_UNDECIDED:
        return (
            f": too few finished seeds to decide ({n_arm} and {n_base}; a confidence "
            "interval needs at least 2 on each side)"
        )
    noise_txt = f" (evaluation noise {_num(noise)})" if noise is not None else ""
    if verdict == VERDICT_NOISE:
        return f": {VERDICT_NOISE}{noise_txt}"
    return f": {verdict}"


def _scaling_sentences(name: str, points: list[ScalingPoint]) -> list[str]:
    """How an arm's steps to the common target fall with the batch size, against
    perfect scaling (steps proportional to 1/batch)."""
    done = [p for p in points if p.reached and p.steps_to_target]
    if len(done) < 2:
        return []
    lo, hi = done[0], done[-1]
    assert lo.steps_to_target is not None and hi.steps_to_target is not None
    batch_x = hi.batch_size / lo.batch_size
    step_x = lo.steps_to_target / hi.steps_to_target
    return [
        f"{name}: from batch {lo.batch_size} to {hi.batch_size} ({batch_x:g}x), steps to "
        f"the common target fall {step_x:.2f}x (perfect scaling: {batch_x:g}x)"
    ]
