"""The wire schema of studies (``/v1/studies``): a tuned ALTO-vs-baseline answer across
batch sizes, in one request.

A study is a set of ordinary jobs the service derives from one base spec: for each
global batch size and each arm, `tuning.trials` trials (one seed each) at points of the
arm's search space; then, per (batch size, arm), the trial with the lowest final
validation loss is run again with every final seed. The summary compares each arm's
final runs with the baseline arm's at the same batch size, AlgoPerf-style.

The request is checked here as far as data alone allows (ranges, names, divisibility,
fields the optimizer has); the service adds what needs its settings and the cluster
(the plan, its caps, the launch checks of every derived spec).
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from alto_client.models import JobStatus, _Request, _Response, check_seeds
from alto_client.spec import AdamWSpec, AltoSpec, ESpec, JobSpec, OptimizerSpec
from alto_client.spec.problems import (
    SpecError,
    SpecProblem,
    problem,
    problems_from_validation_error,
)

__all__ = [
    "BatchPlan",
    "Budget",
    "ScalingPoint",
    "SearchRange",
    "Study",
    "StudyArm",
    "StudyArmResult",
    "StudyBatch",
    "StudyInfo",
    "StudyList",
    "StudyPlan",
    "StudyRequest",
    "TrialResult",
    "Tuning",
    "load_study",
    "searchable_fields",
]

MAX_TRIALS = 64
MAX_SEEDS = 16
MAX_BATCH_SIZES = 8
MAX_ARMS = 8

_OPTIMIZER_MODELS = {"alto": AltoSpec, "adamw": AdamWSpec, "e": ESpec}


def searchable_fields(optimizer_name: str) -> list[str]:
    """The numeric fields of an optimizer section a study may search over."""
    model = _OPTIMIZER_MODELS[optimizer_name]
    out = []
    for name, info in model.model_fields.items():
        ann = str(info.annotation)
        if "float" in ann and "dict" not in ann and "list" not in ann:
            out.append(name)
    return out


class SearchRange(_Request):
    """One dimension of an arm's search space: a range (`low`..`high`, sampled on a
    log or linear scale) for quasi-random search, or explicit `values` for a grid."""

    low: float | None = None
    high: float | None = None
    scale: Literal["log", "linear"] = "log"
    values: list[float] | None = Field(default=None, min_length=1, max_length=MAX_TRIALS)

    @model_validator(mode="after")
    def _range_or_values(self) -> SearchRange:
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either low/high (a range) or values (a grid), not both")
            bad = [v for v in self.values if not math.isfinite(v)]
            if bad:
                raise ValueError(f"values must be finite numbers, got {bad[0]!r}")
            if len(set(self.values)) != len(self.values):
                raise ValueError(f"values must be distinct, got {self.values}")
            if self.scale == "log" and min(self.values) <= 0:
                raise ValueError(
                    f"a log-scale dimension needs values > 0, got {min(self.values)!r} "
                    "(use scale: linear for signed values)"
                )
            return self
        if self.low is None or self.high is None:
            raise ValueError("a search range needs both low and high (or values for a grid)")
        for label, v in (("low", self.low), ("high", self.high)):
            if not math.isfinite(v):
                raise ValueError(f"{label} must be a finite number, got {v!r}")
        if not self.low < self.high:
            raise ValueError(
                f"low must be < high, got low={self.low!r} high={self.high!r} "
                "(an empty or inverted range)"
            )
        if self.scale == "log" and self.low <= 0:
            raise ValueError(
                f"a log-scale range needs low > 0, got low={self.low!r} "
                "(use scale: linear for ranges through zero)"
            )
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the dimension can take."""
        if self.values is not None:
            return min(self.values), max(self.values)
        assert self.low is not None and self.high is not None
        return self.low, self.high


