"""Argument checks shared by ALTO, Lamb and E.

Each check raises with the argument's name, the value it got and what is allowed,
because a bad hyperparameter found three hours into a run is far more expensive
than one rejected at construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from alto import defaults as D


def number(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise TypeError if it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number (int or float), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def bounded(name: str, value: Any, bound: D.Bound) -> float:
    """A finite number inside ``bound`` (from ``alto.defaults``)."""
    x = number(name, value)
    if not bound.contains(x):
        raise ValueError(f"{name} must be {bound.describe()}, got {value!r}")
    return x


def non_negative(name: str, value: Any) -> float:
    """A finite number >= 0 (learning rates, weight decay)."""
    return bounded(name, value, D.NON_NEGATIVE)


def positive(name: str, value: Any) -> float:
    """A finite number > 0 (eps, clipping thresholds)."""
    return bounded(name, value, D.POSITIVE)


def beta(name: str, value: Any) -> float:
    """An EMA coefficient in [0, 1)."""
    return bounded(name, value, D.EMA)


def learning_rate(name: str, value: Any) -> float | torch.Tensor:
    """A number >= 0, or a one-element real floating tensor holding one (as torch's Adam).

    A tensor is kept as the caller's object, so that a scheduler that writes into
    it in place, or a captured CUDA graph that reads it, sees every change.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(
                f"{name} as a tensor must hold exactly one real floating-point value, got "
                f"shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        non_negative(name, float(value))
        return value
    return non_negative(name, value)


def betas(name: str, value: Any, count: int) -> tuple[float, ...]:
    """A tuple/list of ``count`` EMA coefficients, each in [0, 1)."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a tuple of {count} floats in [0, 1), got {value!r}")
    if len(value) != count:
        raise ValueError(
            f"{name} must have exactly {count} values in [0, 1), got {len(value)}: {value!r}"
        )
    return tuple(beta(f"{name}[{i}]", b) for i, b in enumerate(value))


def alpha_for(name: str, value: Any, b1: float, b1_name: str) -> float:
    """The ALTO acceleration factor: |alpha| < 1/(1-b1), the paper's stability bound."""
    x = number(name, value)
    bound = D.alpha_bound(b1)
    if not D.alpha_allowed(x, b1):
        raise ValueError(
            f"{name} must satisfy |{name}| < 1/(1-{b1_name}) = {bound:g} "
            f"(with {b1_name}={b1:g}), got {value!r}"
        )
    return x


def optional_bool(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")
    return value


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def optional_callable(name: str, value: Any) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable or None, got {type(value).__name__}")
    return value


def dense_grad(param: torch.Tensor, where: str) -> None:
    """Sparse gradients have no meaningful per-tensor norm or difference buffer here."""
    grad = param.grad
    if grad is not None and (grad.is_sparse or grad.layout != torch.strided):
        raise ValueError(
            f"{where} has a sparse gradient (layout {grad.layout}); only dense (torch.strided) "
            "gradients are supported, e.g. use nn.Embedding(sparse=False)"
        )


def float_param(param: torch.Tensor, where: str) -> None:
    """ALTO and Lamb take real floating-point parameters only."""
    if not param.is_floating_point():
        raise TypeError(
            f"{where} must be a floating-point tensor (real), got dtype {param.dtype}"
            + (" (complex parameters: wrap with torch.view_as_real)" if param.is_complex() else "")
        )


def float_or_complex_param(param: torch.Tensor, where: str) -> None:
    """E takes what its elementwise transform handles: real or complex floating point."""
    if not (param.is_floating_point() or param.is_complex()):
        raise TypeError(
            f"{where} must be a floating-point or complex tensor, got dtype {param.dtype}"
        )
