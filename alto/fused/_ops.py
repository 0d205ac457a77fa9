"""The fused (Triton) implementation of the two ALTO phases and of E's transform.

Same interface and semantics as ``alto.optim._protocol`` (read its module
docstring for the contract); differences, all by design:

* ``state["step"]`` lives on the parameters' device (``STEP_ON_PARAM_DEVICE``)
  and bias corrections are computed there, so a step never reads the device
  from the host and can be captured in a CUDA graph (with ``lr`` given as a
  0-d device tensor).
* m, v, c may be stored in bfloat16; the arithmetic is fp32 either way,
  rounded once (to nearest even) on store.
* Cost per parameter and step (fp32): phase 1 reads theta, g, m, v, c and
  writes m, v, c; phase 2 reads theta, m, v and writes theta: 48 bytes, the
  floor named in issue 3.  Launches per group: phase 1 two (unmasked chunks,
  ragged tails) per dtype bucket plus one deterministic norm reduction;
  phase 2 two per bucket; plus torch's multi-tensor step increment.

Host work per call is one pass of ``data_ptr()`` over the tensor lists: the
validation, the layout and the device pointer table are cached by that tuple
of addresses (a *plan*).  The cache assumes that a tensor found at a known
address still has the dtype, size and layout it had when the plan was built,
which holds for parameters, optimizer states and autograd's gradients.

Calls the kernels do not cover fall back to the foreach path (correct, with
its host reads), warning once: float64 tensors, non-contiguous tensors,
tensors spread over several devices.  CPU tensors run through Triton's
interpreter (slow; for tests).
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from alto.fused import _kernels as K
from alto.fused._layout import (
    Layout,
    PointerTable,
    block_size,
    build_pointer_table,
    get_layout,
    num_warps,
    remember,
)
from alto.optim._impl_foreach import FOREACH, explore_

STEP_ON_PARAM_DEVICE = True

_SEGMENT_BLOCK = 128
_PLAN_CACHE_SIZE = 64
_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_DATA_PTR = Tensor.data_ptr
_warned: set[str] = set()


@dataclass(frozen=True)
class _Plan:
    """Everything about one call that depends only on the tensors' addresses."""

    fallback: str | None  # why the kernels cannot run this call, or None
    layout: Layout | None
    pointers: PointerTable | None


_plans: OrderedDict[tuple, _Plan] = OrderedDict()


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[
        dtype
    ]


def _to_f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


@functools.lru_cache(maxsize=64)
def _ln_pair(beta: float) -> tuple[float, float]:
    """ln(beta) as two fp32 values whose sum carries ~48 bits (kernel scalars are fp32).

    The kernel forms 1 - beta^k = 1 - exp(k ln beta) in fp64 from them, so the
    bias correction keeps full fp32 accuracy even for beta close to 1.
    """
    if beta <= 0.0:
        return (-math.inf, 0.0)  # beta^k = 0 for k >= 1
    ln = math.log(beta)
    hi = _to_f32(ln)
    return hi, _to_f32(ln - hi)


def _fallback_reason(
    lists: Sequence[Sequence[Tensor]], steps: Sequence[Tensor] | None
) -> str | None:
    """Why the kernels cannot take these tensors (None: they can)."""
    device = lists[0][0].device
    for tensors in lists:
        for t in tensors:
            if t.device != device:
                return f"tensors on several devices ({device} and {t.device})"
            if t.dtype not in _SUPPORTED:
                return f"{t.dtype} tensors"
            if not t.is_contiguous():
                return f"a non-contiguous tensor of shape {tuple(t.shape)}"
    for s in steps or ():
        if s.device != device or s.dtype != torch.float32 or s.numel() != 1:
            return (
                f"state['step'] is a {s.dtype} tensor of shape {tuple(s.shape)} on {s.device}, "
                f"not a float32 scalar on {device} (the fused path keeps steps on the device)"
            )
    return None