class StudyArm(_Request):
    """One optimizer of the study and the space its hyperparameters are tuned over."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    optimizer: OptimizerSpec
    search: dict[str, SearchRange] = Field(
        min_length=1,
        description="optimizer field -> range or grid; lr is required and must be > 0",
    )

    @model_validator(mode="after")
    def _search_fits_optimizer(self) -> StudyArm:
        """Every searched field is one the optimizer has, lr is searched and > 0, and
        both ends of every range are values the optimizer accepts; every problem is
        located at its ``search.<field>``."""
        name = self.optimizer.name
        allowed = searchable_fields(name)
        problems = []
        for field in self.search:
            if field not in allowed:
                problems.append(
                    problem(
                        ("search", field),
                        f"the {name} optimizer has no numeric field {field!r}; "
                        f"searchable: {', '.join(allowed)}",
                        field,
                    )
                )
        if "lr" not in self.search:
            problems.append(
                problem(
                    ("search",),
                    "search must include lr (a learning-rate range, e.g. log 1e-4..1e-2); "
                    f"got {', '.join(self.search)}",
                    sorted(self.search),
                )
            )
        elif self.search["lr"].bounds[0] <= 0:
            low = self.search["lr"].bounds[0]
            problems.append(
                problem(("search", "lr"), f"learning rates must be > 0, got {low!r}", low)
            )
        if not problems:
            # both ends of every range must be values the optimizer accepts
            base = self.optimizer.model_dump(mode="python")
            for field, rng in self.search.items():
                for v in rng.bounds:
                    try:
                        type(self.optimizer).model_validate({**base, field: v})
                    except ValidationError as exc:
                        msg = exc.errors()[0]["msg"]
                        problems.append(
                            problem(
                                ("search", field),
                                f"{v!r} is not a valid {name} {field}: {msg}",
                                v,
                            )
                        )
                        break
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @property
    def grid(self) -> bool:
        """True when every dimension lists explicit values."""
        return all(r.values is not None for r in self.search.values())


class Budget(_Request):
    """How long each job of a batch size trains: a fixed number of `steps` at every
    batch size, or a fixed number of training `tokens` (larger batches take fewer
    steps: steps = round(tokens / (batch size * seq_length)))."""

    steps: int | None = Field(default=None, ge=1, le=10_000_000)
    tokens: int | None = Field(default=None, ge=1, le=10**15)

    @model_validator(mode="after")
    def _one_rule(self) -> Budget:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps or tokens")
        return self

    def steps_at(self, global_batch_size: int, seq_length: int) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None
        return max(1, round(self.tokens / (global_batch_size * seq_length)))


class Tuning(_Request):
    """The tuning budget: trials per (arm, batch size), how their points are drawn, and
    the seed that makes the points reproducible."""

    trials: int = Field(default=4, ge=1, le=MAX_TRIALS)
    method: Literal["sobol", "halton", "grid"] = Field(
        default="sobol",
        description="quasi-random points (scipy.stats.qmc, scrambled with `seed`) or the "
        "product of every dimension's values",
    )
    seed: int = Field(default=0, ge=0, lt=2**31)


class StudyRequest(_Request):
    """Tune every arm at every batch size, then run each winner with every seed."""

    spec: JobSpec
    arms: list[StudyArm] = Field(min_length=2, max_length=MAX_ARMS)
    batch_sizes: list[int] = Field(min_length=1, max_length=MAX_BATCH_SIZES)
    budget: Budget
    tuning: Tuning = Field(default_factory=Tuning)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, max_length=MAX_SEEDS)
    baseline: str
    eval_sequences: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="validation sequences per evaluation at every batch size; default: "
        "the base spec's eval_batches * global_batch_size",
    )
    evals_per_run: int = Field(
        default=8, ge=1, le=1000, description="evaluations per job (time to target)"
    )
    max_jobs: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    name: str | None = Field(default=None, max_length=200)

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"batch sizes must be distinct, got {sizes}")
        bad = [b for b in sizes if b < 1]
        if bad:
            raise ValueError(f"every batch size must be >= 1, got {bad[0]}")
        return sorted(sizes)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @model_validator(mode="wrap")
    @classmethod
    def _arms_baseline_batches(cls, data: Any, handler: Any) -> StudyRequest:
        """The rules across fields (distinct arm names, a baseline among them, search
        ranges that fit the tuning method, batch sizes the micro batch and data
        parallel workers divide), every problem located at its field."""
        request: StudyRequest = handler(data)
        raw_sizes = data.get("batch_sizes") if isinstance(data, dict) else None
        problems = []
        names = [a.name for a in request.arms]
        for i, arm in enumerate(request.arms):
            if arm.name in names[:i]:
                problems.append(
                    problem(
                        ("arms", i, "name"),
                        f"arm name {arm.name!r} is already the name of arms.{names.index(arm.name)}"
                        f"; arm names must be distinct, got {names}",
                        arm.name,
                    )
                )
        if request.baseline not in names:
            problems.append(
                problem(
                    ("baseline",),
                    f"baseline {request.baseline!r} is not one of the arms {names}",
                    request.baseline,
                )
            )
        method = request.tuning.method
        for i, arm in enumerate(request.arms):
            for field, rng in arm.search.items():
                if method == "grid" and rng.values is None:
                    problems.append(
                        problem(
                            ("arms", i, "search", field),
                            f"tuning.method grid needs values for every searched field; "
                            f"{field} gives a range (low={rng.low!r}, high={rng.high!r})",
                            rng.model_dump(exclude_none=True),
                        )
                    )
                elif method != "grid" and rng.values is not None:
                    problems.append(
                        problem(
                            ("arms", i, "search", field),
                            f"explicit values {rng.values} need tuning.method grid (method is "
                            f"{method}: give low and high for a {method} search)",
                            rng.values,
                        )
                    )
            if method == "grid" and arm.grid and cls.grid_size(arm) > MAX_TRIALS:
                problems.append(
                    problem(
                        ("arms", i, "search"),
                        f"arm {arm.name}: its grid has {cls.grid_size(arm)} points, at most "
                        f"{MAX_TRIALS} trials per arm and batch size are allowed",
                        cls.grid_size(arm),
                    )
                )
        s = request.spec
        dp = s.data_parallel_size
        micro = s.training.micro_batch_size
        for i, b in enumerate(request.batch_sizes):
            if b % (micro * dp):
                at = raw_sizes.index(b) if isinstance(raw_sizes, list) and b in raw_sizes else i
                problems.append(
                    problem(
                        ("batch_sizes", at),
                        f"batch size {b} is not a multiple of micro_batch_size * data_parallel "
                        f"= {micro} * {dp} = {micro * dp} (set spec.training.micro_batch_size "
                        "or the batch sizes so that it divides every one)",
                        b,
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return request

    @staticmethod
    def grid_size(arm: StudyArm) -> int:
        n = 1
        for r in arm.search.values():
            n *= len(r.values or [])
        return n

    def trials_per_arm(self, arm: StudyArm) -> int:
        return self.grid_size(arm) if self.tuning.method == "grid" else self.tuning.trials


def _under(prefix: str, problems: list[SpecProblem]) -> list[SpecProblem]:
    """Problems of the study's spec, located in the study (``spec.model.hidden_size``)."""
    return [SpecProblem(f"{prefix}.{p.field}" if p.field else prefix, p.message) for p in problems]


