"""Single-tensor implementation of the ALTO / Lamb step: the readable reference.

Same two functions, signatures and semantics as ``alto.optim._impl_foreach`` (its
module docstring is the contract). Written one tensor at a time with the
equations in their textbook order, so a reader can check it against the paper;
the foreach path is the fast one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alto.optim._impl_foreach import state_dtype

STEP_ON_PARAM_DEVICE = False

__all__ = ["STEP_ON_PARAM_DEVICE", "apply_update", "moments_and_sq_norms", "state_dtype"]


def _update_direction(
    theta: Tensor, m: Tensor, v: Tensor, step: float, b2: float, b3: float, eps: float, wd: float
) -> Tensor:
    """r = m_hat / (sqrt(v_hat) + eps) + wd * theta."""
    m_hat = m / (1.0 - b2**step)
    v_hat = v / (1.0 - b3**step)
    r = m_hat / (v_hat.sqrt() + eps)
    if wd != 0.0:
        r.add_(theta, alpha=wd)
    return r


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
    """Phase 1: update c, m, v; return [||theta||^2, ||r||^2] rows if ``with_norms``."""
    rows: list[Tensor] = []
    for i, (p, grad, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
        step.add_(1.0)
        g = grad.to(m.dtype)
        if grad_scale is not None:
            g = g * grad_scale.to(m.dtype)
        if diff_carries is not None:
            c = diff_carries[i]
            a = c + (1.0 - b1) * g  # a_k = b1 a_{k-1} + (1-b1)(g_k - g_{k-1})
            g_tilde = g + alpha * a
            c.mul_(b1).add_(g, alpha=-((1.0 - b1) ** 2))  # c_{k+1}
        else:
            g_tilde = g
        m.mul_(b2).add_(g_tilde, alpha=1.0 - b2)
        v.mul_(b3).addcmul_(g_tilde, g_tilde, value=1.0 - b3)
        if with_norms:
            theta = p.to(m.dtype)
            r = _update_direction(theta, m, v, float(step), b2, b3, eps, weight_decay)
            pair = torch.stack([torch.linalg.vector_norm(theta), torch.linalg.vector_norm(r)])
            rows.append(pair.to(device=params[0].device, dtype=torch.float32))
    if not with_norms:
        return None
    return torch.stack(rows).square_()


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
    """Phase 2: theta <- theta - lr * ratio * r, with r recomputed from m, v, theta."""
    for i, (p, m, v, step) in enumerate(zip(params, exp_avgs, exp_avg_sqs, steps)):
        theta = p.to(m.dtype)
        r = _update_direction(theta, m, v, float(step), b2, b3, eps, weight_decay)
        if ratios is None:
            theta.add_(r, alpha=-lr)
        else:
            theta.sub_(r * (lr * ratios[i].to(m.dtype)))
        if theta is not p:
            p.copy_(theta)
