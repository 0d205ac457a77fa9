"""Fused multi-tensor ALTO step and E gradient transform for CUDA, written in Triton.

Importing this package is cheap; triton and the kernels load on first use of
``moments_and_sq_norms``, ``apply_update`` or ``e_transform_`` (attributes
resolved lazily), so ``alto.optim`` can probe :func:`is_available` without
paying for triton on machines that will not use it.

CPU tensors run through Triton's interpreter (slow, for tests).  The optimizers
only take this path on the CPU when ``TRITON_INTERPRET=1`` is set (see
:func:`interpreter_requested`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

_LAZY = {
    "moments_and_sq_norms": "alto.fused._ops",
    "apply_update": "alto.fused._ops",
    "e_transform_": "alto.fused._ops",
    "STEP_ON_PARAM_DEVICE": "alto.fused._ops",
    "FUSED": "alto.fused._ops",
}

__all__ = [
    "FUSED",
    "STEP_ON_PARAM_DEVICE",
    "apply_update",
    "e_transform_",
    "interpreter_requested",
    "is_available",
    "moments_and_sq_norms",
]


def triton_importable() -> bool:
    """True when the triton package is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """True when TRITON_INTERPRET=1: the fused path may then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    """Whether the fused path can run here: triton installed, and CUDA or the interpreter."""
    if not triton_importable():
        return False
    import torch

    return torch.cuda.is_available() or interpreter_requested()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alto.fused' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
