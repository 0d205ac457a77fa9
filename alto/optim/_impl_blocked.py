"""Cache-blocked CPU implementation: the default for groups of contiguous CPU tensors.

On the CPU torch's foreach ops are a loop over tensors, each op one full pass
through memory with a full-size temporary per intermediate. This implementation
walks each tensor in blocks of ``CHUNK`` elements and runs a whole phase on one
block while it sits in cache, with temporaries from three small reusable buffers.
Memory traffic per step drops to the fused-kernel floor (phase 1 reads theta, g,
c, m, v and writes c, m, v; phase 2 reads theta, m, v and writes theta) and no
full-size temporary is allocated.

The reference's own functions (``_impl_single.explore_``, E's transform, then
``lamb_moments_``, Lamb's) applied block by block; the contract is ``alto.optim._protocol``. Norms
are accumulated per block in float64 on the host (on the CPU a host read is free).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alto.optim._common import bias_corrections
from alto.optim._impl_single import explore_, lamb_moments_

#: Elements per block: small enough for a few blocks to stay in L2/L3, large
#: enough that per-op overhead (a few microseconds) stays negligible.
CHUNK = 1 << 18


def applicable(params: list[Tensor]) -> bool:
    """True when every parameter is a contiguous CPU tensor (flat views are possible).

    States are created like their parameter (contiguous then); gradients that are
    not contiguous are copied once per step (correct, slower).
    """
    return all(p.device.type == "cpu" and p.is_contiguous() for p in params)


class _Buffers:
    """Three reusable block-sized scratch buffers per dtype."""

    def __init__(self) -> None:
        self._bufs: dict[torch.dtype, tuple[Tensor, Tensor, Tensor]] = {}

    def get(self, dtype: torch.dtype, size: int) -> tuple[Tensor, Tensor, Tensor]:
        bufs = self._bufs.get(dtype)
        if bufs is None or bufs[0].numel() < size:
            bufs = tuple(torch.empty(max(size, 1), dtype=dtype) for _ in range(3))
            self._bufs[dtype] = bufs
        return tuple(b[:size] for b in bufs)


def _flat(t: Tensor) -> Tensor:
    return t.view(-1) if t.is_contiguous() else t.contiguous().view(-1)


class Blocked:
    """Runs each phase block by block while the block is in cache (CPU only)."""

    name = "blocked"
    step_on_param_device = False
    tensor_lr = False

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
        torch._foreach_add_(steps, 1.0)
        scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
        g_scale = None if grad_scale is None else float(grad_scale)
        buffers = _Buffers()
        rows: list[tuple[float, float]] = []
        for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
            dtype = m.dtype
            pf, gf, mf, vf = p.view(-1), _flat(g), m.view(-1), v.view(-1)
            cf = None if diff_carries is None else diff_carries[i].view(-1)
            eps_i, sc_i = eps * sqrt_bc3[i], scale[i]
            theta_sq = r_sq = 0.0
            for lo in range(0, mf.numel(), CHUNK):
                hi = min(lo + CHUNK, mf.numel())
                b_gt, b_r, b_g = buffers.get(dtype, hi - lo)
                gc = gf[lo:hi]
                if gc.dtype != dtype or g_scale is not None:
                    gc = b_g.copy_(gc)
                    if g_scale is not None:
                        gc.mul_(g_scale)
                mc, vc = mf[lo:hi], vf[lo:hi]
                if cf is not None:  # ALTO = E then Lamb, on this block
                    gc = explore_(gc, cf[lo:hi], b1=b1, alpha=alpha, out=b_gt)
                lamb_moments_(mc, vc, gc, b2=b2, b3=b3)
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
        """theta <- theta*(1 - lr*ratio*wd) - lr*ratio*scale*m/d, block by block."""
        lr = float(lr)
        scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
        rs = [1.0] * len(params) if ratios is None else ratios.tolist()
        buffers = _Buffers()
        for i, (p, m, v) in enumerate(zip(params, exp_avgs, exp_avg_sqs)):
            dtype = m.dtype
            pf, mf, vf = p.view(-1), m.view(-1), v.view(-1)
            eps_i = eps * sqrt_bc3[i]
            shrink = 1.0 - lr * weight_decay * rs[i]
            coef = -lr * rs[i] * scale[i]
            for lo in range(0, mf.numel(), CHUNK):
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
        self, grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
    ) -> list[Tensor]:
        """One blocked pass over g and c; new tensors in the gradients' dtypes."""
        out = [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]
        buffers = _Buffers()
        for g, c, o in zip(grads, diff_carries, out):
            gf, cf, of = _flat(g), c.view(-1), o.view(-1)
            for lo in range(0, cf.numel(), CHUNK):
                hi = min(lo + CHUNK, cf.numel())
                gc, cc = gf[lo:hi], cf[lo:hi]
                if gc.dtype != cc.dtype:
                    b_g, b_o, _ = buffers.get(cc.dtype, hi - lo)
                    gc = b_g.copy_(gc)
                    of[lo:hi].copy_(explore_(gc, cc, b1=b1, alpha=alpha, out=b_o))
                else:
                    explore_(gc, cc, b1=b1, alpha=alpha, out=of[lo:hi])
        return out


BLOCKED = Blocked()
