"""Every ALTO / Lamb / E hyperparameter: its default, its bound and its names.

This module is the single source of truth for the numbers; the optimizers
(``alto.optim``), the Megatron config (``alto.megatron.config``) and the job
spec (``alto_client.spec``) read them from here, or, for the client, are
pinned to them by ``tests/alto/test_hyperparams.py``.

It imports nothing but the standard library (no torch), so that any light
package can read it, or vendor it verbatim, without pulling in torch.

One hyperparameter has several spellings, one per place that takes it:
``HYPERPARAMETERS[key].names`` lists them, e.g. the gradient-difference EMA
factor b1 is ``betas[0]`` in ``ALTO(...)``, ``beta`` in ``E(...)``,
``alto_beta1`` / ``e_beta`` in the Megatron config and ``beta1`` in a job spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Below this global batch size the paper uses its small-batch setting.
LARGE_BATCH = 1024


@dataclass(frozen=True)
class Bound:
    """An allowed range ``low <= x (<) high``; ``None`` means unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        """True when ``x`` is finite and inside the range."""
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def describe(self) -> str:
        """The rule as error messages state it: ">= 0", "> 0", "in [0, 1)"."""
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"


NON_NEGATIVE = Bound(low=0.0)
POSITIVE = Bound(low=0.0, low_open=True)
EMA = Bound(low=0.0, high=1.0, high_open=True)  # an EMA factor: [0, 1)
FINITE = Bound()


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its meaning, its bound and its name in each place."""

    key: str
    meaning: str
    bound: Bound
    #: place -> the name the hyperparameter has there ("alto", "lamb", "e",
    #: "megatron", "megatron_e", "spec", "paper").
    names: dict[str, str] = field(default_factory=dict)


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    h.key: h
    for h in (
        Hyperparameter(
            "lr",
            "learning rate",
            NON_NEGATIVE,
            {"alto": "lr", "lamb": "lr", "megatron": "lr", "spec": "lr", "paper": "lr"},
        ),
        Hyperparameter(
            "b1",
            "EMA factor of the gradient difference a_k",
            EMA,
            {
                "alto": "betas[0]",
                "e": "beta",
                "megatron": "alto_beta1",
                "megatron_e": "e_beta",
                "spec": "beta1",
                "paper": "b1",
            },
        ),
        Hyperparameter(
            "b2",
            "first-moment EMA factor",
            EMA,
            {"alto": "betas[1]", "lamb": "betas[0]", "megatron": "alto_beta2", "spec": "beta2"},
        ),
        Hyperparameter(
            "b3",
            "second-moment EMA factor",
            EMA,
            {"alto": "betas[2]", "lamb": "betas[1]", "megatron": "alto_beta3", "spec": "beta3"},
        ),
        Hyperparameter(
            "alpha",
            "acceleration factor; |alpha| < 1/(1-b1)",
            FINITE,
            {
                "alto": "alpha",
                "e": "alpha",
                "megatron": "alto_alpha",
                "megatron_e": "e_alpha",
                "spec": "alpha",
                "paper": "alpha",
            },
        ),
        Hyperparameter(
            "eps",
            "added to sqrt(v_hat)",
            POSITIVE,
            {"alto": "eps", "lamb": "eps", "megatron": "alto_eps", "spec": "eps"},
        ),
        Hyperparameter(
            "weight_decay",
            "decoupled weight decay, inside the trust-ratio update r",
            NON_NEGATIVE,
            {
                "alto": "weight_decay",
                "lamb": "weight_decay",
                "megatron": "weight_decay",
                "spec": "weight_decay",
            },
        ),
        Hyperparameter(
            "max_grad_norm",
            "global gradient-norm clipping threshold (None: off)",
            POSITIVE,
            {"alto": "max_grad_norm", "lamb": "max_grad_norm"},
        ),
        Hyperparameter(
            "trust_ratio_eps",
            "(eps2, eps3) of the paper's trust-ratio form, each >= 0",
            NON_NEGATIVE,
            {"alto": "trust_ratio_eps", "lamb": "trust_ratio_eps"},
        ),
    )
}

TRUST_RATIO_FORMS: tuple[str, ...] = ("published", "paper")
NONFINITE_POLICIES: tuple[str, ...] = ("skip", "raise", "unchecked")


@dataclass(frozen=True)
class AltoDefaults:
    """ALTO's defaults: the paper's large-batch setting (global batch >= 1K)."""

    lr: float = 1e-3
    b1: float = 0.99
    b2: float = 0.9
    b3: float = 0.99
    alpha: float = -5.0
    eps: float = 1e-6
    weight_decay: float = 1e-4
    trust_ratio: str = "published"
    trust_ratio_eps: tuple[float, float] = (1e-6, 1e-6)
    on_nonfinite: str = "skip"

    @property
    def betas(self) -> tuple[float, float, float]:
        return (self.b1, self.b2, self.b3)


@dataclass(frozen=True)
class LambDefaults:
    """Lamb's defaults (You et al.'s betas; our eps and weight decay)."""

    lr: float = 1e-3
    b2: float = 0.9
    b3: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01

    @property
    def betas(self) -> tuple[float, float]:
        return (self.b2, self.b3)


@dataclass(frozen=True)
class EDefaults:
    """The E adaptor's defaults (the paper's large-batch alpha and b1)."""

    alpha: float = -5.0
    b1: float = 0.99


ALTO = AltoDefaults()
LAMB = LambDefaults()
E = EDefaults()

#: The paper's (alpha, b1) below / at or above ``LARGE_BATCH``.
SMALL_BATCH_ALPHA_B1: tuple[float, float] = (0.5, 0.01)
LARGE_BATCH_ALPHA_B1: tuple[float, float] = (ALTO.alpha, ALTO.b1)


def alpha_bound(b1: float) -> float:
    """The paper's stability bound on alpha: |alpha| < 1/(1-b1)."""
    return 1.0 / (1.0 - b1)


def alpha_allowed(alpha: float, b1: float) -> bool:
    """True when alpha is finite and |alpha| < 1/(1-b1)."""
    return math.isfinite(alpha) and abs(alpha) < alpha_bound(b1)


def paper_alpha_b1(global_batch_size: int) -> tuple[float, float]:
    """(alpha, b1) the paper uses for ``global_batch_size``: small batches look back,
    large ones ahead."""
    return SMALL_BATCH_ALPHA_B1 if global_batch_size < LARGE_BATCH else LARGE_BATCH_ALPHA_B1


def paper_defaults(global_batch_size: int) -> dict[str, Any]:
    """ALTO keyword arguments the paper recommends for ``global_batch_size``.

    batch < 1K: alpha = 0.5, b1 = 0.01; batch >= 1K: alpha = -5, b1 = 0.99; always
    b2 = 0.9, b3 = 0.99, eps = 1e-6, weight_decay = 1e-4. The learning rate is
    task-specific and not included. Use as ``ALTO(params, lr=..., **paper_defaults(4096))``.
    """
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise TypeError(
            f"global_batch_size must be a positive int, got {type(global_batch_size).__name__} "
            f"{global_batch_size!r}"
        )
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    alpha, b1 = paper_alpha_b1(global_batch_size)
    return {
        "alpha": alpha,
        "betas": (b1, ALTO.b2, ALTO.b3),
        "eps": ALTO.eps,
        "weight_decay": ALTO.weight_decay,
    }
