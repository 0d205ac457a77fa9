"""Lamb with bias correction and the same trust-ratio rule as ALTO.

It exists so that E(Lamb) and ALTO can be checked against each other, and as the
paper's large-batch baseline. It shares ALTO's step code (``TrustRatioAdam``), so
ALTO with alpha = 0 and Lamb compute the very same operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from alto import defaults as D
from alto.optim import _validate as check
from alto.optim._base import NonFinitePolicy, NormReducer, TrustRatioAdam, TrustRatioForm


class Lamb(TrustRatioAdam):
    """Layer-wise adaptive Adam (You et al.), as ALTO computes it without the a-term.

    ``m = b2 m + (1-b2) g``, ``v = b3 v + (1-b3) g^2``,
    ``r = m_hat/(sqrt(v_hat)+eps) + weight_decay*theta``, ``theta -= lr*ratio*r`` with
    the trust ratio in groups with ``weight_decay != 0`` only (ratio 1 elsewhere).
    ``betas`` are ``(b2, b3)``. State per parameter: ``step``, ``exp_avg``,
    ``exp_avg_sq``. The keyword options mean the same as in :class:`alto.ALTO`.
    """

    _n_betas = 2
    _uses_carry = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = D.LAMB.lr,
        betas: tuple[float, float] = D.LAMB.betas,
        eps: float = D.LAMB.eps,
        weight_decay: float = D.LAMB.weight_decay,
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
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
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
        check.betas(name("betas"), group["betas"], 2)
        check.positive(name("eps"), group["eps"])
        check.non_negative(name("weight_decay"), group["weight_decay"])
