"""Float64 reference implementations written straight from the paper's equations.

Deliberately NOT the memory-lean rewrite used by the library: the reference keeps
a_k and g_{k-1} explicitly, exactly as Algorithm ALTO / the E adaptor state them,
so agreement with the library checks the rewrite as well as the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

F64 = torch.float64


@dataclass
class RefGroup:
    params: list[torch.Tensor]  # float64 tensors, updated in place
    lr: float
    betas: tuple[float, ...]
    eps: float
    weight_decay: float
    alpha: float = 0.0
    state: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = [
            {"k": 0, "a": torch.zeros_like(p), "g_prev": torch.zeros_like(p)} for p in self.params
        ]


def clip_coefficient(grads: list[torch.Tensor], max_norm: float | None) -> float:
    if max_norm is None:
        return 1.0
    total = math.sqrt(sum(float((g.to(F64) ** 2).sum()) for g in grads))
    return min(1.0, max_norm / (total + 1e-6))


def explore(st: dict, g: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """a_k = beta a_{k-1} + (1-beta)(g_k - g_{k-1});  return g_k + alpha a_k."""
    st["a"] = beta * st["a"] + (1 - beta) * (g - st["g_prev"])
    st["g_prev"] = g.clone()
    return g + alpha * st["a"]


class RefALTO:
    """ALTO (and Lamb with alpha = 0, b1 ignored) in float64."""

    def __init__(
        self,
        groups: list[RefGroup],
        ratio: str = "published",
        ratio_eps: tuple[float, float] = (1e-6, 1e-6),
        max_grad_norm: float | None = None,
    ) -> None:
        self.groups = groups
        self.ratio = ratio
        self.eps2, self.eps3 = ratio_eps
        self.max_grad_norm = max_grad_norm

    def trust_ratio(self, theta: torch.Tensor, r: torch.Tensor) -> float:
        w, u = float(theta.norm()), float(r.norm())
        if self.ratio == "published":
            return w / u if w > 0 and u > 0 else 1.0
        phi = w + self.eps3
        return phi / (u + self.eps2 * phi)

    def step(self, grads: list[list[torch.Tensor]]) -> None:
        coef = clip_coefficient([g for gs in grads for g in gs], self.max_grad_norm)
        for group, gs in zip(self.groups, grads):
            b1, b2, b3 = group.betas if len(group.betas) == 3 else (0.0, *group.betas)
            for p, g, st in zip(group.params, gs, group.state):
                g = g.to(F64) * coef
                st["k"] += 1
                k = st["k"]
                g_tilde = explore(st, g, b1, group.alpha)
                st["m"] = b2 * st.get("m", torch.zeros_like(p)) + (1 - b2) * g_tilde
                st["v"] = b3 * st.get("v", torch.zeros_like(p)) + (1 - b3) * g_tilde**2
                m_hat = st["m"] / (1 - b2**k)
                v_hat = st["v"] / (1 - b3**k)
                r = m_hat / (v_hat.sqrt() + group.eps) + group.weight_decay * p
                ratio = self.trust_ratio(p, r) if group.weight_decay != 0 else 1.0
                p.sub_(group.lr * ratio * r)


class RefE:
    """E(base) in float64 for base in {"adamw", "sgd"} (torch's documented equations)."""

    def __init__(
        self, groups: list[RefGroup], base: str, alpha: float, beta: float, **base_kw
    ) -> None:
        self.groups, self.base, self.alpha, self.beta, self.kw = groups, base, alpha, beta, base_kw

    def step(self, grads: list[list[torch.Tensor]]) -> None:
        for group, gs in zip(self.groups, grads):
            for p, g, st in zip(group.params, gs, group.state):
                g_tilde = explore(st, g.to(F64), self.beta, self.alpha)
                st["k"] += 1
                if self.base == "adamw":
                    self._adamw(group, p, g_tilde, st)
                else:
                    self._sgd(group, p, g_tilde, st)

    @staticmethod
    def _adamw(group: RefGroup, p: torch.Tensor, g: torch.Tensor, st: dict) -> None:
        b1, b2 = group.betas
        k = st["k"]
        p.mul_(1 - group.lr * group.weight_decay)
        st["m"] = b1 * st.get("m", torch.zeros_like(p)) + (1 - b1) * g
        st["v"] = b2 * st.get("v", torch.zeros_like(p)) + (1 - b2) * g**2
        m_hat = st["m"] / (1 - b1**k)
        v_hat = st["v"] / (1 - b2**k)
        p.sub_(group.lr * m_hat / (v_hat.sqrt() + group.eps))

    def _sgd(self, group: RefGroup, p: torch.Tensor, g: torch.Tensor, st: dict) -> None:
        momentum, dampening = self.kw["momentum"], self.kw.get("dampening", 0.0)
        d = g + group.weight_decay * p
        if "buf" not in st:
            st["buf"] = d.clone()
        else:
            st["buf"] = momentum * st["buf"] + (1 - dampening) * d
        p.sub_(group.lr * st["buf"])
