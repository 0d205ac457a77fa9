"""What every implementation of the ALTO / Lamb / E step shares: the formulas'
coefficients, state dtypes, norms, bias corrections and the trust ratio.

Kept apart from the implementations so that none of them has to import another
to reach a helper, and so that each formula has exactly one written form here:

* E's gradient transform (the memory-lean rewrite of a_k, see docs/optimizer.md)::

      g~ = g + alpha * (c + (1-b1) g) = s g + alpha c,   s = 1 + alpha (1-b1)
      c <- b1 c + q g,                                   q = -(1-b1)^2

  :func:`explore_coefficients` returns ``(s, q)``.
* Lamb's direction with the bias corrections folded into one denominator::

      r = m_hat / (sqrt(v_hat) + eps) + wd theta
        = scale * m / (sqrt(v) + eps * sqrt(1-b3^k)) + wd theta,
      scale = sqrt(1-b3^k) / (1-b2^k)

  :func:`bias_corrections` returns ``(scale, sqrt(1-b3^k))`` per tensor.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

TrustRatioForm = Literal["published", "paper"]


def explore_coefficients(b1: float, alpha: float) -> tuple[float, float]:
    """(s, q) of E's transform: g~ = s g + alpha c and c <- b1 c + q g."""
    return 1.0 + alpha * (1.0 - b1), -((1.0 - b1) ** 2)


def state_dtype(param: Tensor) -> torch.dtype:
    """fp32 states for fp32/bf16/fp16 parameters, fp64 for fp64 (complex64/128 for complex)."""
    return torch.promote_types(param.dtype, torch.float32)


def in_state_dtype(tensors: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    """The tensors themselves where dtypes match, state-dtype copies otherwise (bf16)."""
    return [t if t.dtype == s.dtype else t.to(s.dtype) for t, s in zip(tensors, like)]


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """Per-tensor L2 norms accumulated in at least float32 (float64 stays float64).

    Complex tensors are measured through their real view (|z|^2 = re^2 + im^2).
    """
    tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
    if any(t.dtype == torch.float64 for t in tensors):
        return [
            torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))
            for t in tensors
        ]
    return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))


def stack_on(tensors: list[Tensor], device: torch.device) -> Tensor:
    """torch.stack after moving stragglers to ``device``."""
    if any(t.device != device for t in tensors):
        tensors = [t.to(device) for t in tensors]
    return torch.stack(tensors)


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """L2 norm over all gradients as a 0-d float32 tensor, computed on the device."""
    device = grads[0].device
    per_tensor = [n.to(device=device, dtype=torch.float32) for n in norms(grads)]
    return torch.linalg.vector_norm(torch.stack(per_tensor))


def bias_corrections(steps: list[Tensor], b2: float, b3: float) -> tuple[list[float], list[float]]:
    """(sqrt(1-b3^k)/(1-b2^k), sqrt(1-b3^k)) per tensor; reads the (CPU) step counters."""
    ks = [float(s) for s in steps]
    sqrt_bc3 = [math.sqrt(1.0 - b3**k) for k in ks]
    scale = [q / (1.0 - b2**k) for q, k in zip(sqrt_bc3, ks)]
    return scale, sqrt_bc3


def trust_ratios(sq: Tensor, form: TrustRatioForm, eps2: float, eps3: float) -> Tensor:
    """Per-tensor trust ratios from the [N, 2] squared norms, on the device.

    published: ||theta|| / ||r||, and 1 when either norm is 0 (the authors' code).
    paper:     phi(||theta||) / (||r|| + eps2 * phi(||theta||)),  phi(x) = x + eps3.
    """
    w = sq[:, 0].sqrt()
    r = sq[:, 1].sqrt()
    if form == "published":
        return torch.where((w > 0) & (r > 0), w / r, torch.ones_like(w))
    phi = w + eps3
    return phi / (r + eps2 * phi)
