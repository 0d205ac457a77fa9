"""REST request and response models of the ALTO service (the `/v1` wire format).

These models are shared by the service (which produces them) and the light client (which
parses them), so both sides agree on one schema without the client importing the service.
They only use pydantic; the job spec itself lives in `alto_client.spec`.

Requests and responses differ on unknown fields on purpose. A request model
(`Arm`, `ComparisonRequest`, and the `JobSpec` inside them) forbids them, so a
typo in a spec is an error and not a silently ignored setting. A response model
ignores them, so an installed client keeps working when a newer server adds a
field to an answer.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alto_client.errors import FieldError
from alto_client.spec import JobSpec, OptimizerSpec

__all__ = [
    "TERMINAL_STATUSES",
    "Arm",
    "ArmCurves",
    "ArmSummary",
    "Comparison",
    "ComparisonCurves",
    "ComparisonInfo",
    "ComparisonList",
    "ComparisonRequest",
    "CurveBand",
    "ErrorResponse",
    "FieldError",
    "IngestResult",
    "Job",
    "JobList",
    "JobStatus",
    "LatestMetric",
    "MetricHistory",
    "MetricSeries",
]


class JobStatus(StrEnum):
    """Life cycle of a job.

    PENDING: stored, not yet looked at by the scheduler. QUEUED: waiting for cluster
    resources (or submitted to Ray and waiting for Ray to start it). RUNNING: the Ray job
    runs. SUCCEEDED / FAILED / CANCELLED: terminal, mirrored from the Ray job's end state.
    """

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True when the job can no longer change status."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
"""The end states: the one definition (the service, the CLI and the dashboard's
API answers all mean these). Members are `str`s too, so ``"FAILED" in
TERMINAL_STATUSES`` holds and the set can go straight into a SQL ``NOT IN``."""


def check_seeds(seeds: list[int]) -> list[int]:
    """Seeds of a comparison or study: distinct, each in [0, 2**31)."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    for s in seeds:
        if not 0 <= s < 2**31:
            raise ValueError(f"every seed must be in [0, 2**31), got {s}")
    return seeds


class _Request(BaseModel):
    """What a client sends: unknown fields are an error (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """What the server answers: unknown fields are ignored (a newer server may add some)."""

    model_config = ConfigDict(extra="ignore")


class ErrorResponse(_Response):
    """Body of every 4xx/5xx answer: a sentence, plus one entry per bad field when relevant."""

    message: str
    errors: list[FieldError] = Field(default_factory=list)


class LatestMetric(_Response):
    """The most recent value of one metric of a job (value None: not finite, e.g. NaN)."""

    step: int
    value: float | None
    time: float


class Job(_Response):
    """A training job as the service tracks it."""

    id: str
    name: str
    owner: str
    tags: list[str] = Field(default_factory=list)
    status: JobStatus
    status_reason: str | None = None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ray_job_id: str | None = None
    comparison_id: str | None = None
    study_id: str | None = None
    arm: str | None = None
    seed: int | None = None
    latest_metrics: dict[str, LatestMetric] = Field(default_factory=dict)

    def job_spec(self) -> JobSpec:
        """The stored spec parsed back into a `JobSpec`."""
        return JobSpec.model_validate(self.spec)


class JobList(_Response):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[Job]
    next_cursor: str | None = None


class MetricSeries(_Response):
    """The history of one metric; `downsampled` says it was too long for max_points.

    A value of None stands for a non-finite value (NaN or infinity, e.g. a diverged loss):
    plain JSON, which browsers also parse, has no NaN. A downsampled series has one
    point per bucket of steps: the bucket's last step and time, the mean of its finite
    values (None if it has none), and in `mins` and `maxs` their minimum and maximum.
    """

    name: str
    steps: list[int]
    values: list[float | None]
    times: list[float]
    total_points: int
    downsampled: bool = False
    mins: list[float | None] | None = None
    maxs: list[float | None] | None = None


class MetricHistory(_Response):
    """Metric histories of one job; `downsampled` is true when any series was downsampled."""

    job_id: str
    series: list[MetricSeries]
    downsampled: bool = False


class IngestResult(_Response):
    """Answer to a metric upload: how many points were new and how many were already stored."""

    accepted: int
    duplicates: int


class Arm(_Request):
    """One side of a comparison: a name and the optimizer section it trains with."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    optimizer: OptimizerSpec