def _warn_fallback(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"fused ALTO: {reason}; this call runs on the foreach path (correct, slower)",
            stacklevel=3,
        )


def _plan(
    kind: str,
    lists: Sequence[Sequence[Tensor]],
    dtype_roles: tuple[int, int, int],
    steps: Sequence[Tensor] | None = None,
) -> _Plan:
    """The cached plan for these tensors (lists[i][j]: role i of tensor j).

    ``dtype_roles`` picks the three roles whose dtypes split the tensors into
    launch buckets.  ``steps`` are appended as the last role.
    """
    roles = [*lists, steps] if steps is not None else list(lists)
    key = (kind, block_size(), *(tuple(map(_DATA_PTR, r)) for r in roles))
    plan = _plans.get(key)
    if plan is not None:
        _plans.move_to_end(key)
        return plan
    reason = _fallback_reason(lists, steps)
    if reason is not None:
        return remember(_plans, key, _Plan(reason, None, None), _PLAN_CACHE_SIZE)
    device = lists[0][0].device
    first = lists[0]
    dtype_keys = [tuple(lists[r][j].dtype for r in dtype_roles) for j in range(len(first))]
    layout = get_layout([t.numel() for t in first], dtype_keys, device)
    pointers = build_pointer_table(layout, key[2:], device)
    return remember(_plans, key, _Plan(None, layout, pointers), _PLAN_CACHE_SIZE)


def _launch_buckets(plan: _Plan, kernel_name: str, interpret: bool, make_args) -> None:
    """Two launches per bucket: unmasked full chunks, then masked tails."""
    layout, pointers = plan.layout, plan.pointers
    assert layout is not None and pointers is not None
    kernel = K.get(kernel_name, interpret)
    warps = num_warps()
    for bi, bucket in enumerate(layout.buckets):
        for masked, (lo, hi) in ((False, bucket.full), (True, bucket.tail)):
            if hi == lo:
                continue
            args, consts = make_args(bucket, lo)
            kernel[(hi - lo,)](
                *args,
                **consts,
                MASKED=masked,
                ALIGNED=pointers.aligned[bi],
                BLOCK=layout.block,
                num_warps=warps,
                enable_fp_fusion=True,  # explicit: silences triton 3.9's default warning
            )


def moments_and_sq_norms(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    diff_carries: list[Tensor] | None,
    steps: list[Tensor],
    *,
    b1: float,
    b2: float,
    b3: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    with_norms: bool,
    grad_scale: Tensor | None = None,
) -> Tensor | None:
    """Phase 1, fused: see ``alto.optim._protocol`` for the contract."""
    has_carry = diff_carries is not None
    # Lamb has no carry: its row then points at m and the kernel never touches it.
    carries = diff_carries if diff_carries is not None else exp_avgs
    plan = _plan("alto1", [params, grads, exp_avgs, exp_avg_sqs, carries], (0, 1, 2), steps)
    if plan.fallback is not None:
        _warn_fallback(plan.fallback)
        return FOREACH.moments_and_sq_norms(
            params, grads, exp_avgs, exp_avg_sqs, diff_carries, steps, b1=b1, b2=b2, b3=b3,
            alpha=alpha, eps=eps, weight_decay=weight_decay, with_norms=with_norms,
            grad_scale=grad_scale, workspace={},
        )  # fmt: skip
    layout = plan.layout
    assert layout is not None and plan.pointers is not None
    device = params[0].device
    if not has_carry:
        b1, alpha = 0.0, 0.0
    torch._foreach_add_(steps, 1.0)
    interpret = device.type == "cpu"
    # per-chunk partial sums: row 0 ||theta||^2, row 1 ||r||^2
    partial = torch.empty((2, max(layout.n_slots, 1)), dtype=torch.float32, device=device)
    one_minus_b1 = 1.0 - b1
    scalars = (
        float(b1), one_minus_b1, one_minus_b1 * one_minus_b1, float(alpha),
        float(b2), 1.0 - b2, float(b3), 1.0 - b3, float(eps), float(weight_decay),
        *_ln_pair(b2), *_ln_pair(b3),
    )  # fmt: skip
    scale = grad_scale if grad_scale is not None else partial  # any pointer when unused
    table = plan.pointers.table

    def make_args(bucket, lo):
        p_dt, g_dt, s_dt = bucket.dtypes
        args = (
            *table, layout.chunk_pos[lo:], layout.chunk_start[lo:], layout.numel,
            partial[0, lo:], partial[1, lo:], scale, *scalars,
        )  # fmt: skip
        consts = dict(
            P_DT=_tl_dtype(p_dt),
            G_DT=_tl_dtype(g_dt),
            S_DT=_tl_dtype(s_dt),
            HAS_CARRY=has_carry,
            HAS_SCALE=grad_scale is not None,
            WITH_NORMS=with_norms,
        )
        return args, consts

    _launch_buckets(plan, "alto_moments", interpret, make_args)
    if not with_norms:
        return None
    sq = torch.zeros((layout.n_tensors, 2), dtype=torch.float32, device=device)
    K.get("segment_sq_norms", interpret)[(layout.n_tensors,)](
        partial[0], partial[1], layout.full_begin, layout.full_end, layout.tail_slot,
        layout.orig, sq, RB=_SEGMENT_BLOCK, num_warps=4, enable_fp_fusion=True,
    )  # fmt: skip
    return sq


