"""The job spec: the one schema that service, engine and client share.

A spec is data, not code: it is validated here, once, without touching the
filesystem, so that the service can reject a bad job before it queues it and
the engine can reject it before any worker starts.  Every problem is reported
with its field path (``training.micro_batch_size``), so a user fixes them all
in one go instead of one per submission.

Checks that need the machine that runs the job (does the data path exist?)
belong to the engine's pre-flight check, not here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from alto_client.errors import FieldError

__all__ = [
    "AdamWSpec",
    "AltoSpec",
    "DataSpec",
    "ESpec",
    "JobSpec",
    "ModelSpec",
    "OptimizerSpec",
    "ParallelSpec",
    "ReportSpec",
    "ResourcesSpec",
    "SpecError",
    "SpecProblem",
    "TokenizerSpec",
    "TrainingSpec",
    "alto_paper_defaults",
    "parse_override",
    "parse_overrides",
    "problems_from_validation_error",
]

BYTE_VOCAB_SIZE = 257
"""256 byte values plus one end-of-document token."""

LARGE_BATCH_THRESHOLD = 1024
"""The paper switches ALTO's alpha/beta1 defaults at a global batch of 1K sequences."""


class _Strict(BaseModel):
    """Strict parsing and no unknown keys: a typo in a spec must fail, not be ignored."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- sections


class TokenizerSpec(_Strict):
    """How text becomes token ids.

    ``byte``: one token per UTF-8 byte plus end-of-document (vocabulary 257).
    ``bpe``: a byte-level BPE trained locally with ``tokenizers`` on the
    job's training split and cached by content hash (no downloads).
    ``external``: the data is an indexed dataset tokenized elsewhere (e.g. by
    Megatron-LM's preprocessing); only its vocabulary size is known.
    """

    kind: Literal["byte", "bpe", "external"] = "byte"
    vocab_size: int | None = Field(default=None, ge=2)
    eod_id: int | None = Field(
        default=None, ge=0, description="end-of-document id (external only; default vocab_size-1)"
    )


class DataSpec(_Strict):
    """Where the tokens come from.

    ``python-stdlib``: the Python standard library's own ``.py`` files on the
    machine running the job, split into train/validation by file.
    ``indexed``: the path prefix of an existing Megatron indexed dataset
    (``PREFIX.bin`` + ``PREFIX.idx``).
    ``files``: text (``.txt``, one document per file) or JSONL (one document
    per line, text under ``jsonl_key``) files, split by file.
    """

    source: Literal["python-stdlib", "indexed", "files"] = "python-stdlib"
    path: str | None = None
    files: list[str] = Field(default_factory=list)
    jsonl_key: str = Field(default="text", min_length=1)
    validation_fraction: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_bytes: int | None = Field(
        default=None, ge=1, description="cap on corpus bytes read (python-stdlib/files)"
    )
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)

    @model_validator(mode="before")
    @classmethod
    def _no_cache_dir(cls, data: Any) -> Any:
        # the cache is the machine's (ALTO_CACHE_DIR), not the spec's: megatron loads
        # the index files cached there with pickle allowed
        if isinstance(data, dict) and "cache_dir" in data:
            raise PydanticCustomError(
                "spec_invalid",
                "{message}",
                {
                    "message": "data.cache_dir is not a spec field: the cache location is "
                    "a setting of the machine that runs the job (ALTO_CACHE_DIR)"
                },
            )
        return data


class ModelSpec(_Strict):
    """A megatron-core GPT; ``num_experts: 0`` is a dense model, otherwise MoE."""

    num_layers: int = Field(default=2, ge=1)
    hidden_size: int = Field(default=128, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    ffn_hidden_size: int | None = Field(default=None, ge=1, description="default 4*hidden_size")
    seq_length: int = Field(default=128, ge=2)
    num_experts: int = Field(default=0, ge=0)
    moe_router_topk: int = Field(default=2, ge=1)
    moe_ffn_hidden_size: int | None = Field(
        default=None, ge=1, description="per-expert FFN size; default ffn_hidden_size"
    )
    moe_aux_loss_coeff: float = Field(default=1e-2, ge=0.0)
    moe_token_dispatcher: Literal["allgather", "alltoall"] = "alltoall"

    @property
    def ffn_size(self) -> int:
        """The FFN size with its default filled in."""
        return self.ffn_hidden_size if self.ffn_hidden_size is not None else 4 * self.hidden_size

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


class ParallelSpec(_Strict):
    """Model-parallel sizes; data parallelism is what the workers leave over."""

    tensor: int = Field(default=1, ge=1)
    expert: int = Field(default=1, ge=1)
    pipeline: int = Field(default=1, ge=1)
    sequence_parallel: bool | None = Field(default=None, description="default: on when tensor > 1")


class ResourcesSpec(_Strict):
    """How many Ray Train workers, on what, and how many restarts a failure may cost."""

    workers: int = Field(default=1, ge=1, le=4096)
    device: Literal["cpu", "gpu"] = "cpu"
    cpus_per_worker: float = Field(
        default=1.0,
        ge=0.25,
        le=1024,
        description="CPUs each worker reserves: at least a quarter, or a cluster's CPUs "
        "split into slivers admit more workers than it can run",
    )
    max_failures: int = Field(
        default=1, ge=0, description="worker-group restarts Ray Train may do before giving up"
    )


class TrainingSpec(_Strict):
    """Batch, schedule and bookkeeping.  Batches count sequences, not tokens."""

    steps: int = Field(default=100, ge=1)
    global_batch_size: int = Field(default=8, ge=1)
    micro_batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    min_lr: float = Field(default=0.0, ge=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    lr_decay_steps: int | None = Field(default=None, ge=1, description="default: steps")
    grad_clip: float = Field(default=1.0, ge=0.0, description="global-norm clip; 0 = off")
    seed: int = Field(default=1234, ge=0)
    eval_interval: int = Field(default=0, ge=0, description="0 = only at the end")
    eval_batches: int = Field(default=2, ge=0)
    checkpoint_interval: int = Field(default=0, ge=0, description="0 = no checkpoints")
    precision: Literal["fp32", "bf16"] = "fp32"


# --------------------------------------------------------------------------- optimizers


def alto_paper_defaults(global_batch_size: int) -> tuple[float, float]:
    """ALTO's (alpha, beta1) from the paper: small batches look back, large ones ahead."""
    if global_batch_size < LARGE_BATCH_THRESHOLD:
        return 0.5, 0.01
    return -5.0, 0.99


class AltoSpec(_Strict):
    """ALTO; ``alpha``/``beta1`` left out take the paper's defaults for the global batch."""

    name: Literal["alto"] = "alto"
    lr: float | None = Field(
        default=None, gt=0.0, description="this optimizer's peak LR; default training.lr"
    )
    alpha: float | None = None
    beta1: float | None = Field(default=None, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta3: float = Field(default=0.99, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-6, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)


class AdamWSpec(_Strict):
    """The baseline: torch/megatron AdamW."""

    name: Literal["adamw"] = "adamw"
    lr: float | None = Field(
        default=None, gt=0.0, description="this optimizer's peak LR; default training.lr"
    )
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)


SHARDED_E_BASES = ("adam", "adamw")
SHARDED_E_HYPERPARAMETERS = ("betas", "eps", "weight_decay")


# The keyword arguments a spec may give each torch base optimizer of E, by kind: "betas"
# ([b1, b2] in [0, 1)), "positive" (> 0), "nonneg" (>= 0), "unit" ([0, 1)), "flag"
# (true/false). Implementation switches (foreach, fused, capturable, differentiable) are
# the engine's to choose; lr and params come from the job.
E_BASE_HYPERPARAMETERS: dict[str, dict[str, str]] = {
    "adam": {
        "betas": "betas",
        "eps": "positive",
        "weight_decay": "nonneg",
        "amsgrad": "flag",
        "maximize": "flag",
        "decoupled_weight_decay": "flag",
    },
    "adamw": {
        "betas": "betas",
        "eps": "positive",
        "weight_decay": "nonneg",
        "amsgrad": "flag",
        "maximize": "flag",
    },
    "sgd": {
        "momentum": "nonneg",
        "dampening": "nonneg",
        "weight_decay": "nonneg",
        "nesterov": "flag",
        "maximize": "flag",
    },
    "rmsprop": {
        "alpha": "unit",
        "eps": "positive",
        "weight_decay": "nonneg",
        "momentum": "nonneg",
        "centered": "flag",
        "maximize": "flag",
    },
    "adagrad": {
        "lr_decay": "nonneg",
        "weight_decay": "nonneg",
        "initial_accumulator_value": "nonneg",
        "eps": "positive",
        "maximize": "flag",
    },
    "nadam": {
        "betas": "betas",
        "eps": "positive",
        "weight_decay": "nonneg",
        "momentum_decay": "nonneg",
        "decoupled_weight_decay": "flag",
        "maximize": "flag",
    },
    "radam": {
        "betas": "betas",
        "eps": "positive",
        "weight_decay": "nonneg",
        "decoupled_weight_decay": "flag",
        "maximize": "flag",
    },
}

_KIND_RULES = {
    "betas": "[beta1, beta2], each in [0, 1)",
    "positive": "a finite number > 0",
    "nonneg": "a finite number >= 0",
    "unit": "a number in [0, 1)",
    "flag": "true or false",
}


def _fits_kind(kind: str, value: Any) -> bool:
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "betas":
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(_fits_kind("unit", b) for b in value)
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value):
        return False
    if kind == "positive":
        return value > 0
    if kind == "unit":
        return 0 <= value < 1
    return value >= 0