def load_study(source: str | Path | dict[str, Any] | StudyRequest) -> StudyRequest:
    """A study request from a YAML/JSON file, a mapping or a request.

    In a file, ``spec`` may name a job spec file (relative to the study file) instead
    of holding the spec; ``spec_overrides`` (dotted paths, the ``--set`` rule) then
    adjust it. Every problem is raised at once as a `SpecError` naming its field."""
    if isinstance(source, StudyRequest):
        return source
    where = "study"
    base = Path.cwd()
    if isinstance(source, dict):
        data: Any = dict(source)
    else:
        path = Path(source)
        where, base = str(path), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(
                [SpecProblem("", f"cannot read study file {str(path)!r}: {exc.strerror}")], where
            ) from None
        try:
            import yaml

            from alto_client.spec.job import _SpecLoader

            data = yaml.load(text, Loader=_SpecLoader)
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise SpecError(
                [
                    SpecProblem(
                        "", "reading a study file needs PyYAML: pip install 'alto-client[cli]'"
                    )
                ],
                where,
            ) from None
        except yaml.YAMLError as exc:
            raise SpecError([SpecProblem("", f"not valid YAML: {exc}")], where) from None
    if not isinstance(data, dict):
        raise SpecError([SpecProblem("", "a study must be a mapping")], where)
    spec = data.get("spec")
    if isinstance(spec, str):
        try:
            data["spec"] = JobSpec.load(base / spec)
        except SpecError as exc:
            if all(p.field for p in exc.problems):
                raise  # problems located in the spec file it names
            raise SpecError(_under("spec", exc.problems), where) from None
    overrides = data.pop("spec_overrides", None)
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise SpecError([SpecProblem("spec_overrides", "must be a mapping")], where)
        spec = data.get("spec")
        if isinstance(spec, dict | JobSpec):  # else the request's validation says what is wrong
            try:
                spec_obj = spec if isinstance(spec, JobSpec) else JobSpec.from_dict(spec)
            except SpecError as exc:
                raise SpecError(_under("spec", exc.problems), where) from None
            try:
                data["spec"] = spec_obj.with_overrides(overrides)
            except SpecError as exc:
                raise SpecError(_under("spec_overrides", exc.problems), where) from None
    if isinstance(data.get("spec"), JobSpec):
        data["spec"] = data["spec"].model_dump(mode="python")
    try:
        return StudyRequest.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_from_validation_error(exc), where) from None