def apply_update(
    params: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    b2: float,
    b3: float,
    eps: float,
    weight_decay: float,
    ratios: Tensor | None,
) -> None:
    """Phase 2, fused: see ``alto.optim._protocol`` for the contract.

    ``lr`` may be a 0-d tensor on the parameters' device (read by the kernel, so
    a captured CUDA graph follows a learning-rate schedule).
    """
    plan = _plan("alto2", [params, exp_avgs, exp_avg_sqs], (0, 0, 1), steps)
    if plan.fallback is not None:
        _warn_fallback(plan.fallback)
        FOREACH.apply_update(
            params, exp_avgs, exp_avg_sqs, steps, lr=float(lr), b2=b2, b3=b3, eps=eps,
            weight_decay=weight_decay, ratios=ratios, workspace={},
        )  # fmt: skip
        return
    layout = plan.layout
    assert layout is not None and plan.pointers is not None
    device = params[0].device
    lr_is_ptr = isinstance(lr, Tensor)
    if lr_is_ptr and (lr.device != device or lr.numel() != 1):
        raise ValueError(
            f"lr as a tensor must hold one value on {device}, got shape {tuple(lr.shape)} "
            f"on {lr.device}"
        )
    if ratios is not None and (ratios.device != device or ratios.numel() != len(params)):
        raise ValueError(
            f"ratios must be a [{len(params)}] tensor on {device}, got shape "
            f"{tuple(ratios.shape)} on {ratios.device}"
        )
    ratio_arg = ratios.to(torch.float32).contiguous() if ratios is not None else layout.numel
    lr_arg = lr if lr_is_ptr else float(lr)
    scalars = (float(eps), float(weight_decay), *_ln_pair(b2), *_ln_pair(b3))
    table = plan.pointers.table

    def make_args(bucket, lo):
        p_dt, _, s_dt = bucket.dtypes
        args = (
            *table, layout.chunk_pos[lo:], layout.chunk_start[lo:], layout.numel,
            layout.orig, ratio_arg, lr_arg, *scalars,
        )  # fmt: skip
        consts = dict(
            P_DT=_tl_dtype(p_dt),
            S_DT=_tl_dtype(s_dt),
            HAS_RATIO=ratios is not None,
            LR_IS_PTR=lr_is_ptr,
        )
        return args, consts

    _launch_buckets(plan, "alto_update", device.type == "cpu", make_args)


