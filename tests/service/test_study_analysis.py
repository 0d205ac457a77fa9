"""Study analysis from synthetic metric histories whose answers are known by hand:
selection of each arm's best trial, targets, steps to target, speed-ups, bootstrap
intervals, verdicts against the evaluation noise, the common target and scaling, and
the figure."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from alto_client.metrics import (
    OPTIM_STATE_BYTES,
    TRAIN_LOSS,
    TRAIN_TOKENS_PER_S,
    VAL_LOSS,
    VAL_LOSS_SEM,
)
from alto_client.models import JobStatus
from alto_client.spec import JobSpec
from alto_client.study import StudyRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.compare import RunData, Series
from service.study_analysis import (
    VERDICT_BETTER,
    VERDICT_NOISE,
    VERDICT_UNDECIDED,
    VERDICT_WORSE,
    StudyRun,
    bootstrap_ci,
    is_diverged,
    select_best,
    summarize_study,
)
from service.study_plot import render_study

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-moe-cpu.yaml"
SEQ = 128  # the config's seq_length
VAL_STEPS = [25, 50, 75, 100]
T0 = 1_000.0
NAN = float("nan")


def make_request(
    batch_sizes: list[int] | None = None, seeds: list[int] | None = None
) -> StudyRequest:
    spec = JobSpec.load(CONFIG)
    return StudyRequest(
        spec=spec,
        arms=[
            {
                "name": "alto",
                "optimizer": {"name": "alto"},
                "search": {"lr": {"low": 1e-3, "high": 1e-1}},
            },
            {
                "name": "adamw",
                "optimizer": {"name": "adamw"},
                "search": {"lr": {"low": 1e-4, "high": 1e-2}},
            },
        ],
        batch_sizes=batch_sizes or [16, 64],
        budget={"steps": 100},
        tuning={"trials": 3},
        seeds=seeds if seeds is not None else [0, 1, 2],
        baseline="adamw",
    )


def make_run(
    job_id: str,
    val: list[float],
    *,
    seed: int = 0,
    status: JobStatus = JobStatus.SUCCEEDED,
    train_last: float = 2.0,
    sem: float | None = None,
    tps: float | None = None,
    state: float | None = None,
) -> RunData:
    """A run with val/loss at steps 25, 50, ... (time = T0 + step seconds) and a
    train/loss at every step up to the last evaluation."""
    steps = VAL_STEPS[: len(val)]
    last = steps[-1] if steps else 10
    train_steps = list(range(1, last + 1))
    train = [3.0] * (len(train_steps) - 1) + [train_last]
    series = {
        TRAIN_LOSS: Series(train_steps, train, [T0 + s for s in train_steps]),
        VAL_LOSS: Series(list(steps), list(val), [T0 + s for s in steps]),
    }
    if sem is not None and steps:
        series[VAL_LOSS_SEM] = Series(list(steps), [sem] * len(steps), [T0 + s for s in steps])
    if tps is not None:
        series[TRAIN_TOKENS_PER_S] = Series(train_steps, [tps] * len(train_steps), [T0] * last)
    if state is not None:
        series[OPTIM_STATE_BYTES] = Series([1], [state], [T0])
    return RunData(job_id=job_id, seed=seed, status=status, series=series)


def trial(
    arm: str,
    bs: int,
    idx: int,
    lr: float,
    val: list[float],
    status: JobStatus = JobStatus.SUCCEEDED,
    train_last: float = 2.0,
) -> StudyRun:
    job = f"t-{arm}-{bs}-{idx}"
    return StudyRun(
        job_id=job,
        role="trial",
        arm=arm,
        batch_size=bs,
        trial=idx,
        seed=0,
        params={"lr": lr},
        status=status,
        run=make_run(job, val, status=status, train_last=train_last),
    )


def final(
    arm: str,
    bs: int,
    seed: int,
    val: list[float],
    lr: float = 1e-3,
    status: JobStatus = JobStatus.SUCCEEDED,
    sem: float | None = 0.004,
    tps: float | None = None,
    state: float | None = None,
) -> StudyRun:
    job = f"f-{arm}-{bs}-{seed}"
    return StudyRun(
        job_id=job,
        role="final",
        arm=arm,
        batch_size=bs,
        trial=None,
        seed=seed,
        params={"lr": lr},
        status=status,
        run=make_run(job, val, seed=seed, status=status, sem=sem, tps=tps, state=state),
    )


def full_study() -> list[StudyRun]:
    """Both phases done at batch 16 and 64, with hand-made curves:

    batch 16: adamw finals end at 2.0 / 2.1 / 2.2 (target 2.1, reached at step 100 by
    two seeds); alto's end at ~1.80 and pass 2.1 at step 50 (speedup 100/50 = 2).
    batch 64: adamw ends at 2.29 / 2.30 / 2.31 (target 2.30, the common target);
    alto passes 2.30 at step 50.
    """
    runs = [
        # batch 16 trials: adamw's best is the middle lr, alto's best is the top one
        trial("adamw", 16, 0, 1e-4, [2.8, 2.5]),
        trial("adamw", 16, 1, 1e-3, [2.6, 2.1]),
        trial("adamw", 16, 2, 1e-2, [2.6, 2.3]),
        trial("alto", 16, 0, 1e-3, [2.6, 2.4]),
        trial("alto", 16, 1, 1e-2, [2.5, 2.2]),
        trial("alto", 16, 2, 1e-1, [2.4, 1.9]),
        # batch 64 trials: one adamw trial diverged (its last finite loss would win)
        trial("adamw", 64, 0, 1e-4, [2.9, 2.6]),
        trial("adamw", 64, 1, 1e-2, [1.0, NAN], status=JobStatus.FAILED, train_last=NAN),
        trial("adamw", 64, 2, 1e-3, [2.7, 2.4]),
        trial("alto", 64, 0, 1e-3, [2.6, 2.5]),
        trial("alto", 64, 1, 3e-2, [2.5, 2.2]),
        trial("alto", 64, 2, 1e-2, [2.5, 2.3]),
    ]
    for seed, end in enumerate([2.0, 2.1, 2.2]):
        runs.append(final("adamw", 16, seed, [2.6, 2.4, 2.3, end], tps=1000.0, state=800.0))
    for seed, end in enumerate([1.80, 1.81, 1.79]):
        runs.append(final("alto", 16, seed, [2.5, 2.05, 1.9, end], tps=900.0, state=400.0))
    for seed, end in enumerate([2.29, 2.30, 2.31]):
        runs.append(final("adamw", 64, seed, [2.7, 2.5, 2.35, end]))
    for seed, end in enumerate([2.05, 2.06, 2.04]):
        runs.append(final("alto", 64, seed, [2.4, 2.2, 2.1, end]))
    return runs


def arm_result(summary, bs: int, name: str):
    batch = next(b for b in summary.batches if b.batch_size == bs)
    return next(a for a in batch.arms if a.name == name)


# ----------------------------------------------------------------------- divergence


def test_is_diverged() -> None:
    assert not is_diverged(make_run("a", [2.5, 2.0]))
    assert is_diverged(make_run("b", [2.5, NAN]))
    assert is_diverged(make_run("c", [2.5, float("inf")]))
    assert is_diverged(make_run("d", [2.5], status=JobStatus.FAILED, train_last=NAN))
    assert is_diverged(make_run("e", [2.5], train_last=float("inf")))
    # a failure that is not a blow-up (an OOM, a lost node) is not a divergence
    assert not is_diverged(make_run("f", [2.5], status=JobStatus.FAILED))
    assert not is_diverged(RunData(job_id="g", seed=0, status=JobStatus.PENDING))


# ----------------------------------------------------------------------- selection


def test_select_best_lowest_loss_skipping_diverged_failed_and_running() -> None:
    req = make_request(batch_sizes=[16])
    runs = [
        trial("adamw", 16, 0, 1e-4, [2.9, 3.0]),
        # diverged after a very low loss: must not win
        trial("adamw", 16, 1, 1e-2, [1.0, NAN], status=JobStatus.FAILED, train_last=NAN),
        # failed without diverging (its last loss is not a final loss)
        trial("adamw", 16, 2, 3e-3, [1.5], status=JobStatus.FAILED),
        trial("adamw", 16, 3, 1e-3, [2.7, 2.5]),
        # still running: not final yet
        trial("adamw", 16, 4, 5e-4, [1.2], status=JobStatus.RUNNING),
        # a SUCCEEDED job whose loss went to NaN at the end
        trial("adamw", 16, 5, 2e-3, [1.1, NAN]),
    ]
    best = select_best(req, runs)
    assert set(best) == {(16, "alto"), (16, "adamw")}
    assert best[(16, "adamw")] is runs[3]
    assert best[(16, "alto")] is None


def test_select_best_ties_go_to_the_lowest_trial_index() -> None:
    req = make_request(batch_sizes=[16])
    runs = [
        trial("alto", 16, 2, 1e-2, [2.5, 2.0]),
        trial("alto", 16, 1, 1e-3, [2.4, 2.0]),
        trial("alto", 16, 0, 1e-1, [2.6, 2.2]),
    ]
    assert select_best(req, runs)[(16, "alto")] is runs[1]


def test_no_trial_qualifies_is_a_finding_not_an_error() -> None:
    req = make_request(batch_sizes=[16])
    runs = [
        trial("alto", 16, i, lr, [2.5, NAN], status=JobStatus.FAILED, train_last=NAN)
        for i, lr in enumerate([1e-3, 1e-2, 1e-1])
    ]
    summary = summarize_study(req, runs)
    res = arm_result(summary, 16, "alto")
    assert res.chosen is None and res.chosen_trial is None
    assert all(t.diverged for t in res.trials)
    assert all(t.final_val_loss is None for t in res.trials)
    assert res.tuning_curve == [None, None, None]
    assert "batch 16: no alto trial finished without diverging" in summary.findings


def test_chosen_trial_and_on_edge() -> None:
    summary = summarize_study(make_request(), full_study())
    adamw16 = arm_result(summary, 16, "adamw")
    assert adamw16.chosen == {"lr": 1e-3} and adamw16.chosen_trial == 1
    assert adamw16.on_edge == []
    alto16 = arm_result(summary, 16, "alto")
    assert alto16.chosen == {"lr": 1e-1} and alto16.chosen_trial == 2
    assert alto16.on_edge == ["lr"]
    assert (
        "batch 16: alto's best lr 0.1 is the highest value tried (range 0.001..0.1): the "
        "optimum may lie beyond it; widen or shift the range, or add trials"
    ) in (summary.findings)
    # batch 64: the diverged trial (lr 1e-2, the top value tried) is not chosen; the
    # chosen 1e-3 is neither the lowest nor the highest value tried
    adamw64 = arm_result(summary, 64, "adamw")
    assert adamw64.chosen_trial == 2 and adamw64.on_edge == []
    assert [t.diverged for t in adamw64.trials] == [False, True, False]
    assert adamw64.tuning_curve == [2.6, 2.6, 2.4]
    # alto at 64: best 3e-2 is the top of 1e-3, 1e-2, 3e-2
    assert arm_result(summary, 64, "alto").on_edge == ["lr"]


def test_on_edge_bottom_and_single_value() -> None:
    req = make_request(batch_sizes=[16])
    runs = [
        trial("adamw", 16, 0, 1e-4, [2.5, 2.0]),
        trial("adamw", 16, 1, 1e-3, [2.5, 2.2]),
        trial("alto", 16, 0, 1e-2, [2.5, 2.2]),
        trial("alto", 16, 1, 1e-2, [2.5, 2.1]),
    ]
    summary = summarize_study(req, runs)
    assert arm_result(summary, 16, "adamw").on_edge == ["lr"]
    assert any("lowest value tried" in f for f in summary.findings)
    # one distinct value tried: no range to be at the edge of
    assert arm_result(summary, 16, "alto").on_edge == []


# ----------------------------------------------------------------------- targets


def test_target_steps_and_speedup_on_hand_made_curves() -> None:
    req = make_request()
    summary = summarize_study(req, full_study())
    b16 = next(b for b in summary.batches if b.batch_size == 16)
    assert b16.steps == 100
    assert b16.target == pytest.approx(2.1)
    assert b16.eval_noise == pytest.approx(0.004)

    alto = arm_result(summary, 16, "alto")
    assert alto.seeds == [0, 1, 2]
    assert alto.final_job_ids == ["f-alto-16-0", "f-alto-16-1", "f-alto-16-2"]
    assert alto.final_status == JobStatus.SUCCEEDED
    assert alto.final_val_loss_mean == pytest.approx(1.80)
    assert alto.final_val_loss_std == pytest.approx(0.01)
    assert alto.reached_target == 3
    assert alto.steps_to_target == 50.0
    assert alto.tokens_to_target == 50 * 16 * SEQ
    # time origin: the first train/loss point at T0 + 1; val at step 50 at T0 + 50
    assert alto.wall_time_to_target_s == pytest.approx(49.0)
    assert alto.speedup == pytest.approx(2.0)
    assert alto.speedup_ci == pytest.approx((2.0, 2.0))
    assert alto.tokens_per_s_ratio == pytest.approx(0.9)
    assert alto.optimizer_state_ratio == pytest.approx(0.5)
    assert alto.peak_memory_ratio is None  # no memory metric reported

    # the baseline against its own target: two of three seeds end at or below it
    adamw = arm_result(summary, 16, "adamw")
    assert adamw.reached_target == 2
    assert adamw.steps_to_target == 100.0
    assert adamw.speedup == pytest.approx(1.0)
    assert adamw.delta_vs_baseline is None and adamw.verdict is None
    assert adamw.tokens_per_s_ratio == pytest.approx(1.0)


def test_speedup_ci_over_seeds_that_differ() -> None:
    req = make_request(batch_sizes=[16])
    runs = [final("adamw", 16, s, [2.6, 2.4, 2.3, end]) for s, end in enumerate([2.0, 2.0, 2.0])]
    # alto seeds reach 2.0 at steps 25, 50, 50: mean 125/3
    runs += [
        final("alto", 16, 0, [1.9, 1.8, 1.7, 1.6]),
        final("alto", 16, 1, [2.1, 1.9, 1.8, 1.7]),
        final("alto", 16, 2, [2.2, 2.0, 1.9, 1.8]),
    ]
    res = arm_result(summarize_study(req, runs), 16, "alto")
    assert res.steps_to_target == pytest.approx(125 / 3)
    assert res.speedup == pytest.approx(100 / (125 / 3))
    lo, hi = res.speedup_ci
    assert lo <= res.speedup <= hi
    assert lo >= 100 / 50 - 1e-9 and hi <= 100 / 25 + 1e-9


def test_bootstrap_ci_contains_the_mean_narrow_or_wide() -> None:
    close = [2.0, 2.0001, 2.0002, 1.9999]
    lo, hi = bootstrap_ci([close], lambda x, axis=-1: x.mean(axis=axis))
    assert lo <= sum(close) / 4 <= hi
    assert hi - lo < 0.001
    noisy = [1.5, 2.0, 2.5, 3.0, 1.8]
    lo, hi = bootstrap_ci([noisy], lambda x, axis=-1: x.mean(axis=axis))
    assert lo <= sum(noisy) / 5 <= hi
    assert hi - lo > 0.4
    # identical values: a degenerate but valid interval; one value: no interval
    assert bootstrap_ci([[2.0, 2.0, 2.0]], lambda x, axis=-1: x.mean(axis=axis)) == (2.0, 2.0)
    assert bootstrap_ci([[2.0]], lambda x, axis=-1: x.mean(axis=axis)) is None
    # reproducible
    again = bootstrap_ci([noisy], lambda x, axis=-1: x.mean(axis=axis))
    assert again == (lo, hi)


def test_final_val_loss_ci_of_the_study() -> None:
    summary = summarize_study(make_request(), full_study())
    alto = arm_result(summary, 16, "alto")
    lo, hi = alto.final_val_loss_ci
    assert lo <= alto.final_val_loss_mean <= hi
    assert hi - lo <= 0.02 + 1e-9
    adamw = arm_result(summary, 16, "adamw")
    lo2, hi2 = adamw.final_val_loss_ci
    assert lo2 <= adamw.final_val_loss_mean <= hi2
    assert hi2 - lo2 > hi - lo  # adamw's seeds spread 10x more


# ----------------------------------------------------------------------- verdicts


def _verdict_study(alto: list[float], adamw: list[float], sem: float | None):
    req = make_request(batch_sizes=[16], seeds=list(range(len(alto))))
    runs = [final("alto", 16, s, [3.0, 2.5, 2.3, v], sem=sem) for s, v in enumerate(alto)]
    runs += [final("adamw", 16, s, [3.0, 2.5, 2.3, v], sem=sem) for s, v in enumerate(adamw)]
    summary = summarize_study(req, runs)
    return summary, arm_result(summary, 16, "alto")


def test_verdict_better_for_a_clear_gap() -> None:
    summary, res = _verdict_study([1.80, 1.81, 1.79], [2.0, 2.1, 2.2], sem=0.004)
    assert res.delta_vs_baseline == pytest.approx(-0.3)
    lo, hi = res.delta_ci
    assert lo <= -0.3 <= hi and hi < 0
    assert res.verdict == VERDICT_BETTER
    sentence = next(f for f in summary.findings if f.startswith("batch 16: alto's final"))
    assert "0.300 lower than adamw's (95% CI" in sentence
    assert sentence.endswith(": better")


def test_verdict_worse() -> None:
    _, res = _verdict_study([2.40, 2.41, 2.39], [2.0, 2.01, 1.99], sem=0.004)
    assert res.verdict == VERDICT_WORSE


def test_verdict_inside_the_noise_when_the_gap_is_within_twice_the_eval_noise() -> None:
    alto = [2.090, 2.0901, 2.0902]
    adamw = [2.100, 2.1001, 2.1002]
    # the seeds agree so well that the interval excludes zero ...
    summary, res = _verdict_study(alto, adamw, sem=0.01)
    assert res.delta_ci[1] < 0
    # ... but 0.01 is within 2 x 0.01 of evaluation noise
    assert res.verdict == VERDICT_NOISE
    assert any(f.endswith("inside the noise (evaluation noise 0.010)") for f in summary.findings)
    # the same gap with a precise evaluation is a real one
    _, res = _verdict_study(alto, adamw, sem=0.001)
    assert res.verdict == VERDICT_BETTER


def test_verdict_inside_the_noise_when_the_interval_spans_zero() -> None:
    _, res = _verdict_study([2.0, 2.2, 2.1], [2.05, 2.15, 2.1], sem=0.001)
    lo, hi = res.delta_ci
    assert lo < 0 < hi
    assert res.verdict == VERDICT_NOISE


def test_too_few_seeds_cannot_decide() -> None:
    summary, res = _verdict_study([1.8], [2.1], sem=0.004)
    assert res.delta_vs_baseline == pytest.approx(-0.3)
    assert res.delta_ci is None and res.final_val_loss_ci is None
    assert res.final_val_loss_std is None
    assert res.verdict == VERDICT_UNDECIDED
    assert any("cannot tell a difference" in f for f in summary.findings)
    assert any("too few finished seeds to decide" in f for f in summary.findings)


# ----------------------------------------------------------------------- across batches


def test_common_target_and_scaling() -> None:
    summary = summarize_study(make_request(), full_study())
    b64 = next(b for b in summary.batches if b.batch_size == 64)
    assert b64.target == pytest.approx(2.30)
    # the worst final loss of the baseline's seeds (2.29 and 2.31 at 64; 2.1 at 16), so
    # every baseline seed reaches it at every batch size
    assert summary.common_target == pytest.approx(2.31)
    points = {(p.arm, p.batch_size): p for p in summary.scaling}
    assert set(points) == {("alto", 16), ("alto", 64), ("adamw", 16), ("adamw", 64)}
    assert points[("alto", 16)].steps_to_target == 50.0 and points[("alto", 16)].reached
    assert points[("alto", 64)].steps_to_target == 50.0 and points[("alto", 64)].reached
    assert points[("adamw", 16)].steps_to_target == 75.0 and points[("adamw", 16)].reached
    # at its worst batch size the worse baseline seed reaches it only at its last step
    assert points[("adamw", 64)].steps_to_target == 100.0
    assert points[("adamw", 64)].reached
    assert any(f.startswith("common target 2.310") for f in summary.findings)
    assert "alto: from batch 16 to 64 (4x), steps to the common target fall 1.00x" in (
        " ".join(summary.findings)
    )


# ----------------------------------------------------------------------- partial data


def test_tuning_phase_only_summarizes_without_error() -> None:
    req = make_request()
    runs = [
        trial("adamw", 16, 0, 1e-4, [2.8, 2.5]),
        trial("adamw", 16, 1, 1e-3, [2.6], status=JobStatus.RUNNING),
        trial("adamw", 16, 2, 1e-2, [], status=JobStatus.PENDING),
        trial("alto", 16, 0, 1e-3, [2.6, NAN], status=JobStatus.FAILED, train_last=NAN),
        trial("alto", 16, 1, 1e-2, [], status=JobStatus.QUEUED),
        StudyRun(
            "t-x",
            "trial",
            "alto",
            64,
            0,
            0,
            {"lr": 1e-2},
            JobStatus.PENDING,
            RunData("t-x", 0, JobStatus.PENDING),
        ),
    ]
    summary = summarize_study(req, runs)
    assert [b.batch_size for b in summary.batches] == [16, 64]
    for b in summary.batches:
        assert b.target is None and b.eval_noise is None
        for a in b.arms:
            assert a.final_status is None and a.final_job_ids == []
            assert a.final_val_loss_mean is None and a.final_val_loss_ci is None
            assert a.delta_vs_baseline is None and a.verdict is None
            assert a.steps_to_target is None and a.speedup is None
    adamw = arm_result(summary, 16, "adamw")
    assert adamw.chosen_trial == 0
    assert adamw.tuning_curve == [2.5, 2.5, 2.5]
    alto = arm_result(summary, 16, "alto")
    assert alto.chosen is None and alto.tuning_curve == [None, None]
    assert "batch 16: 1 of 2 alto trials diverged so far" in summary.findings
    assert summary.common_target is None
    assert all(not p.reached and p.steps_to_target is None for p in summary.scaling)
    png = render_study("tuning", summary, req, runs)
    assert png.startswith(b"\x89PNG")


def test_final_runs_in_progress_and_failed() -> None:
    req = make_request(batch_sizes=[16])
    runs = [
        final("adamw", 16, 0, [2.6, 2.4, 2.3, 2.1]),
        final("adamw", 16, 1, [2.6, 2.4], status=JobStatus.RUNNING),
        final("adamw", 16, 2, [2.6, NAN], status=JobStatus.FAILED),
        final("alto", 16, 0, [2.5, 2.0, 1.9, 1.8]),
        final("alto", 16, 1, [2.5, 2.0, 1.9, 1.8], sem=None),
    ]
    summary = summarize_study(req, runs)
    adamw = arm_result(summary, 16, "adamw")
    assert adamw.final_status == JobStatus.FAILED
    assert adamw.seeds == [0, 1, 2]
    assert adamw.final_val_loss_mean == pytest.approx(2.1)  # the finished seed only
    assert any("1 of 3 adamw final runs failed or diverged" in f for f in summary.findings)
    alto = arm_result(summary, 16, "alto")
    assert alto.delta_vs_baseline == pytest.approx(-0.3)
    assert alto.verdict == VERDICT_UNDECIDED  # one finished baseline seed
    assert alto.steps_to_target == 50.0 and alto.speedup == pytest.approx(2.0)
    assert summary.batches[0].eval_noise == pytest.approx(0.004)


# ----------------------------------------------------------------------- properties

outcome = st.one_of(
    st.floats(min_value=1.0, max_value=5.0),
    st.sampled_from(["diverged", "failed", "running", "pending"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(outcome, min_size=1, max_size=12))
def test_tuning_curve_is_best_so_far(outcomes: list[object]) -> None:
    req = make_request(batch_sizes=[16])
    runs = []
    for i, o in enumerate(outcomes):
        lr = 1e-3 * (1 + i)
        if o == "diverged":
            runs.append(trial("alto", 16, i, lr, [2.0, NAN], JobStatus.FAILED, NAN))
        elif o == "failed":
            runs.append(trial("alto", 16, i, lr, [2.0], JobStatus.FAILED))
        elif o == "running":
            runs.append(trial("alto", 16, i, lr, [2.0], JobStatus.RUNNING))
        elif o == "pending":
            runs.append(trial("alto", 16, i, lr, [], JobStatus.PENDING))
        else:
            runs.append(trial("alto", 16, i, lr, [6.0, float(o)]))
    runs.reverse()  # arrival order must not matter
    res = arm_result(summarize_study(req, runs), 16, "alto")
    curve = res.tuning_curve
    assert len(curve) == len(outcomes)
    finite = [c for c in curve if c is not None]
    # None only before the first finished trial, then never increasing
    assert curve[len(curve) - len(finite) :] == finite
    assert all(a >= b for a, b in itertools.pairwise(finite))
    losses = [o for o in outcomes if isinstance(o, float)]
    if losses:
        assert finite[-1] == min(losses)
        assert res.chosen_trial == outcomes.index(min(losses))
        assert select_best(req, runs)[(16, "alto")].trial == res.chosen_trial
    else:
        assert res.chosen_trial is None and not finite


# ----------------------------------------------------------------------- figure


def test_render_study_full_and_empty() -> None:
    req = make_request()
    runs = full_study()
    png = render_study("full", summarize_study(req, runs), req, runs)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    empty = render_study("empty", summarize_study(req, []), req, [])
    assert empty.startswith(b"\x89PNG")


def test_summary_values_are_finite_or_none() -> None:
    summary = summarize_study(make_request(), full_study())
    for b in summary.batches:
        for a in b.arms:
            for k, v in a.model_dump().items():
                if isinstance(v, float):
                    assert math.isfinite(v), k
