"""Triton kernels of the fused ALTO step and of E's gradient transform.

Every kernel is *multi-tensor*: one launch serves every tensor of a dtype bucket.
The host side (``_layout.py``) cuts each tensor into BLOCK-sized chunks and
hands the kernel a chunk table (chunk -> tensor position, start offset) plus a
pointer table (one int64 row of raw addresses per role: parameter, gradient,
m, v, c, step; each row is passed as its own argument).  Integer index math is
int64 throughout (also cheaper under the interpreter, which checks every
int32 operation for overflow).  A program handles one chunk.  Chunks that lie fully inside
their tensor run in an unmasked launch (``MASKED=False``) so that loads and
stores vectorise; the at most one ragged tail chunk per tensor runs in a second,
masked launch.

The kernels are plain functions here, wrapped on demand by :func:`get` as a
compiled ``triton.jit`` kernel (CUDA tensors) or as Triton's interpreter
(CPU tensors, which is how CI tests them).  Deciding per call keeps
``TRITON_INTERPRET`` out of the process environment, so other users of Triton
in the same process are unaffected.  Helpers are :class:`_DualFunction`: a
``JITFunction`` for the compiler that runs interpreted when called from an
interpreted kernel.  (``tl.sum`` and ``tl.zeros`` are jit functions fixed at
triton's import, hence ``tl.reduce(.., _sum_combine)`` and ``tl.full``.)

Math (fp32 whatever the storage dtype; see ARCHITECTURE.md):
  a  = c + (1-b1) g ;  c' = b1 c - (1-b1)^2 g ;  g~ = g + alpha a
  m' = b2 m + (1-b2) g~ ;  v' = b3 v + (1-b3) g~^2
  r  = (m'/bc2) / (sqrt(v'/bc3) + eps) + wd theta,   bc_i = 1 - b_i^step
  theta' = theta - lr * ratio * r
Bias corrections are computed on the device from the step tensor in fp64
(``ln b`` arrives as an fp32 hi/lo pair; k * hi is exact in fp64), so the step
is CUDA-graph capturable and ``1 - b^k`` keeps full fp32 accuracy even for b
close to 1.  Stores to bfloat16 round to nearest-even by hand, bit-identical
to torch's ``.to(torch.bfloat16)`` (the interpreter's own cast truncates).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import triton
import triton.language as tl
from triton.language.standard import _sum_combine
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


class _DualFunction(JITFunction):
    """A jit helper that the compiler inlines and the interpreter simply calls."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__(fn)
        self._interpreted = InterpretedFunction(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Only reached from an interpreted kernel, whose launch has already
        # patched triton.language for this module: skip the per-call re-patching
        # that InterpretedFunction.__call__ would do (it dominates the run time).
        return self._interpreted.rewrite()(*args, **kwargs)


@_DualFunction
def _load(ptr, offs, n, MASKED: tl.constexpr):
    if MASKED:
        x = tl.load(ptr + offs, mask=offs < n, other=0.0)
    else:
        x = tl.load(ptr + offs)
    return x.to(tl.float32)


@_DualFunction
def _round(x, DT: tl.constexpr):
    """fp32 -> DT, round to nearest even."""
    if DT == tl.bfloat16:  # noqa: SIM300 (DT is a constexpr: its __eq__ must run)
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        y = tl.where(x != x, x.to(tl.bfloat16), y)  # NaN stays NaN
    else:
        y = x.to(DT)
    return y


@_DualFunction
def _store(ptr, offs, n, x, MASKED: tl.constexpr):
    y = _round(x, ptr.dtype.element_ty)
    if MASKED:
        tl.store(ptr + offs, y, mask=offs < n)
    else:
        tl.store(ptr + offs, y)


@_DualFunction
def _pointer(row_ptr, pos, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor ``pos``'s address from one row of the pointer table, typed DT."""
    ptr = tl.load(row_ptr + pos).to(tl.pointer_type(DT), bitcast=True)
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@_DualFunction
def _one_minus_pow(k, ln_hi, ln_lo):
    """1 - b^k in fp64 from ln b = ln_hi + ln_lo, returned as fp32."""
    return (1.0 - tl.exp(k * ln_hi + k * ln_lo)).to(tl.float32)


@_DualFunction
def _direction(m, v, p, bc2, bc3, eps, weight_decay):
    """r = m_hat / (sqrt(v_hat) + eps) + wd * theta, IEEE-rounded like torch."""
    denom = tl.sqrt_rn(tl.div_rn(v, bc3)) + eps
    return tl.div_rn(tl.div_rn(m, bc2), denom) + weight_decay * p


def alto_moments(
    p_tab,
    g_tab,
    m_tab,
    v_tab,
    c_tab,
    s_tab,
    chunk_pos_ptr,
    chunk_start_ptr,
    numel_ptr,
    norm_p_ptr,
    norm_r_ptr,
    scale_ptr,
    b1,
    one_minus_b1,
    carry_coef,
    alpha,
    b2,
    one_minus_b2,
    b3,
    one_minus_b3,
    eps,
    weight_decay,
    ln_b2_hi,
    ln_b2_lo,
    ln_b3_hi,
    ln_b3_lo,
    P_DT: tl.constexpr,
    G_DT: tl.constexpr,
    S_DT: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WITH_NORMS: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Phase 1: update c, m, v of one chunk; optionally its partial [||theta||^2, ||r||^2].

    HAS_CARRY=False is Lamb (g~ = g, no c); HAS_SCALE multiplies g by *scale_ptr
    (global gradient clipping computed on the device).
    """
    chunk = tl.program_id(0).to(tl.int64)
    pos = tl.load(chunk_pos_ptr + chunk).to(tl.int64)
    start = tl.multiple_of(tl.load(chunk_start_ptr + chunk), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    n = 0
    if MASKED:
        n = tl.load(numel_ptr + pos)
    g_ptr = _pointer(g_tab, pos, G_DT, ALIGNED)
    m_ptr = _pointer(m_tab, pos, S_DT, ALIGNED)
    v_ptr = _pointer(v_tab, pos, S_DT, ALIGNED)
    g = _load(g_ptr, offs, n, MASKED)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr).to(tl.float32)
    if HAS_CARRY:
        c_ptr = _pointer(c_tab, pos, S_DT, ALIGNED)
        c = _load(c_ptr, offs, n, MASKED)
        gt = g + alpha * (c + one_minus_b1 * g)
        _store(c_ptr, offs, n, b1 * c - carry_coef * g, MASKED)
    else:
        gt = g
    m = _round(b2 * _load(m_ptr, offs, n, MASKED) + one_minus_b2 * gt, S_DT)
    v = _round(b3 * _load(v_ptr, offs, n, MASKED) + one_minus_b3 * (gt * gt), S_DT)
    if MASKED:
        tl.store(m_ptr + offs, m, mask=offs < n)
        tl.store(v_ptr + offs, v, mask=offs < n)
    else:
        tl.store(m_ptr + offs, m)
        tl.store(v_ptr + offs, v)

    if WITH_NORMS:
        # The norms use the stored (rounded) m, v, as phase 2 does, so the trust
        # ratio describes the update actually applied.
        k = tl.load(_pointer(s_tab, pos, tl.float32, False)).to(tl.float64)
        bc2 = _one_minus_pow(k, ln_b2_hi, ln_b2_lo)
        bc3 = _one_minus_pow(k, ln_b3_hi, ln_b3_lo)
        p = _load(_pointer(p_tab, pos, P_DT, ALIGNED), offs, n, MASKED)
        r = _direction(m.to(tl.float32), v.to(tl.float32), p, bc2, bc3, eps, weight_decay)
        if MASKED:
            r = tl.where(offs < n, r, 0.0)
        tl.store(norm_p_ptr + chunk, tl.reduce(p * p, 0, _sum_combine))
        tl.store(norm_r_ptr + chunk, tl.reduce(r * r, 0, _sum_combine))


def alto_update(
    p_tab,
    m_tab,
    v_tab,
    s_tab,
    chunk_pos_ptr,
    chunk_start_ptr,
    numel_ptr,
    orig_ptr,
    ratio_ptr,
    lr,
    eps,
    weight_decay,
    ln_b2_hi,
    ln_b2_lo,
    ln_b3_hi,
    ln_b3_lo,
    P_DT: tl.constexpr,
    S_DT: tl.constexpr,
    HAS_RATIO: tl.constexpr,
    LR_IS_PTR: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Phase 2: theta -= lr * ratio * r, recomputing r from the stored m, v (no 4th buffer)."""
    chunk = tl.program_id(0).to(tl.int64)
    pos = tl.load(chunk_pos_ptr + chunk).to(tl.int64)
    start = tl.multiple_of(tl.load(chunk_start_ptr + chunk), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    n = 0
    if MASKED:
        n = tl.load(numel_ptr + pos)
    k = tl.load(_pointer(s_tab, pos, tl.float32, False)).to(tl.float64)
    bc2 = _one_minus_pow(k, ln_b2_hi, ln_b2_lo)
    bc3 = _one_minus_pow(k, ln_b3_hi, ln_b3_lo)
    if LR_IS_PTR:
        scale = tl.load(lr).to(tl.float32)
    else:
        scale = lr
    if HAS_RATIO:
        scale = scale * tl.load(ratio_ptr + tl.load(orig_ptr + pos)).to(tl.float32)
    p_ptr = _pointer(p_tab, pos, P_DT, ALIGNED)
    p = _load(p_ptr, offs, n, MASKED)
    m = _load(_pointer(m_tab, pos, S_DT, ALIGNED), offs, n, MASKED)
    v = _load(_pointer(v_tab, pos, S_DT, ALIGNED), offs, n, MASKED)
    _store(p_ptr, offs, n, p - scale * _direction(m, v, p, bc2, bc3, eps, weight_decay), MASKED)


def segment_sq_norms(
    norm_p_ptr,
    norm_r_ptr,
    full_begin_ptr,
    full_end_ptr,
    tail_slot_ptr,
    orig_ptr,
    out_ptr,
    RB: tl.constexpr,
):
    """Sum one tensor's chunk partials into out[orig, :] in a fixed order (deterministic)."""
    pos = tl.program_id(0).to(tl.int64)
    begin = tl.load(full_begin_ptr + pos).to(tl.int64)
    end = tl.load(full_end_ptr + pos).to(tl.int64)
    tail = tl.load(tail_slot_ptr + pos).to(tl.int64)
    acc_p = tl.full([RB], 0.0, tl.float32)
    acc_r = tl.full([RB], 0.0, tl.float32)
    for i in range(begin, end, RB):
        idx = i + tl.arange(0, RB)
        inside = idx < end
        acc_p += tl.load(norm_p_ptr + idx, mask=inside, other=0.0)
        acc_r += tl.load(norm_r_ptr + idx, mask=inside, other=0.0)
    has_tail = tail >= 0
    sum_p = tl.reduce(acc_p, 0, _sum_combine)
    sum_r = tl.reduce(acc_r, 0, _sum_combine)
    sum_p += tl.load(norm_p_ptr + tail, mask=has_tail, other=0.0)
    sum_r += tl.load(norm_r_ptr + tail, mask=has_tail, other=0.0)
    o = tl.load(orig_ptr + pos).to(tl.int64)
    tl.store(out_ptr + 2 * o, sum_p)
    tl.store(out_ptr + 2 * o + 1, sum_r)


def e_transform(
    g_tab,
    c_tab,
    o_tab,
    chunk_pos_ptr,
    chunk_start_ptr,
    numel_ptr,
    b1,
    one_minus_b1,
    carry_coef,
    alpha,
    G_DT: tl.constexpr,
    C_DT: tl.constexpr,
    O_DT: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """E's gradient replacement in one pass: c' = b1 c - (1-b1)^2 g ; out = g + alpha a.

    ``out`` may alias ``g`` (in-place replacement): each element is read before
    it is written by the same program.
    """
    chunk = tl.program_id(0).to(tl.int64)
    pos = tl.load(chunk_pos_ptr + chunk).to(tl.int64)
    start = tl.multiple_of(tl.load(chunk_start_ptr + chunk), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    n = 0
    if MASKED:
        n = tl.load(numel_ptr + pos)
    g = _load(_pointer(g_tab, pos, G_DT, ALIGNED), offs, n, MASKED)
    c_ptr = _pointer(c_tab, pos, C_DT, ALIGNED)
    c = _load(c_ptr, offs, n, MASKED)
    out = g + alpha * (c + one_minus_b1 * g)
    _store(c_ptr, offs, n, b1 * c - carry_coef * g, MASKED)
    _store(_pointer(o_tab, pos, O_DT, ALIGNED), offs, n, out, MASKED)


_SOURCES: dict[str, Callable[..., Any]] = {
    "alto_moments": alto_moments,
    "alto_update": alto_update,
    "segment_sq_norms": segment_sq_norms,
    "e_transform": e_transform,
}
_built: dict[tuple[str, bool], Any] = {}
_lock = threading.Lock()


def get(name: str, interpret: bool) -> Any:
    """Return kernel ``name`` compiled (``interpret=False``) or interpreted (CPU tensors)."""
    key = (name, interpret)
    kernel = _built.get(key)
    if kernel is None:
        with _lock:
            kernel = _built.get(key)
            if kernel is None:
                fn = _SOURCES[name]
                kernel = InterpretedFunction(fn) if interpret else triton.jit(fn)
                _built[key] = kernel
    return kernel