def e_transform_(
    grads: list[Tensor],
    diff_carries: list[Tensor],
    out: list[Tensor] | None = None,
    *,
    b1: float,
    alpha: float,
) -> list[Tensor]:
    """E's gradient replacement in one pass over g and c.

    ``out[i] = g_i + alpha * (c_i + (1-b1) g_i)`` and ``c_i <- b1 c_i - (1-b1)^2 g_i``.
    ``out`` defaults to ``grads`` (in place); returns ``out``.  Costs one read of g
    and c and one write of c and out: 16 bytes per fp32 parameter.
    """
    if out is None:
        out = grads
    if not (len(grads) == len(diff_carries) == len(out)):
        raise ValueError(
            f"grads, diff_carries and out must have equal lengths, got {len(grads)}, "
            f"{len(diff_carries)}, {len(out)}"
        )
    if not grads:
        return out
    plan = _plan("e", [grads, diff_carries, out], (0, 1, 2))
    if plan.fallback is not None:
        _warn_fallback(plan.fallback)
        return _e_transform_foreach(grads, diff_carries, out, b1=b1, alpha=alpha)
    layout = plan.layout
    assert layout is not None and plan.pointers is not None
    one_minus_b1 = 1.0 - b1
    scalars = (float(b1), one_minus_b1, one_minus_b1 * one_minus_b1, float(alpha))
    table = plan.pointers.table

    def make_args(bucket, lo):
        g_dt, c_dt, o_dt = bucket.dtypes
        args = (
            *table, layout.chunk_pos[lo:], layout.chunk_start[lo:], layout.numel, *scalars,
        )  # fmt: skip
        consts = dict(G_DT=_tl_dtype(g_dt), C_DT=_tl_dtype(c_dt), O_DT=_tl_dtype(o_dt))
        return args, consts

    _launch_buckets(plan, "e_transform", grads[0].device.type == "cpu", make_args)
    return out


def _e_transform_foreach(
    grads: list[Tensor], diff_carries: list[Tensor], out: list[Tensor], *, b1: float, alpha: float
) -> list[Tensor]:
    g = [x.to(c.dtype) for x, c in zip(grads, diff_carries)]
    for o, t in zip(out, explore_(g, diff_carries, b1=b1, alpha=alpha)):
        o.copy_(t)
    return out


class Fused:
    """The Triton implementation of ``alto.optim._protocol.Implementation``."""

    name = "fused"
    step_on_param_device = STEP_ON_PARAM_DEVICE
    tensor_lr = True

    def moments_and_sq_norms(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        diff_carries: list[Tensor] | None,
        steps: list[Tensor],
        *,
        b1: float,
        b2: float,
        b3: float,
        alpha: float,
        eps: float,
        weight_decay: float,
        with_norms: bool,
        grad_scale: Tensor | None,
        workspace: dict,
    ) -> Tensor | None:
        return moments_and_sq_norms(
            params, grads, exp_avgs, exp_avg_sqs, diff_carries, steps, b1=b1, b2=b2, b3=b3,
            alpha=alpha, eps=eps, weight_decay=weight_decay, with_norms=with_norms,
            grad_scale=grad_scale,
        )  # fmt: skip

    def apply_update(
        self,
        params: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
        *,
        lr: float | Tensor,
        b2: float,
        b3: float,
        eps: float,
        weight_decay: float,
        ratios: Tensor | None,
        workspace: dict,
    ) -> None:
        apply_update(
            params, exp_avgs, exp_avg_sqs, steps, lr=lr, b2=b2, b3=b3, eps=eps,
            weight_decay=weight_decay, ratios=ratios,
        )  # fmt: skip

    def e_transform(
        self, grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
    ) -> list[Tensor]:
        out = [torch.empty_like(g) for g in grads]
        return e_transform_(grads, diff_carries, out, b1=b1, alpha=alpha)


FUSED = Fused()