class ComparisonRequest(_Request):
    """Run `spec` once per (arm, seed), changing only the optimizer and the seed."""

    spec: JobSpec
    arms: list[Arm] = Field(min_length=2, max_length=8)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, max_length=16)
    baseline: str
    name: str | None = Field(default=None, max_length=200)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @model_validator(mode="after")
    def _arms_and_baseline(self) -> ComparisonRequest:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the arms {names}")
        return self


class ArmSummary(_Response):
    """What one arm achieved, aggregated over its seeds (mean and sample std).

    Validation-loss fields are None until at least one seed reported val/loss. The
    speed-up fields compare with the baseline arm's mean final validation loss: the
    steps and wall time this arm needed to first reach it (`reached_baseline` False
    means "not reached"), and baseline steps / these steps.
    """

    name: str
    status: JobStatus
    job_ids: list[str]
    seeds: list[int]
    final_val_loss_mean: float | None = None
    final_val_loss_std: float | None = None
    best_val_loss_mean: float | None = None
    best_val_loss_std: float | None = None
    val_loss_delta_vs_baseline: float | None = None
    reached_baseline: bool | None = None
    steps_to_baseline: float | None = None
    wall_time_to_baseline_s: float | None = None
    step_speedup_vs_baseline: float | None = None
    tokens_per_s_mean: float | None = None
    tokens_per_s_ratio: float | None = None
    peak_memory_bytes_mean: float | None = None
    peak_memory_overhead_pct: float | None = None
    optimizer_state_bytes: float | None = None
    optimizer_state_bytes_ratio: float | None = None


class Comparison(_Response):
    """A set of jobs that differ only in optimizer and seed, with per-arm results."""

    id: str
    name: str
    owner: str
    status: JobStatus
    baseline: str
    seeds: list[int]
    created_at: datetime
    arms: list[ArmSummary]


class CurveBand(_Response):
    """One metric of one arm over its seeds: the mean and the band mean +- sample std.

    Computed by the server once, for the dashboard and `plot.png` alike: at every step any
    seed logged, each seed whose finite values span that step contributes its value there
    (linearly interpolated between its neighbouring logged steps when it did not log that
    exact step); `n[i]` seeds contributed at `steps[i]`, and the std is the sample std
    (0 where one seed contributed), as in the summary's `*_std`. Non-finite values (a
    diverged seed) are left out. Series longer than max_points keep the first, the last
    and per bucket the lowest and highest mean, and say `downsampled`.
    """

    metric: str
    steps: list[int]
    mean: list[float]
    lower: list[float]
    upper: list[float]
    n: list[int]
    n_seeds: int = Field(description="seeds with at least one finite value of the metric")
    total_points: int = Field(description="steps before downsampling")
    downsampled: bool = False


class ArmCurves(_Response):
    """The loss curves of one arm (`train/loss`, `val/loss`; a metric no seed reported yet
    is absent)."""

    name: str
    job_ids: list[str]
    curves: list[CurveBand]


class ComparisonCurves(_Response):
    """Per arm, in the comparison's arm order, the seed bands of its loss curves."""

    comparison_id: str
    baseline: str
    arms: list[ArmCurves]


class ComparisonInfo(_Response):
    """A comparison as listed: what it compares and how its jobs stand (no results;
    `GET /v1/comparisons/{id}` computes those)."""

    id: str
    name: str
    owner: str
    status: JobStatus
    baseline: str
    arms: list[str]
    seeds: list[int]
    jobs: int
    created_at: datetime


class ComparisonList(_Response):
    """One page of comparisons, newest first; pass `next_cursor` as `cursor` for the next."""

    items: list[ComparisonInfo]
    next_cursor: str | None = None
