"""The one place that decides which implementation runs a parameter group's step.

:func:`resolve` maps (``foreach``, ``fused``, the group's tensors) to an
``Implementation`` (``alto.optim._protocol``) whose ``name`` is what actually runs:

* ``fused=True``: "fused" (Triton, ``alto.fused``), or a ValueError saying why not;
* ``foreach=False``: "single" (the reference, one tensor at a time);
* ``foreach=True``: "foreach" (torch's multi-tensor ops);
* both None (the default): "fused" when every tensor is on CUDA and ``alto.fused``
  loads, else "blocked" when every tensor is a contiguous CPU tensor, else "foreach".

``fused=False`` only rules the fused path out. The fused path lives in another
package (``alto.fused``, needs triton) and is imported lazily, only when asked for
or when every tensor is on CUDA, so ``import alto`` never pulls in triton.

:class:`GroupDispatch` resolves once per parameter group and remembers the answer
as long as the group (its dict, its params list and the flags) is unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from alto.optim._impl_blocked import BLOCKED
from alto.optim._impl_blocked import applicable as blocked_applicable
from alto.optim._impl_foreach import FOREACH
from alto.optim._impl_single import SINGLE
from alto.optim._protocol import Implementation


def load_fused() -> tuple[Implementation | None, str]:
    """The fused implementation, or (None, why it is unavailable). Never raises."""
    try:
        mod = importlib.import_module("alto.fused")
    except ImportError as exc:  # alto.fused not built
        return None, f"alto.fused cannot be imported ({exc})"
    if not mod.triton_importable():
        return None, "triton is not installed (pip install triton)"
    if not mod.is_available():
        return None, "alto.fused.is_available() returned False (no CUDA and no TRITON_INTERPRET=1)"
    try:
        impl = mod.FUSED
    except ImportError as exc:  # triton present but broken, or kernels fail to import
        return None, f"alto.fused cannot load its kernels ({type(exc).__name__}: {exc})"
    return impl, ""


def _interpreter_requested() -> bool:
    try:
        mod = importlib.import_module("alto.fused")
    except ImportError:
        return False
    return mod.interpreter_requested()


def _all_cuda(params: list[Tensor]) -> bool:
    return bool(params) and all(p.device.type == "cuda" for p in params)


def resolve(
    foreach: bool | None,
    fused: bool | None,
    params: list[Tensor],
    differentiable: bool = False,
) -> Implementation:
    """The implementation for one parameter group (see the module docstring).

    ``differentiable`` (E around a base built with differentiable=True): "single",
    whose out-of-place form autograd can see through.
    """
    if fused and foreach:
        raise ValueError("foreach=True and fused=True cannot both be set; choose one")
    if differentiable:
        if fused:
            raise ValueError(
                "fused=True cannot build a differentiable g~ (the base optimizer has "
                "differentiable=True); use fused=None or False"
            )
        return SINGLE
    all_cuda = _all_cuda(params)
    if fused:
        if not all_cuda and not _interpreter_requested():
            devices = sorted({str(p.device) for p in params})
            raise ValueError(
                f"fused=True needs every parameter on a CUDA device, got devices {devices}; "
                "use fused=None or False on the CPU (or TRITON_INTERPRET=1 to test the kernels)"
            )
        impl, why = load_fused()
        if impl is None:
            raise ValueError(f"fused=True is unavailable: {why}; use fused=None or False")
        return impl
    if foreach is False:
        return SINGLE
    if foreach is True:
        return FOREACH
    if fused is None and all_cuda and not any(p.is_complex() for p in params):
        impl, _ = load_fused()
        if impl is not None:
            return impl
    if blocked_applicable(params):
        return BLOCKED
    return FOREACH


class GroupDispatch:
    """Resolve each parameter group once; ``foreach``/``fused`` of a group override
    the optimizer's (a group without the keys, e.g. assigned directly to
    ``param_groups`` by Megatron, takes the optimizer's)."""

    def __init__(self, foreach: bool | None, fused: bool | None) -> None:
        self.foreach = foreach
        self.fused = fused
        self._cache: list[tuple[Any, ...] | None] = []

    def flags(self, group: Mapping[str, Any]) -> tuple[bool | None, bool | None, bool]:
        return group.get("foreach", self.foreach), group.get("fused", self.fused), False

    def for_group(
        self,
        index: int,
        group: dict[str, Any],
        flags: tuple[bool | None, bool | None, bool] | None = None,
    ) -> Implementation:
        """The implementation of ``group`` (the index-th), resolved once; ``flags``
        (foreach, fused, differentiable) default to the group's keys, then the
        optimizer's."""
        if index >= len(self._cache):
            self._cache.extend([None] * (index + 1 - len(self._cache)))
        params = group["params"]
        flags = self.flags(group) if flags is None else flags
        hit = self._cache[index]
        if (
            hit is not None
            and hit[0] is group
            and hit[1] is params
            and hit[2] == len(params)
            and hit[3] == flags
        ):
            return hit[4]
        foreach, fused, differentiable = flags
        impl = resolve(foreach, fused, list(params), differentiable)
        self._cache[index] = (group, params, len(params), flags, impl)
        return impl

    def names(self, groups: list[dict[str, Any]]) -> list[str]:
        return [self.for_group(i, g).name for i, g in enumerate(groups)]

    def __getstate__(self) -> dict[str, Any]:  # implementations are re-resolved after a copy
        return {"foreach": self.foreach, "fused": self.fused, "_cache": []}


def summary(names: list[str]) -> str:
    """One name when every group runs the same implementation, else them all, joined by '+'."""
    unique = list(dict.fromkeys(names))
    if not unique:
        return "none"
    return "+".join(unique)


__all__ = ["GroupDispatch", "load_fused", "resolve", "summary"]
