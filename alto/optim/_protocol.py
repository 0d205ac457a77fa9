"""The interface every implementation of the step implements (single, foreach,
blocked, fused), and the exact semantics the optimizers rely on.

A step runs in two phases so that the per-tensor norms of the trust ratio can be
reduced across ranks (sharded or tensor-parallel parameters) with ONE collective
per step, between the phases. Lists are one parameter group's tensors, aligned,
of equal length n >= 1.

``moments_and_sq_norms(params, grads, exp_avgs, exp_avg_sqs, diff_carries, steps, *,
b1, b2, b3, alpha, eps, weight_decay, with_norms, grad_scale, workspace)``
    Phase 1. ``grads`` are the caller's gradients (any floating dtype; never
    modified). ``grad_scale`` is None or a 0-d float32 tensor on the parameters'
    device; when given the gradient used is ``grad * grad_scale`` (global clipping,
    and -1 for ``maximize``). ``diff_carries`` is the list of ``c`` buffers, or None
    for Lamb (then b1 and alpha are ignored and g~ = g). ``steps`` are 0-d float32
    step counters; 1 is added to each BEFORE use. In order, per tensor, in the
    state dtype (fp32, or fp64 for fp64 parameters) -- ALTO = E then Lamb::

        g~ = g + alpha (c + (1-b1) g) ;  c <- b1 c - (1-b1)^2 g      (E)
        m <- b2 m + (1-b2) g~ ;  v <- b3 v + (1-b3) g~^2               (Lamb)

    Returns, if ``with_norms``, a float32 [n, 2] tensor on ``params[0].device``
    whose row i is ``[||theta_i||^2, ||r_i||^2]`` with
    ``r = m/(1-b2^k) / (sqrt(v/(1-b3^k)) + eps) + weight_decay * theta``; else None.
    No host synchronisation with an accelerator.

``apply_update(params, exp_avgs, exp_avg_sqs, steps, *, lr, b2, b3, eps, weight_decay,
ratios, workspace)``
    Phase 2, after phase 1 of every group. Recomputes r from m, v and theta and
    sets ``theta <- theta - lr * ratio_i * r``; ``ratios`` is None (ratio 1) or a
    float32 [n] tensor on the parameters' device. Low-precision parameters are
    updated in the state dtype and rounded once when written back. ``lr`` is a
    float, or a one-element tensor on the parameters' device where
    ``tensor_lr`` is True.

``workspace`` is the same fresh dict for phase 1 and phase 2 of one group in one
step: an implementation may hand work from one phase to the other through it.

``e_transform(grads, diff_carries, *, b1, alpha) -> list[Tensor]``
    E's gradient replacement: new tensors ``g + alpha (c + (1-b1) g)`` in the
    gradients' dtypes, and ``c <- b1 c - (1-b1)^2 g`` in place, in one call.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

#: The names an implementation may have, in the order the dispatcher prefers them.
NAMES = ("fused", "blocked", "foreach", "single")


@runtime_checkable
class Implementation(Protocol):
    """One way of computing the ALTO / Lamb step and E's transform."""

    #: "single", "foreach", "blocked" or "fused": what ``opt.implementation`` reports.
    name: str
    #: Where ``state["step"]`` lives: the parameters' device (True) or the CPU.
    step_on_param_device: bool
    #: Whether ``apply_update`` takes ``lr`` as a device tensor (else a float).
    tensor_lr: bool

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
    ) -> Tensor | None: ...

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
    ) -> None: ...

    def e_transform(
        self, grads: list[Tensor], diff_carries: list[Tensor], *, b1: float, alpha: float
    ) -> list[Tensor]: ...
