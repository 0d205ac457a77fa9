"""A study's plan: the trial points, the spec of every job, and what it all costs.

Pure functions of the request and a few settings, so the plan a dry run prints is the
plan the study runs: the points come from `scipy.stats.qmc` scrambled with the study's
seed (or a grid's product), and every job's spec derives from the base spec by one
rule per batch size (`batch_spec`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from alto_client.spec import JobSpec
from alto_client.study import BatchPlan, StudyArm, StudyPlan, StudyRequest
from scipy.stats import qmc

from service.cluster import ClusterCapacity
from service.specs import resource_request, variant

SIGNIFICANT_DIGITS = 4
"""Trial values are rounded to this many significant digits: they read well in tables
and job names, and a study's points are the same on every machine."""


def _round(x: float) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def trial_points(request: StudyRequest) -> dict[str, list[dict[str, float]]]:
    """Every arm's trial points, in trial order (the same points at every batch size, so
    the batch-size axis compares like with like).

    Quasi-random: a scrambled Sobol or Halton sequence in the unit cube of the arm's
    searched fields (sorted by name), seeded by (tuning.seed, arm index), mapped onto
    each range on its scale. Grid: the product of every field's values.
    """
    out: dict[str, list[dict[str, float]]] = {}
    for index, arm in enumerate(request.arms):
        fields = sorted(arm.search)
        if request.tuning.method == "grid":
            axes = [arm.search[f].values or [] for f in fields]
            out[arm.name] = [
                {f: float(v) for f, v in zip(fields, combo)} for combo in itertools.product(*axes)
            ]
            continue
        rng = np.random.default_rng([request.tuning.seed, index])
        engine: qmc.QMCEngine
        if request.tuning.method == "sobol":
            engine = qmc.Sobol(d=len(fields), scramble=True, seed=rng)
        else:
            engine = qmc.Halton(d=len(fields), scramble=True, seed=rng)
        with warnings.catch_warnings():
            # Sobol prefers powers of two; any prefix of the sequence is still low-discrepancy
            warnings.simplefilter("ignore", UserWarning)
            unit = engine.random(request.tuning.trials)
        points = []
        for row in unit:
            point = {}
            for f, u in zip(fields, row):
                rng_ = arm.search[f]
                lo, hi = rng_.bounds
                if rng_.scale == "log":
                    value = math.exp(math.log(lo) + float(u) * (math.log(hi) - math.log(lo)))
                else:
                    value = lo + float(u) * (hi - lo)
                point[f] = _round(min(max(value, lo), hi))
            points.append(point)
        out[arm.name] = points
    return out


def eval_sequences(request: StudyRequest) -> int:
    """Validation sequences per evaluation, the same at every batch size."""
    if request.eval_sequences is not None:
        return request.eval_sequences
    t = request.spec.training
    return max(1, t.eval_batches) * t.global_batch_size


