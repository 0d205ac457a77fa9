"""CPU implementation of the two ALTO / Lamb phases, cache-blocked.

On the CPU torch's foreach ops are a loop over tensors, each op one full pass
through memory, with a full-size temporary for every intermediate. This module
walks each (contiguous) tensor in blocks of ``CHUNK`` elements and runs the whole
phase on one block while it sits in cache, with temporaries from three small
reusable buffers. Memory traffic per step drops to the fused-kernel floor
(phase 1 reads theta, g, c, m, v and writes c, m, v; phase 2 reads theta, m, v
and writes theta) and no full-size temporary is allocated.

Same signatures and semantics as ``alto.optim._impl_foreach`` (its docstring is
the contract); ``_impl_foreach`` hands CPU groups of contiguous tensors to this
module. Norms are accumulated per block in float64 on the host; on the CPU a
host read is free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Elements per block: small enough for a few blocks to stay in L2/L3, large
#: enough that per-op overhead (a few microseconds) stays negligible.
CHUNK = 1 << 18


def applicable(*lists: list[Tensor] | None) -> bool:
    """True when every tensor is a contiguous CPU tensor (flat views are possible)."""
    return all(t.device.type == "cpu" and t.is_contiguous() for lst in lists if lst for t in lst)


def bias_corrections(steps: list[Tensor], b2: float, b3: float) -> tuple[list[float], list[float]]:
    """(sqrt(1-b3^k)/(1-b2^k), sqrt(1-b3^k)) per tensor; steps live on the CPU."""
    ks = [float(s) for s in steps]
    sqrt_bc3 = [math.sqrt(1.0 - b3**k) for k in ks]
    scale = [q / (1.0 - b2**k) for q, k in zip(sqrt_bc3, ks)]
    return scale, sqrt_bc3


class _Buffers:
    """Three reusable block-sized scratch buffers per dtype."""

    def __init__(self) -> None:
        self._bufs: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}

    def get(self, dtype: torch.dtype, size: int) -> tuple[Tensor, Tensor, Tensor]:
        if dtype not in self._bufs:
            n = min(CHUNK, size)
            self._bufs[dtype] = tuple(torch.empty(n, dtype=dtype) for _ in range(3))
        bufs = self._bufs[dtype]
        if bufs[0].numel() < size:
            bufs = tuple(torch.empty(size, dtype=dtype) for _ in range(3))
            self._bufs[dtype] = bufs
        return tuple(b[:size] for b in bufs)


def _blocks(n: int) -> range:
    return range(0, n, CHUNK)


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
    """Phase 1, block by block (contract: ``alto.optim._impl_foreach``)."""
    torch._foreach_add_(steps, 1.0)
    scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
    g_scale = None if grad_scale is None else float(grad_scale)
    s = 1.0 + alpha * (1.0 - b1)
    q = -((1.0 - b1) ** 2)
    buffers = _Buffers()
    rows: list[tuple[float, float]] = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        dtype = m.dtype
        pf, gf, mf, vf = p.view(-1), g.view(-1), m.view(-1), v.view(-1)
        cf = None if diff_carries is None else diff_carries[i].view(-1)
        eps_i, sc_i = eps * sqrt_bc3[i], scale[i]
        theta_sq = r_sq = 0.0
        for lo in _blocks(mf.numel()):
            hi = min(lo + CHUNK, mf.numel())
            b_gt, b_r, b_g = buffers.get(dtype, hi - lo)
            gc = gf[lo:hi]
            if gc.dtype != dtype or g_scale is not None:
                gc = b_g.copy_(gc)
                if g_scale is not None:
                    gc.mul_(g_scale)
            mc, vc = mf[lo:hi], vf[lo:hi]
            if cf is not None:
                cc = cf[lo:hi]
                gt = torch.mul(gc, s, out=b_gt).add_(cc, alpha=alpha)  # g + alpha*a_k
                cc.mul_(b1).add_(gc, alpha=q)  # c_{k+1}
            else:
                gt = gc
            mc.lerp_(gt, 1.0 - b2)
            vc.mul_(b3).addcmul_(gt, gt, value=1.0 - b3)
            if with_norms:
                th = pf[lo:hi]
                if th.dtype != dtype:
                    th = th.to(dtype)
                d = torch.sqrt(vc, out=b_gt).add_(eps_i)
                r = torch.mul(th, weight_decay, out=b_r).addcdiv_(mc, d, value=sc_i)
                r_sq += float(torch.linalg.vector_norm(r)) ** 2
                theta_sq += float(torch.linalg.vector_norm(th)) ** 2
        rows.append((theta_sq, r_sq))
    if not with_norms:
        return None
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2)


def apply_update(
    params: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    b2: float,
    b3: float,
    eps: float,
    weight_decay: float,
    ratios: Tensor | None,
) -> None:
    """Phase 2, block by block: theta <- theta*(1 - lr*ratio*wd) - lr*ratio*k*m/d."""
    scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
    rs = [1.0] * len(params) if ratios is None else ratios.tolist()
    buffers = _Buffers()
    for i, (p, m, v) in enumerate(zip(params, exp_avgs, exp_avg_sqs)):
        dtype = m.dtype
        pf, mf, vf = p.view(-1), m.view(-1), v.view(-1)
        eps_i = eps * sqrt_bc3[i]
        shrink = 1.0 - lr * weight_decay * rs[i]
        coef = -lr * rs[i] * scale[i]
        for lo in _blocks(mf.numel()):
            hi = min(lo + CHUNK, mf.numel())
            b_d, _, b_t = buffers.get(dtype, hi - lo)
            d = torch.sqrt(vf[lo:hi], out=b_d).add_(eps_i)
            th = pf[lo:hi]
            low_precision = th.dtype != dtype
            if low_precision:
                th = b_t.copy_(th)
            if weight_decay != 0.0:
                th.mul_(shrink)
            th.addcdiv_(mf[lo:hi], d, value=coef)
            if low_precision:
                pf[lo:hi].copy_(th)


def e_transform(
    grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
) -> list[Tensor]:
    """E's gradient replacement in one blocked pass over g and c (CPU, contiguous).

    Returns new tensors ``g + alpha*(c + (1-b1) g)`` in the gradients' dtypes and
    advances ``c <- b1 c - (1-b1)^2 g`` in place.
    """
    s = 1.0 + alpha * (1.0 - b1)
    q = -((1.0 - b1) ** 2)
    out = [torch.empty_like(g) for g in grads]
    buffers = _Buffers()
    for g, c, o in zip(grads, diff_carries, out):
        gf, cf, of = g.view(-1), c.view(-1), o.view(-1)
        for lo in _blocks(cf.numel()):
            hi = min(lo + CHUNK, cf.numel())
            gc, cc = gf[lo:hi], cf[lo:hi]
            if gc.dtype != cc.dtype:
                b_g, b_o, _ = buffers.get(cc.dtype, hi - lo)
                gc = b_g.copy_(gc)
                of[lo:hi].copy_(torch.mul(gc, s, out=b_o).add_(cc, alpha=alpha))
            else:
                torch.mul(gc, s, out=of[lo:hi]).add_(cc, alpha=alpha)
            cc.mul_(b1).add_(gc, alpha=q)
    return out
