"""Single-tensor implementation: the readable reference, one tensor at a time.

ALTO = E then Lamb, literally: :func:`explore_` is E's gradient transform (what
``E`` feeds its base optimizer), :func:`lamb_moments_` and :func:`lamb_direction`
are Lamb's, and ALTO's phase 1 is the one followed by the other. The faster
implementations compute the same thing with fewer passes over memory; the
contract they all share is ``alto.optim._protocol``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alto.optim._common import explore_coefficients


def explore_(g: Tensor, c: Tensor, *, b1: float, alpha: float, out: Tensor | None = None) -> Tensor:
    """E: g~ = g + alpha a_k with a_k = c_k + (1-b1) g_k; then c_{k+1} = b1 c_k - (1-b1)^2 g_k.

    ``g`` and ``c`` in the same dtype (a tensor, or a block of one: the blocked
    path calls this per block); returns g~ in ``out`` or a new tensor, advances
    ``c`` in place.
    """
    s, q = explore_coefficients(b1, alpha)
    g_tilde = g * s if out is None else torch.mul(g, s, out=out)
    g_tilde.add_(c, alpha=alpha)
    c.mul_(b1).add_(g, alpha=q)
    return g_tilde


def explore(g: Tensor, c: Tensor, *, b1: float, alpha: float) -> tuple[Tensor, Tensor]:
    """E out of place (autograd sees every operation): returns (g~, c_{k+1})."""
    s, q = explore_coefficients(b1, alpha)
    return g * s + c * alpha, c * b1 + g * q


def lamb_moments_(m: Tensor, v: Tensor, g: Tensor, *, b2: float, b3: float) -> None:
    """Lamb's (Adam's) moments: m <- b2 m + (1-b2) g, v <- b3 v + (1-b3) g^2.

    m as a lerp towards g (one pass), as the foreach path does it too.
    """
    m.lerp_(g, 1.0 - b2)
    v.mul_(b3).addcmul_(g, g, value=1.0 - b3)


def lamb_direction(
    theta: Tensor, m: Tensor, v: Tensor, *, step: float, b2: float, b3: float, eps: float, wd: float
) -> Tensor:
    """Lamb's update direction r = m_hat / (sqrt(v_hat) + eps) + wd * theta."""
    m_hat = m / (1.0 - b2**step)
    v_hat = v / (1.0 - b3**step)
    r = m_hat / (v_hat.sqrt() + eps)
    if wd != 0.0:
        r.add_(theta, alpha=wd)
    return r


class Single:
    """The reference implementation (``foreach=False``)."""

    name = "single"
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
        rows: list[Tensor] = []
        for i, (p, grad, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
            step.add_(1.0)
            g = grad.to(m.dtype)
            if grad_scale is not None:
                g = g * grad_scale.to(m.dtype)
            # ALTO = E then Lamb:
            if diff_carries is not None:
                g = explore_(g, diff_carries[i], b1=b1, alpha=alpha)
            lamb_moments_(m, v, g, b2=b2, b3=b3)
            if with_norms:
                theta = p.to(m.dtype)
                r = lamb_direction(
                    theta, m, v, step=float(step), b2=b2, b3=b3, eps=eps, wd=weight_decay
                )
                pair = torch.stack([torch.linalg.vector_norm(theta), torch.linalg.vector_norm(r)])
                rows.append(pair.to(device=params[0].device, dtype=torch.float32))
        if not with_norms:
            return None
        return torch.stack(rows).square_()

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
        for i, (p, m, v, step) in enumerate(zip(params, exp_avgs, exp_avg_sqs, steps)):
            theta = p.to(m.dtype)
            r = lamb_direction(
                theta, m, v, step=float(step), b2=b2, b3=b3, eps=eps, wd=weight_decay
            )
            if ratios is None:
                theta.add_(r, alpha=-lr)
            else:
                theta.sub_(r * (lr * ratios[i].to(m.dtype)))
            if theta is not p:
                p.copy_(theta)

    def e_transform(
        self, grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
    ) -> list[Tensor]:
        out = []
        for g, c in zip(grads, diff_carries):
            g_tilde = explore_(g.to(c.dtype), c, b1=b1, alpha=alpha)
            out.append(g_tilde.to(g.dtype))
        return out


SINGLE = Single()
