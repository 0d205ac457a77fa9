"""The optimizer section: ALTO, AdamW, and E around a torch base optimizer, with the
paper's defaults and the settings each base accepts.

The light client cannot import `alto` (torch), so the numbers here are a copy of
`alto/defaults.py`, the one module that owns every default and bound;
`tests/alto/test_hyperparams.py` pins this copy to it."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alto_client.spec.base import LARGE_BATCH_THRESHOLD, StrictModel


def alto_paper_defaults(global_batch_size: int) -> tuple[float, float]:
    """ALTO's (alpha, beta1) from the paper: small batches look back, large ones ahead."""
    if global_batch_size < LARGE_BATCH_THRESHOLD:
        return 0.5, 0.01
    return -5.0, 0.99


class AltoSpec(StrictModel):
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


class AdamWSpec(StrictModel):
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


class ESpec(StrictModel):
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
