"""Multi-tensor (``torch._foreach_*``) implementation: the default on accelerators
without the fused path, and ``foreach=True`` anywhere.

Same operations as the reference (``_impl_single``), grouped over tensors; the
contract is ``alto.optim._protocol``. No host synchronisation with an accelerator:
bias corrections come from CPU-resident step counters, norms are stacked on the
device and the trust ratios enter the update as device tensors. Bias corrections
are folded into one denominator ``sqrt(v) + eps*sqrt(1-b3^k)``
(``alto.optim._common``); phase 1 computes it for the norms in the buffer that
held g~ and hands it to phase 2 through the workspace (two passes fewer per step,
no extra peak memory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alto.optim._common import (
    bias_corrections,
    explore_coefficients,
    in_state_dtype,
    norms,
    stack_on,
)


def explore_(g: list[Tensor], c: list[Tensor], *, b1: float, alpha: float) -> list[Tensor]:
    """E over tensor lists (same dtypes): new g~ = s g + alpha c, then c <- b1 c + q g."""
    s, q = explore_coefficients(b1, alpha)
    g_tilde = torch._foreach_mul(g, s)
    torch._foreach_add_(g_tilde, c, alpha=alpha)
    torch._foreach_mul_(c, b1)
    torch._foreach_add_(c, g, alpha=q)
    return list(g_tilde)


def lamb_moments_(
    m: list[Tensor], v: list[Tensor], g: list[Tensor], *, b2: float, b3: float
) -> None:
    """Lamb's moments over tensor lists."""
    torch._foreach_lerp_(m, g, 1.0 - b2)
    torch._foreach_mul_(v, b3)
    torch._foreach_addcmul_(v, g, g, 1.0 - b3)


def _denominators(
    exp_avg_sqs: list[Tensor], eps: float, sqrt_bc3: list[float], out: list[Tensor] | None = None
) -> list[Tensor]:
    """sqrt(v) + eps*sqrt(1-b3^k); ``out`` reuses dead buffers of the same shapes."""
    if out is None:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    else:
        torch.ops.aten._foreach_sqrt.out(exp_avg_sqs, out=out)
        denom = out
    torch._foreach_add_(denom, [eps * q for q in sqrt_bc3])
    return denom


class Foreach:
    """torch's multi-tensor ops, one full pass through memory per op."""

    name = "foreach"
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
        g = in_state_dtype(grads, exp_avgs)
        if grad_scale is not None:
            g = torch._foreach_mul(g, grad_scale.to(exp_avgs[0].dtype))

        spare: list[Tensor] | None = None  # a buffer of ours that is dead after v's update
        if diff_carries is not None:  # ALTO = E then Lamb
            g = spare = explore_(g, diff_carries, b1=b1, alpha=alpha)
        elif grad_scale is not None:
            spare = g
        lamb_moments_(exp_avgs, exp_avg_sqs, g, b2=b2, b3=b3)
        del g

        scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
        denom = _denominators(exp_avg_sqs, eps, sqrt_bc3, out=spare)
        del spare
        workspace["denom"] = denom
        if not with_norms:
            return None
        theta = in_state_dtype(params, exp_avgs)
        if weight_decay != 0.0:
            r = torch._foreach_mul(theta, weight_decay)
            torch._foreach_addcdiv_(r, exp_avgs, denom, scale)
        else:
            r = torch._foreach_div(exp_avgs, denom)
            torch._foreach_mul_(r, scale)
        device = params[0].device
        r_norms = norms(r)
        del r
        theta_norms = norms(theta)
        sq = torch.stack([stack_on(theta_norms, device), stack_on(r_norms, device)], dim=1)
        return sq.square_().to(torch.float32)

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
        lr = float(lr)
        scale, sqrt_bc3 = bias_corrections(steps, b2, b3)
        theta = in_state_dtype(params, exp_avgs)
        denom = workspace.pop("denom", None)
        if denom is None:
            denom = _denominators(exp_avg_sqs, eps, sqrt_bc3)
        # theta <- theta * (1 - lr*ratio*wd) - lr*ratio*scale * m / denom   (exact algebra)
        if ratios is None:
            if weight_decay != 0.0:
                torch._foreach_mul_(theta, 1.0 - lr * weight_decay)
            torch._foreach_addcdiv_(theta, exp_avgs, denom, [-lr * s for s in scale])
        elif ratios.device.type == "cpu":
            # On the CPU a host read is free: use the fast scalar-list overloads.
            rs = ratios.tolist()
            if weight_decay != 0.0:
                torch._foreach_mul_(theta, [1.0 - lr * weight_decay * q for q in rs])
            torch._foreach_addcdiv_(
                theta, exp_avgs, denom, [-lr * q * s for q, s in zip(rs, scale)]
            )
        else:
            # On an accelerator, keep the ratios on the device: fold them into the
            # denominator as 0-d tensors (no host synchronisation).
            dtype = exp_avgs[0].dtype
            coef = ratios.to(dtype) * torch.tensor(
                [-lr * s for s in scale], dtype=dtype, device=ratios.device
            )
            torch._foreach_div_(denom, list(coef.unbind(0)))
            if weight_decay != 0.0:
                shrink = 1.0 - (lr * weight_decay) * ratios.to(dtype)
                torch._foreach_mul_(theta, list(shrink.unbind(0)))
            torch._foreach_addcdiv_(theta, exp_avgs, denom)
        for p, t in zip(params, theta):  # low-precision parameters: one rounding
            if t is not p:
                p.copy_(t)

    def e_transform(
        self, grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
    ) -> list[Tensor]:
        g_tilde = explore_(in_state_dtype(grads, diff_carries), diff_carries, b1=b1, alpha=alpha)
        return [o if o.dtype == g.dtype else o.to(g.dtype) for o, g in zip(g_tilde, grads)]


FOREACH = Foreach()