def base_hyperparameter_problems(base: str, hyper: dict[str, Any]) -> list[str]:
    """What is wrong with E's `base_hyperparameters` for torch's `base` optimizer, found at
    submission rather than when the job builds the optimizer on the cluster."""
    allowed = E_BASE_HYPERPARAMETERS[base]
    out = []
    for name, value in hyper.items():
        if name in ("lr", "params"):
            continue  # refused with its own message
        kind = allowed.get(name)
        if kind is None:
            out.append(
                f"base_hyperparameters.{name}: torch's {base} has no such setting here; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        elif not _fits_kind(kind, value):
            out.append(f"base_hyperparameters.{name} must be {_KIND_RULES[kind]}, got {value!r}")
    nesterov = base == "sgd" and hyper.get("nesterov") is True
    if nesterov and (not hyper.get("momentum") or hyper.get("dampening", 0) != 0):
        out.append(
            "base_hyperparameters.nesterov needs momentum > 0 and dampening 0 "
            f"(got momentum={hyper.get('momentum', 0)!r}, "
            f"dampening={hyper.get('dampening', 0)!r})"
        )
    return out


class ESpec(_Strict):
    """E: ALTO's gradient acceleration wrapped around a named torch base optimizer."""

    name: Literal["e"] = "e"
    lr: float | None = Field(
        default=None, gt=0.0, description="this optimizer's peak LR; default training.lr"
    )
    base: Literal["adam", "adamw", "sgd", "rmsprop", "adagrad", "nadam", "radam"] = "adamw"
    base_hyperparameters: dict[str, float | int | bool | list[float]] = Field(
        default_factory=dict,
        description="keyword arguments of the base optimizer, e.g. {momentum: 0.9}",
    )
    alpha: float | None = None
    beta1: float | None = Field(default=None, ge=0.0, lt=1.0)

    @property
    def sharded(self) -> bool:
        """Whether the engine runs this E inside megatron's DistributedOptimizer (sharded
        state, bf16): for an Adam/AdamW base configured only by betas, eps and
        weight_decay. Other bases run unsharded, in fp32."""
        return self.base in SHARDED_E_BASES and set(self.base_hyperparameters) <= set(
            SHARDED_E_HYPERPARAMETERS
        )

    @property
    def weight_decay(self) -> float:
        """The base's weight decay: given, else torch's default (AdamW 0.01, others 0);
        the LR/WD schedule applies it (times each group's no-decay multiplier)."""
        given = self.base_hyperparameters.get("weight_decay")
        if isinstance(given, int | float) and not isinstance(given, bool):
            return float(given)
        return 0.01 if self.base == "adamw" else 0.0

    @model_validator(mode="after")
    def _base_hyperparameters(self) -> ESpec:
        problems = base_hyperparameter_problems(self.base, self.base_hyperparameters)
        if problems:
            raise PydanticCustomError("spec_invalid", "{message}", {"message": problems[0]})
        return self

    @field_validator("base_hyperparameters")
    @classmethod
    def _no_lr(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "lr" in value or "params" in value:
            raise PydanticCustomError(
                "spec_invalid",
                "{message}",
                {
                    "message": "must not set 'lr' or 'params': the learning rate comes "
                    "from training.lr and its schedule"
                },
            )
        return value


OptimizerSpec = Annotated[AltoSpec | AdamWSpec | ESpec, Field(discriminator="name")]


# --------------------------------------------------------------------------- report


class ReportSpec(_Strict):
    """Where the engine posts metrics; the service fills this in before launching."""

    url: str = Field(min_length=1)
    job_id: str = Field(min_length=1)
    token: str = Field(min_length=1, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise PydanticCustomError(
                "spec_invalid",
                "{message}",
                {"message": f"must be an http(s) URL like http://127.0.0.1:8000, got {value!r}"},
            )
        return value.rstrip("/")


# --------------------------------------------------------------------------- problems


SpecProblem = FieldError
"""One thing wrong with a spec: the project's one definition of a bad field
(``SpecProblem(field, message)``; ``.field`` and ``.message`` read it back)."""


def problems_from_validation_error(exc: ValidationError) -> list[SpecProblem]:
    """Flatten pydantic's errors into (dotted field, message) pairs for users and REST."""
    problems = []
    for err in exc.errors(include_url=False):
        # drop discriminator tags ("alto") that pydantic puts into union locations
        loc = [str(part) for part in err["loc"] if part not in ("alto", "adamw", "e")]
        msg = err["msg"]
        if err["type"] not in ("spec_invalid",) and "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {err['input']!r})"
        problems.append(SpecProblem(field=".".join(loc), message=msg))
    return problems


class SpecError(ValueError):
    """A spec that cannot be read or is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[SpecProblem], source: str = "job spec") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


# --------------------------------------------------------------------------- the spec


def _problem(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("spec_invalid", "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


class JobSpec(_Strict):
    """A training job: model, data, parallel layout, resources, schedule, optimizer."""

    name: str = Field(default="job", min_length=1, max_length=200)
    tags: list[str] = Field(default_factory=list)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    optimizer: OptimizerSpec = Field(default_factory=AltoSpec)
    report: ReportSpec | None = None

    # ---- derived quantities the engine and service both need

    @property
    def data_parallel_size(self) -> int:
        """Workers left over after tensor and pipeline parallelism."""
        return self.resources.workers // (self.parallel.tensor * self.parallel.pipeline)

    @property
    def grad_accumulation_steps(self) -> int:
        """Micro batches each data-parallel rank runs per optimizer step."""
        return self.training.global_batch_size // (
            self.training.micro_batch_size * self.data_parallel_size
        )

    @property
    def sequence_parallel(self) -> bool:
        """Sequence parallelism is on by default with TP (MoE with TP > 1 requires it)."""
        if self.parallel.sequence_parallel is not None:
            return self.parallel.sequence_parallel
        return self.parallel.tensor > 1

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary (megatron pads it further for TP)."""
        tok = self.data.tokenizer
        if tok.kind == "byte":
            return BYTE_VOCAB_SIZE
        assert tok.vocab_size is not None  # guaranteed by validation
        return tok.vocab_size

    @property
    def peak_lr(self) -> float:
        """The optimizer's own ``lr`` if given (trust-ratio optimizers such as ALTO take
        larger ones than AdamW), else ``training.lr``."""
        return self.optimizer.lr if self.optimizer.lr is not None else self.training.lr

    @property
    def final_lr(self) -> float:
        """``training.min_lr`` scaled like the peak, so the schedule keeps its shape."""
        return self.training.min_lr * self.peak_lr / self.training.lr

    @property
    def tokens_per_step(self) -> int:
        return self.training.global_batch_size * self.model.seq_length

    # ---- cross-field validation

    @model_validator(mode="wrap")
    @classmethod
    def _cross_field(cls, data: Any, handler: Any) -> JobSpec:
        spec: JobSpec = handler(data)
        problems = spec._cross_field_problems()
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        spec._fill_optimizer_defaults()
        return spec

    def _fill_optimizer_defaults(self) -> None:
        opt = self.optimizer
        if isinstance(opt, AltoSpec | ESpec) and (opt.alpha is None or opt.beta1 is None):
            alpha, beta1 = alto_paper_defaults(self.training.global_batch_size)
            update = {}
            if opt.alpha is None:
                update["alpha"] = alpha
            if opt.beta1 is None:
                update["beta1"] = beta1
            object.__setattr__(self, "optimizer", opt.model_copy(update=update))

    def _cross_field_problems(self) -> list[InitErrorDetails]:
        out: list[InitErrorDetails] = []
        m, p, r, t, d = self.model, self.parallel, self.resources, self.training, self.data
        tp, ep, pp = p.tensor, p.expert, p.pipeline

        # model shape
        if m.hidden_size % m.num_attention_heads:
            out.append(
                _problem(
                    ("model", "hidden_size"),
                    f"hidden_size {m.hidden_size} must be divisible by "
                    f"num_attention_heads {m.num_attention_heads}",
                    m.hidden_size,
                )
            )
        if m.is_moe and m.moe_router_topk > m.num_experts:
            out.append(
                _problem(
                    ("model", "moe_router_topk"),
                    f"moe_router_topk {m.moe_router_topk} must be at most "
                    f"num_experts {m.num_experts}",
                    m.moe_router_topk,
                )
            )

        # parallel layout
        if pp != 1:
            out.append(
                _problem(
                    ("parallel", "pipeline"),
                    f"pipeline parallelism is not supported by this engine: pipeline must be 1, got {pp}",
                    pp,
                )
            )
        if m.num_attention_heads % tp:
            out.append(
                _problem(
                    ("model", "num_attention_heads"),
                    f"num_attention_heads {m.num_attention_heads} must be divisible by "
                    f"parallel.tensor {tp}",
                    m.num_attention_heads,
                )
            )
        if m.ffn_size % tp:
            out.append(
                _problem(
                    ("model", "ffn_hidden_size"),
                    f"ffn_hidden_size {m.ffn_size} must be divisible by parallel.tensor {tp}",
                    m.ffn_size,
                )
            )
        if m.is_moe and m.moe_ffn_hidden_size is not None and m.moe_ffn_hidden_size % tp:
            out.append(
                _problem(
                    ("model", "moe_ffn_hidden_size"),
                    f"moe_ffn_hidden_size {m.moe_ffn_hidden_size} must be divisible by "
                    f"parallel.tensor {tp}",
                    m.moe_ffn_hidden_size,
                )
            )
        if ep > 1 and not m.is_moe:
            out.append(
                _problem(
                    ("parallel", "expert"),
                    f"expert parallelism {ep} needs an MoE model, but model.num_experts is 0",
                    ep,
                )
            )
        elif m.is_moe and m.num_experts % ep:
            out.append(
                _problem(
                    ("model", "num_experts"),
                    f"num_experts {m.num_experts} must be divisible by parallel.expert {ep}",
                    m.num_experts,
                )
            )
        if r.workers % (tp * ep * pp):
            out.append(
                _problem(
                    ("resources", "workers"),
                    f"workers {r.workers} must be a multiple of tensor*expert*pipeline = "
                    f"{tp}*{ep}*{pp} = {tp * ep * pp}",
                    r.workers,
                )
            )
        if tp > 1 and m.is_moe and p.sequence_parallel is False:
            out.append(
                _problem(
                    ("parallel", "sequence_parallel"),
                    "an MoE model with parallel.tensor > 1 needs sequence_parallel (true or unset)",
                    False,
                )
            )
        if tp > 1 and self.sequence_parallel and m.seq_length % tp:
            out.append(
                _problem(
                    ("model", "seq_length"),
                    f"seq_length {m.seq_length} must be divisible by parallel.tensor {tp} "
                    "with sequence parallelism",
                    m.seq_length,
                )
            )

        # batch
        dp = max(1, r.workers // (tp * pp)) if r.workers % (tp * pp) == 0 else None
        if t.global_batch_size % t.micro_batch_size:
            out.append(
                _problem(
                    ("training", "micro_batch_size"),
                    f"micro_batch_size {t.micro_batch_size} must divide "
                    f"global_batch_size {t.global_batch_size}",
                    t.micro_batch_size,
                )
            )
        elif dp is not None and t.global_batch_size % (t.micro_batch_size * dp):
            out.append(
                _problem(
                    ("training", "global_batch_size"),
                    f"global_batch_size {t.global_batch_size} must be a multiple of "
                    f"micro_batch_size*data_parallel = {t.micro_batch_size}*{dp} = "
                    f"{t.micro_batch_size * dp} (data_parallel = workers/(tensor*pipeline))",
                    t.global_batch_size,
                )
            )

        # schedule
        if t.min_lr > t.lr:
            out.append(
                _problem(
                    ("training", "min_lr"),
                    f"min_lr {t.min_lr} must not exceed lr {t.lr}",
                    t.min_lr,
                )
            )
        decay = t.lr_decay_steps if t.lr_decay_steps is not None else t.steps
        if t.warmup_steps >= decay and t.lr_decay_style != "constant":
            out.append(
                _problem(
                    ("training", "warmup_steps"),
                    f"warmup_steps {t.warmup_steps} must be smaller than the decay length "
                    f"{decay} (training.lr_decay_steps, default training.steps)",
                    t.warmup_steps,
                )
            )
        if t.eval_interval > 0 and t.eval_batches == 0:
            out.append(
                _problem(
                    ("training", "eval_batches"),
                    "eval_batches must be at least 1 when eval_interval > 0",
                    t.eval_batches,
                )
            )
        if (
            t.precision == "bf16"
            and isinstance(self.optimizer, ESpec)
            and not self.optimizer.sharded
        ):
            out.append(
                _problem(
                    ("training", "precision"),
                    f"optimizer 'e' with base {self.optimizer.base!r} and base_hyperparameters "
                    f"{sorted(self.optimizer.base_hyperparameters)} runs in fp32 only; use "
                    "precision fp32, or base 'adam'/'adamw' configured only by "
                    f"{', '.join(SHARDED_E_HYPERPARAMETERS)} (which runs sharded, in bf16 too)",
                    t.precision,
                )
            )

        # data
        out.extend(self._data_problems(d))

        # optimizer
        opt = self.optimizer
        if isinstance(opt, AltoSpec | ESpec):
            alpha_d, beta1_d = alto_paper_defaults(t.global_batch_size)
            alpha = opt.alpha if opt.alpha is not None else alpha_d
            beta1 = opt.beta1 if opt.beta1 is not None else beta1_d
            bound = 1.0 / (1.0 - beta1)
            if not abs(alpha) < bound:
                out.append(
                    _problem(
                        ("optimizer", "alpha"),
                        f"|alpha| must be < 1/(1-beta1) = {bound:g} for beta1 {beta1:g}, "
                        f"got alpha {alpha:g}",
                        alpha,
                    )
                )
            if not math.isfinite(alpha):
                out.append(_problem(("optimizer", "alpha"), "alpha must be finite", alpha))
        return out

    @staticmethod
    def _data_problems(d: DataSpec) -> list[InitErrorDetails]:
        out: list[InitErrorDetails] = []
        tok = d.tokenizer
        if d.source == "indexed":
            if tok.kind == "bpe":
                out.append(
                    _problem(
                        ("data", "tokenizer", "kind"),
                        "source 'indexed' is pre-tokenized: use tokenizer 'external' (with "
                        "its vocab_size) or 'byte' for byte-level data, not 'bpe'",
                        tok.kind,
                    )
                )
            if not d.path:
                out.append(
                    _problem(
                        ("data", "path"),
                        "source 'indexed' needs path: the prefix of PREFIX.bin/PREFIX.idx",
                        d.path,
                    )
                )
            if d.files:
                out.append(_problem(("data", "files"), "files is only for source 'files'", d.files))
        elif d.source == "files":
            if not d.files:
                out.append(
                    _problem(
                        ("data", "files"),
                        "source 'files' needs at least one .txt or .jsonl file",
                        d.files,
                    )
                )
            for i, f in enumerate(d.files):
                if not f.endswith((".txt", ".jsonl", ".json")):
                    out.append(
                        _problem(
                            ("data", "files", i),
                            f"{f!r}: only .txt and .jsonl files are supported",
                            f,
                        )
                    )
            if d.path:
                out.append(_problem(("data", "path"), "path is only for source 'indexed'", d.path))
        else:
            if d.path:
                out.append(_problem(("data", "path"), "path is only for source 'indexed'", d.path))
            if d.files:
                out.append(_problem(("data", "files"), "files is only for source 'files'", d.files))

        if tok.kind == "byte" and tok.vocab_size not in (None, BYTE_VOCAB_SIZE):
            out.append(
                _problem(
                    ("data", "tokenizer", "vocab_size"),
                    f"the byte tokenizer's vocabulary is fixed at {BYTE_VOCAB_SIZE}; "
                    "leave vocab_size out",
                    tok.vocab_size,
                )
            )
        if tok.kind == "bpe" and (tok.vocab_size is None or tok.vocab_size < BYTE_VOCAB_SIZE + 1):
            out.append(
                _problem(
                    ("data", "tokenizer", "vocab_size"),
                    f"the bpe tokenizer needs vocab_size > {BYTE_VOCAB_SIZE} "
                    "(its 256 byte symbols, end-of-document and the merges)",
                    tok.vocab_size,
                )
            )
        if tok.kind == "external":
            if d.source != "indexed":
                out.append(
                    _problem(
                        ("data", "tokenizer", "kind"),
                        "tokenizer 'external' is only for source 'indexed' (pre-tokenized data)",
                        tok.kind,
                    )
                )
            if tok.vocab_size is None:
                out.append(
                    _problem(
                        ("data", "tokenizer", "vocab_size"),
                        "tokenizer 'external' needs vocab_size (the vocabulary the data was "
                        "tokenized with)",
                        None,
                    )
                )
            elif tok.eod_id is not None and tok.eod_id >= tok.vocab_size:
                out.append(
                    _problem(
                        ("data", "tokenizer", "eod_id"),
                        f"eod_id {tok.eod_id} must be below vocab_size {tok.vocab_size}",
                        tok.eod_id,
                    )
                )
        elif tok.eod_id is not None:
            out.append(
                _problem(
                    ("data", "tokenizer", "eod_id"),
                    f"eod_id is only for tokenizer 'external'; {tok.kind!r} fixes its own",
                    tok.eod_id,
                )
            )
        return out

    # ---- loading

    @classmethod
    def from_dict(cls, data: Any, source: str = "job spec") -> JobSpec:
        """Validate a parsed mapping; raise SpecError listing every problem."""
        if not isinstance(data, dict):
            raise SpecError(
                [SpecProblem("", f"must be a mapping of sections, got {type(data).__name__}")],
                source,
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(problems_from_validation_error(exc), source) from None

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> JobSpec:
        """Load from JSON text or a .json file."""
        text, source = _read_text(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                [
                    SpecProblem(
                        "", f"not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
                    )
                ],
                source,
            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> JobSpec:
        """Load from YAML text or a .yaml/.yml file (needs PyYAML: the ``cli`` extra)."""
        text, source = _read_text(text_or_path)
        try:
            import yaml
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise SpecError(
                [SpecProblem("", "reading YAML needs PyYAML: pip install 'alto-client[cli]'")],
                source,
            ) from None
        try:
            data = yaml.load(text, Loader=_SpecLoader)
        except yaml.YAMLError as exc:
            raise SpecError([SpecProblem("", f"not valid YAML: {exc}")], source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        """Load a spec file, choosing JSON or YAML by its extension."""
        if str(path).endswith(".json"):
            return cls.from_json(Path(path))
        return cls.from_yaml(Path(path))

    def with_overrides(self, overrides: dict[str, Any]) -> JobSpec:
        """A copy with dotted-path fields replaced (``{"training.steps": 20}``), re-validated.

        The one override rule of the CLI (``alto submit --set``), the engine
        (``python -m engine.run --set``), the demo and the benchmarks:

        - a section given whole (``{"optimizer": {...}}``) replaces that section;
        - ``optimizer.name`` naming another optimizer switches to it: the section's other
          fields go back to the new optimizer's defaults (AdamW has no ``alpha``), then the
          call's other ``optimizer.*`` overrides apply, whatever their order;
        - a new ``training.steps`` clamps ``warmup_steps`` and ``lr_decay_steps`` to it
          unless those are overridden too;
        - an unknown section or field is a SpecError naming it.
        """
        data = self.model_dump(mode="python")
        items = list(overrides.items())
        new_name = overrides.get("optimizer.name")
        if new_name is not None and new_name != data["optimizer"]["name"]:
            data["optimizer"] = {"name": new_name}
            items = [(k, v) for k, v in items if k != "optimizer.name"]
        for dotted, value in items:
            node = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise SpecError([SpecProblem(dotted, "no such section in the job spec")])
                node = node[part]
            if leaf not in node and not (node is data["optimizer"] and parents == ["optimizer"]):
                raise SpecError([SpecProblem(dotted, "no such field in the job spec")])
            node[leaf] = value
        if "training.steps" in overrides and "training.warmup_steps" not in overrides:
            t = data["training"]
            t["warmup_steps"] = min(t["warmup_steps"], max(0, t["steps"] - 1))
            if t.get("lr_decay_steps") is not None and "training.lr_decay_steps" not in overrides:
                t["lr_decay_steps"] = min(t["lr_decay_steps"], t["steps"])
        return type(self).from_dict(data, "job spec with overrides")


def parse_override(item: str) -> tuple[str, Any]:
    """``FIELD=VALUE`` from a command line (``--set training.steps=20``): the value is
    read as a YAML scalar or flow collection (numbers, booleans, lists, ``{...}``), a
    plain string otherwise. Shared by every command line that takes ``--set``."""
    field, eq, raw = item.partition("=")
    if not eq or not field.strip():
        raise SpecError([SpecProblem(item, "expected FIELD=VALUE like training.steps=20")], "--set")
    raw = raw.strip()
    if not raw:
        return field.strip(), ""
    try:
        import yaml
    except ImportError:  # the light client without its cli extra: JSON values only
        try:
            return field.strip(), json.loads(raw)
        except json.JSONDecodeError:
            return field.strip(), raw
    try:
        return field.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        return field.strip(), raw


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Every ``--set`` of a command line, in order (a later one wins)."""
    return dict(parse_override(item) for item in items or [])


def _read_text(text_or_path: str | Path) -> tuple[str, str]:
    """A Path, or a one-line string naming a spec file, is read; anything else is the text."""
    if isinstance(text_or_path, Path):
        path = text_or_path
    elif (
        "\n" not in text_or_path
        and text_or_path.endswith((".yaml", ".yml", ".json"))
        and not any(mark in text_or_path for mark in (": ", "{"))  # one-line YAML/JSON text
    ):
        path = Path(text_or_path)
    else:
        return text_or_path, "job spec"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise SpecError(
            [SpecProblem("", f"cannot read spec file {str(path)!r}: {exc.strerror}")], str(path)
        ) from None


def _make_loader() -> type:
    """A SafeLoader that also reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover

        class _NoYaml:
            pass

        return _NoYaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


_SpecLoader = _make_loader()
