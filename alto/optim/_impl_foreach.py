"""Multi-tensor (``torch._foreach_*``) implementation of the ALTO / Lamb step.

This is the default path. A step is split in two phases so that the per-tensor
norms of the trust ratio can be reduced across ranks (sharded or tensor-parallel
parameters) with ONE collective per step, between the phases.

The two functions below form the implementation interface; ``_impl_single`` and
``alto.fused`` implement exactly the same signatures and semantics.

``moments_and_sq_norms(params, grads, exp_avgs, exp_avg_sqs, diff_carries, steps, *,
b1, b2, b3, alpha, eps, weight_decay, with_norms, grad_scale=None) -> Tensor | None``

    Phase 1 for one parameter group. All lists have equal length n >= 1 and are
    aligned. ``grads`` are the caller's gradients (any floating dtype; never
    modified). ``grad_scale`` is None or a 0-d float32 tensor on the parameters'
    device; when given, the gradient used is ``grad * grad_scale`` (global
    clipping). ``diff_carries`` is the list of ``c`` buffers, or None for Lamb (then
    ``b1`` and ``alpha`` are ignored and g~ = g). ``steps`` are 0-d float32 step
    counters; this function adds 1 to each BEFORE using it, so bias corrections use
    k = new step. In order, per tensor (state dtype fp32, or fp64 for fp64 params):

        g~ = g + alpha * (c + (1-b1) g)      (a_k = c_k + (1-b1) g_k)
        c <- b1 c - (1-b1)^2 g
        m <- b2 m + (1-b2) g~ ;  v <- b3 v + (1-b3) g~^2

    If ``with_norms``: returns a float32 tensor [n, 2] on ``params[0].device``
    whose row i is ``[||theta_i||^2, ||r_i||^2]`` with
    ``r = m/(1-b2^k) / (sqrt(v/(1-b3^k)) + eps) + weight_decay * theta``; else None.
    No host synchronisation with the device.

``apply_update(params, exp_avgs, exp_avg_sqs, steps, *, lr, b2, b3, eps, weight_decay,
ratios) -> None``

    Phase 2 for the same group, after phase 1 for every group. Recomputes r from
    m, v and theta (no stored update buffer) and sets
    ``theta <- theta - lr * ratio_i * r`` where ``ratios`` is None (ratio 1 for all)
    or a float32 tensor [n] on the parameters' device. Non-fp32 parameters (bf16,
    fp16) are updated in the state dtype and rounded once when written back.

``STEP_ON_PARAM_DEVICE`` says where the implementation wants ``state["step"]``
(False: on the CPU, so bias corrections never read the device).

Optional extension: an implementation that sets ``USES_WORKSPACE = True`` also
accepts ``workspace: dict | None`` in both functions; the optimizer passes the same
fresh dict per group to phase 1 and phase 2 of one step. This module uses it to
hand the Adam denominators sqrt(v) + eps' from phase 1 (which needs them for the
norms anyway, in the buffer that held g~) to phase 2 instead of recomputing them:
two passes fewer per step and no extra peak memory (phase 1 already holds the
denominators and r together). Implementations without the flag (alto.fused) are
called without the keyword.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alto.optim import _impl_chunked

STEP_ON_PARAM_DEVICE = False
USES_WORKSPACE = True
#: Hand CPU groups of contiguous tensors to the cache-blocked ``_impl_chunked``
#: (same results up to rounding, about 3x less memory traffic on the CPU).
CPU_BLOCKED = True


def state_dtype(param: Tensor) -> torch.dtype:
    """fp32 states for fp32/bf16/fp16 parameters, fp64 states for fp64 parameters."""
    return torch.promote_types(param.dtype, torch.float32)


def _in_state_dtype(tensors: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    """Views where dtypes already match, fp32 copies otherwise (bf16 grads/params)."""
    return [t if t.dtype == s.dtype else t.to(s.dtype) for t, s in zip(tensors, like)]


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """Per-tensor L2 norms accumulated in at least float32 (float64 stays float64)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return [
            torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))
            for t in tensors
        ]
    return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))


def _stack(tensors: list[Tensor], device: torch.device) -> Tensor:
    if any(t.device != device for t in tensors):
        tensors = [t.to(device) for t in tensors]
    return torch.stack(tensors)


_bias_corrections = _impl_chunked.bias_corrections


