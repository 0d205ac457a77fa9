"""Choose the implementation module (single-tensor, foreach or fused) for a step.

The fused Triton path lives in ``alto.fused`` (another package, built separately); it
is imported lazily and only when asked for or when every parameter is on CUDA, so
``import alto`` never pulls in triton.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch

from alto.optim import _impl_foreach, _impl_single

_REQUIRED = ("moments_and_sq_norms", "apply_update")


def _load_fused(required: tuple[str, ...] = _REQUIRED) -> tuple[ModuleType | None, str]:
    """The fused implementation module, or (None, why it is unavailable)."""
    try:
        mod = importlib.import_module("alto.fused")
    except ImportError as exc:  # triton missing, or alto.fused not built yet
        return None, f"alto.fused cannot be imported ({exc})"
    missing = [name for name in required if not hasattr(mod, name)]
    if missing:
        return None, f"alto.fused does not define {', '.join(missing)}"
    is_available = getattr(mod, "is_available", None)
    if is_available is not None and not is_available():
        return None, "alto.fused.is_available() returned False (no CUDA or no triton)"
    return mod, ""


def resolve(
    foreach: bool | None, fused: bool | None, params: list[torch.Tensor]
) -> tuple[ModuleType, str]:
    """Return (implementation module, its name) for the given flags and parameters.

    fused=None picks the fused path when every parameter is on CUDA and alto.fused
    loads; otherwise foreach=None/True picks foreach and foreach=False single-tensor.
    fused=True also runs on CPU tensors when alto.fused.interpreter_requested() (the
    Triton interpreter, for tests).
    """
    if fused and foreach:
        raise ValueError("foreach=True and fused=True cannot both be set; choose one")
    all_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    if fused:
        mod, why = _load_fused()
        interpreted = mod is not None and getattr(mod, "interpreter_requested", lambda: False)()
        if not all_cuda and not interpreted:
            devices = sorted({str(p.device) for p in params})
            raise ValueError(
                f"fused=True needs every parameter on a CUDA device, got devices {devices}; "
                "use fused=None or False on the CPU (or TRITON_INTERPRET=1 to test the kernels)"
            )
        if mod is None:
            raise ValueError(f"fused=True is unavailable: {why}; use fused=None or False")
        return mod, "fused"
    if fused is None and foreach is None and all_cuda:
        mod, _ = _load_fused()
        if mod is not None:
            return mod, "fused"
    if foreach is False:
        return _impl_single, "single"
    return _impl_foreach, "foreach"


def resolve_e_transform(fused: bool | None, params: list[torch.Tensor]) -> Callable | None:
    """E's fused gradient transform (``alto.fused.e_transform_``) or None for foreach.

    Same rule as the optimizers: None uses it when every parameter is on CUDA and it
    loads, True requires it (CUDA, or the Triton interpreter), False never.
    """
    if fused is False:
        return None
    all_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    if fused is None and not all_cuda:
        return None
    mod, why = _load_fused(("e_transform_",))
    interpreted = mod is not None and getattr(mod, "interpreter_requested", lambda: False)()
    if fused and not all_cuda and not interpreted:
        devices = sorted({str(p.device) for p in params})
        raise ValueError(
            f"fused=True needs every parameter on a CUDA device, got devices {devices}; "
            "use fused=None or False on the CPU (or TRITON_INTERPRET=1 to test the kernels)"
        )
    if mod is None:
        if fused:
            raise ValueError(f"fused=True is unavailable: {why}; use fused=None or False")
        return None
    return mod.e_transform_
