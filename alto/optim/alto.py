"""ALTO: Lamb driven by g + alpha * EMA(g_k - g_{k-1}) (arXiv 2510.27153)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from alto import defaults as D
from alto.optim import _validate as check
from alto.optim._base import NonFinitePolicy, NormReducer, TrustRatioAdam, TrustRatioForm


class ALTO(TrustRatioAdam):
    """The ALTO optimizer, computed as the authors' published code computes it.

    Per parameter, with g the gradient (optionally clipped, see ``max_grad_norm``)::

        a_k = b1 a_{k-1} + (1-b1)(g_k - g_{k-1})       a_0 = 0, g_0 = 0
        g~  = g_k + alpha a_k
        m   = b2 m + (1-b2) g~ ;   v = b3 v + (1-b3) g~^2
        r   = m/(1-b2^k) / (sqrt(v/(1-b3^k)) + eps) + weight_decay * theta
        theta -= lr * ratio * r

    ``a`` and ``g_{k-1}`` are never stored: one buffer ``c`` with
    ``a_k = c_k + (1-b1) g_k`` and ``c_{k+1} = b1 c_k - (1-b1)^2 g_k`` carries the same
    information, so the state is exactly three tensors of the parameter's shape.

    Trust ratio, per tensor, only in groups with ``weight_decay != 0`` (the
    published rule; groups with ``weight_decay == 0``, e.g. norms and biases, take a
    plain step with ratio 1): ``trust_ratio="published"`` is ||theta||/||r|| (1 when
    either norm is 0); ``trust_ratio="paper"`` is phi(||theta||) / (||r|| +
    eps2 phi(||theta||)) with phi(x) = x + eps3 and ``trust_ratio_eps=(eps2, eps3)``.

    State per parameter (fixed keys; checkpoint code depends on them):
    ``step`` (0-d float32, on the CPU unless the fused path keeps it on the device),
    ``exp_avg`` (m), ``exp_avg_sq`` (v), ``diff_carry`` (c). States are float32 for
    fp32/bf16/fp16 parameters and float64 for float64 parameters.

    ALTO is E's gradient transform followed by Lamb (``alto.optim._impl_single``
    spells it out); defaults and bounds come from ``alto.defaults``.

    Args:
        params: parameters or parameter groups (dicts may override lr, betas, alpha,
            eps, weight_decay, foreach, fused, maximize).
        lr: learning rate, >= 0: a number, or a one-element tensor (kept as given,
            so a scheduler or a captured graph can change it in place).
        betas: (b1, b2, b3), each in [0, 1): b1 for the gradient-difference EMA, b2
            and b3 for the Adam moments. Default: the paper's large-batch setting.
        alpha: acceleration factor; must satisfy |alpha| < 1/(1-b1).
        eps: > 0, added to sqrt(v_hat).
        weight_decay: >= 0, decoupled (inside r, so it is scaled by the ratio).
        trust_ratio: "published" (default) or "paper".
        trust_ratio_eps: (eps2, eps3) of the paper form; both >= 0.
        max_grad_norm: None (default: no clipping; the published code clips to 1.0
            inside step(), here it is explicit) or > 0 to clip the global gradient
            norm before the step. p.grad is never modified.
        on_nonfinite: "skip" (default), "raise" or "unchecked"; see ``step``.
        foreach: None (the fastest path for each group's tensors: fused on CUDA,
            cache-blocked on the CPU, else foreach), True (torch's multi-tensor
            ops) or False (single-tensor reference). ``implementation`` names
            what runs; see ``alto.optim._dispatch``.
        fused: None (fused Triton path when all of a group's params are on CUDA
            and ``alto.fused`` loads), True (require it; a ValueError says why it
            cannot run) or False.
        maximize: maximise the objective instead (the step uses -g).
        norm_reducer: called exactly once per step, as ``sq = norm_reducer(sq,
            params)``, with the float32 [N, 2] tensor of squared partial norms
            ``[||theta||^2, ||r||^2]`` of the N trust-ratio parameters that have a
            gradient (param_groups order), also when N == 0. Sharded or
            tensor-parallel training sums the partial norms across ranks here.
        state_dtype: None (fp32 m, v, c; fp64 for fp64 params) or torch.bfloat16 to
            store m, v, c in bf16 (half the state memory; the fused path computes in
            fp32 and rounds once on store). bf16 needs the fused implementation.
    """

    _n_betas = 3
    _uses_carry = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = D.ALTO.lr,
        betas: tuple[float, float, float] = D.ALTO.betas,
        alpha: float = D.ALTO.alpha,
        eps: float = D.ALTO.eps,
        weight_decay: float = D.ALTO.weight_decay,
        *,
        trust_ratio: TrustRatioForm = D.ALTO.trust_ratio,  # type: ignore[assignment]
        trust_ratio_eps: tuple[float, float] = D.ALTO.trust_ratio_eps,
        max_grad_norm: float | None = None,
        on_nonfinite: NonFinitePolicy = D.ALTO.on_nonfinite,  # type: ignore[assignment]
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
        norm_reducer: NormReducer | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, alpha=alpha, eps=eps, weight_decay=weight_decay)
        super().__init__(
            params,
            defaults,
            trust_ratio=trust_ratio,
            trust_ratio_eps=trust_ratio_eps,
            max_grad_norm=max_grad_norm,
            on_nonfinite=on_nonfinite,
            foreach=foreach,
            fused=fused,
            maximize=maximize,
            norm_reducer=norm_reducer,
            state_dtype=state_dtype,
        )

    def _check_group(self, group: dict[str, Any], name: Callable[[str], str]) -> None:
        check.learning_rate(name("lr"), group["lr"])
        b = check.betas(name("betas"), group["betas"], 3)
        check.alpha_for(name("alpha"), group["alpha"], b[0], name("betas") + "[0]")
        check.positive(name("eps"), group["eps"])
        check.non_negative(name("weight_decay"), group["weight_decay"])