def batch_spec(request: StudyRequest, batch_size: int) -> JobSpec:
    """The base spec at one global batch size: its step budget, and the warm-up, decay,
    checkpoint intervals kept at the base spec's fractions of the run; evaluations
    `evals_per_run` times per run on `eval_sequences` sequences."""
    base = request.spec
    t = base.training
    steps = request.budget.steps_at(batch_size, base.model.seq_length)

    def scaled(count: int) -> int:
        return round(count / t.steps * steps)

    training: dict[str, Any] = {
        "global_batch_size": batch_size,
        "steps": steps,
        "warmup_steps": min(scaled(t.warmup_steps), steps - 1),
        "eval_interval": max(1, steps // request.evals_per_run),
        "eval_batches": max(1, math.ceil(eval_sequences(request) / batch_size)),
    }
    if t.lr_decay_steps is not None:
        training["lr_decay_steps"] = max(1, scaled(t.lr_decay_steps))
    if t.checkpoint_interval:
        training["checkpoint_interval"] = max(1, scaled(t.checkpoint_interval))
    data = base.model_dump(mode="python")
    data["training"].update(training)
    data["report"] = None
    return JobSpec.model_validate(data)


@dataclass(frozen=True)
class PlannedJob:
    """One job of a study: where it sits in the study, and its spec."""

    role: str  # "trial" or "final"
    batch_size: int
    arm: str
    trial: int | None
    seed: int
    params: dict[str, float]
    spec: JobSpec


def job_name(request: StudyRequest, batch_size: int, arm: str, tail: str) -> str:
    base = request.name or request.spec.name
    return f"{base}/b{batch_size}/{arm}/{tail}"[:200]


def arm_spec(
    request: StudyRequest,
    batch: JobSpec,
    arm: StudyArm,
    params: dict[str, float],
    seed: int,
    name: str,
) -> JobSpec:
    """The job of `arm` at this batch with the searched fields set to `params`
    (validated again: ALTO's paper defaults follow the batch size)."""
    optimizer = arm.optimizer.model_dump(mode="python")
    optimizer.update(params)
    return variant(batch, optimizer, seed, name)


def trial_jobs(request: StudyRequest) -> list[PlannedJob]:
    """The tuning phase: every trial point of every arm at every batch size, one seed
    (the base spec's)."""
    points = trial_points(request)
    seed = request.spec.training.seed
    out = []
    for b in request.batch_sizes:
        batch = batch_spec(request, b)
        for arm in request.arms:
            for i, params in enumerate(points[arm.name]):
                name = job_name(request, b, arm.name, f"trial{i}")
                spec = arm_spec(request, batch, arm, params, seed, name)
                out.append(PlannedJob("trial", b, arm.name, i, seed, params, spec))
    return out


def final_jobs(
    request: StudyRequest, chosen: dict[tuple[int, str], tuple[int, dict[str, float]]]
) -> list[PlannedJob]:
    """The final phase: each (batch size, arm)'s chosen point with every final seed."""
    out = []
    arms = {a.name: a for a in request.arms}
    for b in request.batch_sizes:
        batch = batch_spec(request, b)
        for arm in request.arms:
            if (b, arm.name) not in chosen:
                continue
            trial, params = chosen[(b, arm.name)]
            for seed in request.seeds:
                name = job_name(request, b, arm.name, f"seed{seed}")
                spec = arm_spec(request, batch, arms[arm.name], params, seed, name)
                out.append(PlannedJob("final", b, arm.name, trial, seed, params, spec))
    return out


# ---------------------------------------------------------------- the cost estimate


def flops_per_token(spec: JobSpec) -> float:
    """Training FLOPs per token (forward and backward, 3x the forward's matmuls): per
    layer the attention projections (8h^2), scores and values (4sh), the MLP of the
    experts a token is routed to (4 h f k) and the router (2hE); then the logits (2hV)."""
    m = spec.model
    h, s = m.hidden_size, m.seq_length
    if m.is_moe:
        ffn = m.moe_ffn_hidden_size or m.ffn_size
        mlp = 4 * h * ffn * m.moe_router_topk + 2 * h * m.num_experts
    else:
        mlp = 4 * h * m.ffn_size
    per_layer = 8 * h * h + 4 * s * h + mlp
    return 3.0 * (m.num_layers * per_layer + 2 * h * spec.vocab_size)


@dataclass(frozen=True)
class CostModel:
    """Sustained training FLOP/s per CPU core and per GPU, and the fixed start-up cost of
    a job; service settings, calibrated as described in docs/service.md."""

    flops_per_cpu: float
    flops_per_gpu: float
    job_overhead_s: float


def job_hours(spec: JobSpec, cost: CostModel) -> tuple[str, float]:
    """(resource, resource-hours) one job is estimated to take."""
    r = spec.resources
    if r.device == "gpu":
        units, rate = float(r.workers), cost.flops_per_gpu
    else:
        units, rate = r.workers * r.cpus_per_worker, cost.flops_per_cpu
    t = spec.training
    evals = (t.steps // t.eval_interval if t.eval_interval else 0) + 1
    eval_tokens = evals * t.eval_batches * t.global_batch_size * spec.model.seq_length
    # an evaluation is a forward pass: a third of a training step's FLOPs per token
    flops = (t.steps * spec.tokens_per_step + eval_tokens / 3.0) * flops_per_token(spec)
    seconds = flops / (units * rate)
    return r.device, (seconds + cost.job_overhead_s) * units / 3600.0


def make_plan(
    request: StudyRequest, cost: CostModel, capacity: ClusterCapacity | None
) -> StudyPlan:
    """Jobs, steps and tokens in all (final runs counted as if every arm finds a point),
    and the estimated resource-hours; `cluster_hours` is that spread over every unit of
    the cluster (a lower bound on the study's wall time)."""
    points = trial_points(request)
    batches = []
    steps = tokens = 0
    resource = request.spec.resources.device
    hours = 0.0
    for b in request.batch_sizes:
        spec = batch_spec(request, b)
        t = spec.training
        n_trials = sum(len(points[a.name]) for a in request.arms)
        n_final = len(request.arms) * len(request.seeds)
        per_job_tokens = t.steps * spec.tokens_per_step
        batches.append(
            BatchPlan(
                batch_size=b,
                steps=t.steps,
                tokens_per_job=per_job_tokens,
                warmup_steps=t.warmup_steps,
                eval_interval=t.eval_interval,
                eval_batches=t.eval_batches,
                tuning_jobs=n_trials,
                final_jobs=n_final,
            )
        )
        steps += (n_trials + n_final) * t.steps
        tokens += (n_trials + n_final) * per_job_tokens
        hours += (n_trials + n_final) * job_hours(spec, cost)[1]
    tuning = sum(x.tuning_jobs for x in batches)
    final = sum(x.final_jobs for x in batches)
    cluster_hours = None
    if capacity is not None and capacity.nodes:
        key = "GPU" if resource == "gpu" else "CPU"
        units = capacity.total.get(key, 0.0)
        if units > 0:
            cluster_hours = hours / units
    rate = cost.flops_per_gpu if resource == "gpu" else cost.flops_per_cpu
    per = "GPU" if resource == "gpu" else "CPU core"
    return StudyPlan(
        jobs=tuning + final,
        tuning_jobs=tuning,
        final_jobs=final,
        steps=steps,
        tokens=tokens,
        batches=batches,
        trials=points,
        resource=resource,
        resource_hours=hours,
        cluster_hours=cluster_hours,
        estimate_basis=(
            f"{flops_per_token(request.spec) / 1e6:.3g} MFLOP per training token (evaluation "
            f"tokens a third of that) at "
            f"{rate:.3g} FLOP/s per {per}, plus {cost.job_overhead_s:g} s of start-up per "
            f"job on {resource_request(request.spec)}"
        ),
    )
