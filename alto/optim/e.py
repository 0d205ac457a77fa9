"""E: the paper's adaptor that turns any torch optimizer into its "explorer" version.

E feeds the base optimizer g + alpha * a instead of g, where
a_k = beta a_{k-1} + (1-beta)(g_k - g_{k-1}). It keeps ONE buffer per parameter
(the carry c of the exact rewrite a_k = c_k + (1-beta) g_k,
c_{k+1} = beta c_k - (1-beta)^2 g_k) instead of a and g_{k-1}.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from alto.optim import _dispatch, _impl_chunked, _impl_foreach
from alto.optim import _validate as check
from alto.optim._base import NonFinitePolicy, global_grad_norm
from alto.optim._impl_foreach import state_dtype

CARRY_KEY = "diff_carry"


class E(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` (SGD, Adam, AdamW, RMSprop, Adagrad, Lamb, ...).

    * ``param_groups`` and ``defaults`` ARE the base optimizer's (same objects), so
      LR schedulers, ``add_param_group`` and group edits act on both.
    * ``step()`` replaces each ``p.grad`` by g + alpha*a for the base step, then puts
      the caller's gradient tensor back: after ``step()`` returns, ``p.grad`` is the
      gradient the caller computed.
    * ``state[p]`` holds only ``"diff_carry"`` (float32, float64 for float64
      parameters); the base keeps its own state.
    * ``state_dict()`` is the base's state dict with ``"diff_carry"`` added to each
      parameter's entry and E's hyperparameters under ``"e"``;
      ``load_state_dict()`` restores both.
    * Non-finite gradients (``on_nonfinite``): "skip" (default) calls neither the
      base step nor touches the buffers and counts ``skipped_steps``; "raise"
      skips then raises FloatingPointError; "unchecked" does not look.

    A closure, if given, is evaluated by E before the gradients are modified;
    optimizers that must re-evaluate it inside their step (LBFGS) are rejected.

    ``foreach``/``fused`` choose how g~ is built: fused=None uses the Triton
    transform of ``alto.fused`` when every parameter is on CUDA, and contiguous CPU
    tensors take a cache-blocked pass (both: one pass over g and c, and c advances
    before the base step); otherwise torch foreach ops (foreach=False: one tensor at
    a time), and c advances after the base step. ``implementation`` names the
    device-independent choice ("fused", "foreach" or "single").
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        alpha: float = -5.0,
        beta: float = 0.99,
        *,
        on_nonfinite: NonFinitePolicy = "skip",
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer instance (e.g. "
                f"torch.optim.AdamW(model.parameters())), got {type(base_optimizer).__name__}"
            )
        if isinstance(base_optimizer, E):
            raise ValueError("base_optimizer is already an E; wrap the inner optimizer once")
        if isinstance(base_optimizer, torch.optim.LBFGS):
            raise ValueError(
                "base_optimizer LBFGS re-evaluates its closure inside step(); E cannot "
                "adapt it (it supports optimizers whose step reads p.grad once)"
            )
        self.beta = check.beta("beta", beta)
        self.alpha = check.alpha_for("alpha", alpha, self.beta, "beta")
        self.on_nonfinite = check.choice(
            "on_nonfinite", on_nonfinite, ("skip", "raise", "unchecked")
        )
        self.foreach = check.optional_bool("foreach", foreach)
        self.fused = check.optional_bool("fused", fused)
        if fused and foreach:
            raise ValueError("foreach=True and fused=True cannot both be set; choose one")
        self.base = base_optimizer
        # What torch.optim.Optimizer.__init__ sets up, minus the param groups, which
        # are the base's (see the property below).
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self._warned_capturable_if_run_uncaptured = True
        self.skipped_steps = 0
        self.last_step_skipped = False
        self._resolve_transform()

    def _resolve_transform(self) -> None:
        """Pick the fused Triton transform (CUDA) or the torch one, as ALTO does."""
        params = [p for g in self.param_groups for p in g["params"]]
        fused = False if self.foreach is not None else self.fused
        self._fused_transform = _dispatch.resolve_e_transform(fused, params)
        self.implementation = (
            "fused" if self._fused_transform else ("single" if self.foreach is False else "foreach")
        )

    # Shared with the base: always read through, so a base.load_state_dict (which
    # builds a new list) cannot split E from its base.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base.param_groups = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.base.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the group to the base optimizer (and hence to E)."""
        self.base.add_param_group(param_group)
        self._resolve_transform()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"E(alpha={self.alpha}, beta={self.beta}, base={self.base!r})"

    # ------------------------------------------------------------------- step
    def _carry(self, p: Tensor) -> Tensor:
        st = self.state[p]
        if CARRY_KEY not in st:
            st[CARRY_KEY] = torch.zeros_like(
                p, dtype=state_dtype(p), memory_format=torch.preserve_format
            )
        return st[CARRY_KEY]

    def _collect(self) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param_groups[{gi}]['params'][{pi}]"
                check.dense_grad(p, where)
                check.float_param(p, where)
                params.append(p)
                grads.append(p.grad)
        return params, grads

    def _explored_grads(self, grads: list[Tensor], carries: list[Tensor]) -> list[Tensor]:
        """g~ = g + alpha a_k = (1 + alpha(1-beta)) g + alpha c_k, as new tensors."""
        g = [x if x.dtype == c.dtype else x.to(c.dtype) for x, c in zip(grads, carries)]
        s = 1.0 + self.alpha * (1.0 - self.beta)
        if self.foreach is False:
            out = [gi * s + self.alpha * ci for gi, ci in zip(g, carries)]
        else:
            out = torch._foreach_mul(g, s)
            torch._foreach_add_(out, carries, alpha=self.alpha)
        return [o if o.dtype == x.dtype else o.to(x.dtype) for o, x in zip(out, grads)]

    def _advance_carries(self, grads: list[Tensor], carries: list[Tensor]) -> None:
        """c_{k+1} = beta c_k - (1-beta)^2 g_k."""
        g = [x if x.dtype == c.dtype else x.to(c.dtype) for x, c in zip(grads, carries)]
        w = -((1.0 - self.beta) ** 2)
        if self.foreach is False:
            for c, gi in zip(carries, g):
                c.mul_(self.beta).add_(gi, alpha=w)
        else:
            torch._foreach_mul_(carries, self.beta)
            torch._foreach_add_(carries, g, alpha=w)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate the closure (if any), then run the base step on g + alpha*a."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, grads = self._collect()
        self.last_step_skipped = False
        checked = bool(grads) and self.on_nonfinite != "unchecked"
        if checked and not bool(torch.isfinite(global_grad_norm(grads))):  # one host read
            self.skipped_steps += 1
            self.last_step_skipped = True
            if self.on_nonfinite == "raise":
                raise FloatingPointError(
                    "non-finite gradient; E skipped the step, the base optimizer was "
                    "not called and no state changed (on_nonfinite='raise')"
                )
            return loss
        carries = [self._carry(p) for p in params]
        # One pass over g and c that also advances c (before the base step), by the
        # Triton kernel on CUDA or cache-blocked on the CPU; else two foreach passes.
        advanced = True
        if self._fused_transform is not None:
            explored = [torch.empty_like(g) for g in grads]
            self._fused_transform(grads, carries, explored, b1=self.beta, alpha=self.alpha)
        elif (
            self.foreach is not False
            and _impl_foreach.CPU_BLOCKED
            and _impl_chunked.applicable(grads, carries)
        ):
            explored = _impl_chunked.e_transform(grads, carries, b1=self.beta, alpha=self.alpha)
        else:
            explored = self._explored_grads(grads, carries)
            advanced = False
        for p, g in zip(params, explored):
            p.grad = g
        try:
            self.base.step()
        finally:
            for p, g in zip(params, grads):
                p.grad = g
        if not advanced:
            # Advanced after the base step succeeded: a failing base leaves E intact.
            self._advance_carries(grads, carries)
        return loss

    # ------------------------------------------------------------ checkpoints
    def _flat_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The base's state dict plus E's carries (per-param "diff_carry") and "e"."""
        sd = self.base.state_dict()
        state = dict(sd["state"])
        for index, p in enumerate(self._flat_params()):
            carry = self.state.get(p, {}).get(CARRY_KEY)
            if carry is None:
                continue
            entry = dict(state.get(index, {}))
            if CARRY_KEY in entry:
                raise ValueError(
                    f"the base optimizer already stores a state key {CARRY_KEY!r}; "
                    "E cannot add its own without a clash"
                )
            entry[CARRY_KEY] = carry
            state[index] = entry
        out = dict(sd)
        out["state"] = state
        out["e"] = {"alpha": self.alpha, "beta": self.beta}
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base's state and E's carries from ``state_dict()``'s output."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise TypeError("state_dict must be a dict produced by E.state_dict()")
        sd = dict(state_dict)
        meta = sd.pop("e", None)
        base_state, carries = {}, {}
        for index, entry in sd["state"].items():
            entry = dict(entry)
            if CARRY_KEY in entry:
                carries[index] = entry.pop(CARRY_KEY)
            if entry:
                base_state[index] = entry
        sd["state"] = base_state
        self.base.load_state_dict(sd)
        params = self._flat_params()
        self.state = defaultdict(dict)
        for index, carry in carries.items():
            p = params[index]
            self.state[p][CARRY_KEY] = carry.to(device=p.device, dtype=state_dtype(p)).clone()
        if meta is not None:
            self.beta = check.beta("state_dict['e']['beta']", meta["beta"])
            self.alpha = check.alpha_for(
                "state_dict['e']['alpha']", meta["alpha"], self.beta, "beta"
            )