def _denominators(
    exp_avg_sqs: list[Tensor], eps: float, sqrt_bc3: list[float], out: list[Tensor] | None = None
) -> list[Tensor]:
    """sqrt(v) + eps*sqrt(1-b3^k): the Adam denominator with the bias correction folded out.

    m_hat / (sqrt(v_hat) + eps) == (m * sqrt(bc3)/bc2) / (sqrt(v) + eps*sqrt(bc3)), which
    saves one full pass over v. ``out`` reuses dead buffers of the same shapes.
    """
    if out is None:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    else:
        torch.ops.aten._foreach_sqrt.out(exp_avg_sqs, out=out)
        denom = out
    torch._foreach_add_(denom, [eps * q for q in sqrt_bc3])
    return denom


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
    workspace: dict | None = None,
) -> Tensor | None:
    """Phase 1 (see the module docstring for the exact contract)."""
    if CPU_BLOCKED and _impl_chunked.applicable(params, grads, exp_avgs, exp_avg_sqs, diff_carries):
        return _impl_chunked.moments_and_sq_norms(
            params, grads, exp_avgs, exp_avg_sqs, diff_carries, steps, b1=b1, b2=b2, b3=b3,
            alpha=alpha, eps=eps, weight_decay=weight_decay, with_norms=with_norms,
            grad_scale=grad_scale,
        )  # fmt: skip
    torch._foreach_add_(steps, 1.0)
    g = _in_state_dtype(grads, exp_avgs)
    if grad_scale is not None:
        g = torch._foreach_mul(g, grad_scale.to(exp_avgs[0].dtype))

    spare: list[Tensor] | None = None  # a buffer of ours that is dead after v's update
    if diff_carries is not None:
        # g~ = (1 + alpha(1-b1)) g + alpha c_k, then c_{k+1} = b1 c_k - (1-b1)^2 g
        g_tilde = torch._foreach_mul(g, 1.0 + alpha * (1.0 - b1))
        torch._foreach_add_(g_tilde, diff_carries, alpha=alpha)
        torch._foreach_mul_(diff_carries, b1)
        torch._foreach_add_(diff_carries, g, alpha=-((1.0 - b1) ** 2))
        spare = g_tilde
    else:
        g_tilde = g
        if grad_scale is not None:
            spare = g_tilde

    torch._foreach_lerp_(exp_avgs, g_tilde, 1.0 - b2)
    torch._foreach_mul_(exp_avg_sqs, b3)
    torch._foreach_addcmul_(exp_avg_sqs, g_tilde, g_tilde, 1.0 - b3)
    del g_tilde, g

    if not with_norms and workspace is None:
        return None
    scale, sqrt_bc3 = _bias_corrections(steps, b2, b3)
    denom = _denominators(exp_avg_sqs, eps, sqrt_bc3, out=spare)
    del spare
    if workspace is not None:
        workspace["denom"] = denom
    if not with_norms:
        return None
    theta = _in_state_dtype(params, exp_avgs)
    if weight_decay != 0.0:
        r = torch._foreach_mul(theta, weight_decay)
        torch._foreach_addcdiv_(r, exp_avgs, denom, scale)
    else:
        r = torch._foreach_div(exp_avgs, denom)
        torch._foreach_mul_(r, scale)
    del denom
    device = params[0].device
    r_norms = norms(r)
    del r
    theta_norms = norms(theta)
    sq = torch.stack([_stack(theta_norms, device), _stack(r_norms, device)], dim=1)
    return sq.square_().to(torch.float32)


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
    workspace: dict | None = None,
) -> None:
    """Phase 2 (see the module docstring for the exact contract)."""
    if CPU_BLOCKED and _impl_chunked.applicable(params, exp_avgs, exp_avg_sqs):
        _impl_chunked.apply_update(
            params, exp_avgs, exp_avg_sqs, steps, lr=lr, b2=b2, b3=b3, eps=eps,
            weight_decay=weight_decay, ratios=ratios,
        )  # fmt: skip
        return
    scale, sqrt_bc3 = _bias_corrections(steps, b2, b3)
    theta = _in_state_dtype(params, exp_avgs)
    denom = None if workspace is None else workspace.pop("denom", None)
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
        torch._foreach_addcdiv_(theta, exp_avgs, denom, [-lr * q * s for q, s in zip(rs, scale)])
    else:
        # On an accelerator, keep the ratios on the device: fold them into the
        # denominator as 0-d tensors (no host synchronisation).
        coef = ratios.to(exp_avgs[0].dtype) * torch.tensor(
            [-lr * s for s in scale], dtype=exp_avgs[0].dtype, device=ratios.device
        )
        torch._foreach_div_(denom, list(coef.unbind(0)))
        if weight_decay != 0.0:
            shrink = 1.0 - (lr * weight_decay) * ratios.to(exp_avgs[0].dtype)
            torch._foreach_mul_(theta, list(shrink.unbind(0)))
        torch._foreach_addcdiv_(theta, exp_avgs, denom)
    _write_back(params, theta)


def _write_back(params: list[Tensor], theta: list[Tensor]) -> None:
    """Copy state-dtype copies of low-precision parameters back (one rounding)."""
    for p, t in zip(params, theta):
        if t is not p:
            p.copy_(t)