# ----------------------------------------------------------------------- answers


class BatchPlan(_Response):
    """What one batch size costs: the derived schedule and the jobs it runs."""

    batch_size: int
    steps: int
    tokens_per_job: int
    warmup_steps: int
    eval_interval: int
    eval_batches: int
    tuning_jobs: int
    final_jobs: int


class StudyPlan(_Response):
    """What a study will run, before anything runs: jobs, steps and tokens in all, the
    points each arm tries, and an estimate of its cost on this cluster."""

    jobs: int
    tuning_jobs: int
    final_jobs: int
    steps: int
    tokens: int
    batches: list[BatchPlan]
    trials: dict[str, list[dict[str, float]]]
    resource: Literal["cpu", "gpu"]
    resource_hours: float
    cluster_hours: float | None = None
    estimate_basis: str


class TrialResult(_Response):
    """One tuning trial: where it sat in the search space and how it ended."""

    trial: int
    params: dict[str, float]
    job_id: str
    status: JobStatus
    final_val_loss: float | None = None
    diverged: bool = False


class StudyArmResult(_Response):
    """One arm at one batch size: its tuning and its final runs against the baseline."""

    name: str
    trials: list[TrialResult]
    tuning_curve: list[float | None] = Field(
        default_factory=list,
        description="best final validation loss so far after 1, 2, ... trials",
    )
    chosen: dict[str, float] | None = None
    chosen_trial: int | None = None
    on_edge: list[str] = Field(
        default_factory=list,
        description="searched fields whose chosen value is the range's lowest or highest "
        "point tried: the range may have been too narrow",
    )
    final_status: JobStatus | None = None
    final_job_ids: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    final_val_loss_mean: float | None = None
    final_val_loss_std: float | None = None
    final_val_loss_ci: tuple[float, float] | None = None
    delta_vs_baseline: float | None = None
    delta_ci: tuple[float, float] | None = None
    verdict: str | None = None
    reached_target: int | None = Field(default=None, description="seeds that reached it")
    steps_to_target: float | None = None
    tokens_to_target: float | None = None
    wall_time_to_target_s: float | None = None
    speedup: float | None = None
    speedup_ci: tuple[float, float] | None = None
    tokens_per_s_ratio: float | None = None
    peak_memory_ratio: float | None = None
    optimizer_state_ratio: float | None = None


class StudyBatch(_Response):
    """Every arm at one global batch size; `target` is the tuned baseline's mean final
    validation loss there."""

    batch_size: int
    steps: int
    target: float | None = None
    eval_noise: float | None = Field(
        default=None,
        description="standard error of one evaluation (median over final runs), from "
        "the spread of its disjoint validation batches",
    )
    arms: list[StudyArmResult]


class ScalingPoint(_Response):
    """Steps one arm needs to reach the study's common target at one batch size."""

    arm: str
    batch_size: int
    steps_to_target: float | None = None
    reached: bool = False


class Study(_Response):
    """A study with everything known so far (its summary grows as phases end)."""

    id: str
    name: str
    owner: str
    phase: Literal["tuning", "final", "done", "cancelled"]
    status: JobStatus
    phase_reason: str | None = None
    baseline: str
    arms: list[str]
    batch_sizes: list[int]
    seeds: list[int]
    created_at: datetime
    plan: StudyPlan
    jobs: dict[str, int] = Field(default_factory=dict, description="job count by status")
    batches: list[StudyBatch] = Field(default_factory=list)
    common_target: float | None = None
    scaling: list[ScalingPoint] = Field(default_factory=list)
    findings: list[str] = Field(default_factory=list)


class StudyInfo(_Response):
    """A study as listed (the results are in `GET /v1/studies/{id}`)."""

    id: str
    name: str
    owner: str
    phase: str
    status: JobStatus
    baseline: str
    arms: list[str]
    batch_sizes: list[int]
    jobs: int
    created_at: datetime


class StudyList(_Response):
    """One page of studies, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[StudyInfo]
    next_cursor: str | None = None
