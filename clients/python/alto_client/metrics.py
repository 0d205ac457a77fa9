"""Metric points: what the engine reports and the service stores and plots.

The names are constants so that the engine (which writes them), the service
(which stores and compares them) and the client (which plots them) cannot
drift apart.  A point is identified by (job, step, name): the service treats
a repeated point as the same point, which makes the engine's retries safe.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ALL_METRICS",
    "MEM_PEAK_ALLOCATED_BYTES",
    "MEM_PEAK_RESERVED_BYTES",
    "MEM_PEAK_RSS_BYTES",
    "MODEL_PARAMS",
    "OPTIM_STATE_BYTES",
    "OPTIM_STEP_TIME_S",
    "TRAIN_AUX_LOSS",
    "TRAIN_GRAD_NORM",
    "TRAIN_LOSS",
    "TRAIN_LR",
    "TRAIN_STEP_TIME_S",
    "TRAIN_TOKENS_PER_S",
    "VAL_LOSS",
    "VAL_LOSS_SEM",
    "VAL_PPL",
    "MetricBatch",
    "MetricPoint",
]

TRAIN_LOSS = "train/loss"
"""Language-model cross-entropy (nats per token), averaged over the global batch."""
TRAIN_AUX_LOSS = "train/aux_loss"
"""MoE load-balancing loss (without its coefficient), averaged over MoE layers and micro batches."""
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
"""Global gradient norm before clipping."""
TRAIN_TOKENS_PER_S = "train/tokens_per_s"
TRAIN_STEP_TIME_S = "train/step_time_s"
VAL_LOSS = "val/loss"
VAL_PPL = "val/ppl"
VAL_LOSS_SEM = "val/loss_sem"
"""Standard error of one evaluation's loss, from the spread of its disjoint validation
batches: how much of a difference in val/loss the evaluation itself can explain."""
MEM_PEAK_ALLOCATED_BYTES = "mem/peak_allocated_bytes"
"""Peak GPU memory allocated by tensors (GPU jobs only)."""
MEM_PEAK_RESERVED_BYTES = "mem/peak_reserved_bytes"
"""Peak GPU memory reserved by the caching allocator (GPU jobs only)."""
MEM_PEAK_RSS_BYTES = "mem/peak_rss_bytes"
"""Peak resident set size of the rank-0 worker process (CPU jobs)."""
OPTIM_STATE_BYTES = "optim/state_bytes"
"""Bytes of optimizer state on rank 0 (its shard under the distributed optimizer)."""
MODEL_PARAMS = "model/params"
"""Total parameter count of the model (all ranks, experts included)."""
OPTIM_STEP_TIME_S = "optim/step_time_s"
"""Seconds of the step spent in the optimizer (the rest is forward/backward/communication)."""

ALL_METRICS = (
    TRAIN_LOSS,
    TRAIN_AUX_LOSS,
    TRAIN_LR,
    TRAIN_GRAD_NORM,
    TRAIN_TOKENS_PER_S,
    TRAIN_STEP_TIME_S,
    VAL_LOSS,
    VAL_PPL,
    VAL_LOSS_SEM,
    MEM_PEAK_ALLOCATED_BYTES,
    MEM_PEAK_RESERVED_BYTES,
    MEM_PEAK_RSS_BYTES,
    OPTIM_STATE_BYTES,
    MODEL_PARAMS,
    OPTIM_STEP_TIME_S,
)


class MetricPoint(BaseModel):
    """One value of one metric at one optimizer step (1-based); time is unix seconds.

    Non-finite values (a diverged loss) are kept: they serialise as the JSON
    extensions NaN/Infinity, which pydantic and Python's json read back.
    """

    model_config = ConfigDict(strict=True, extra="forbid", ser_json_inf_nan="constants")

    step: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=200)
    value: float
    time: float


class MetricBatch(BaseModel):
    """The body of ``POST /v1/jobs/{id}/metrics``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    points: list[MetricPoint]
