"""E: the paper's adaptor that turns any torch optimizer into its "explorer" version.

E feeds the base optimizer g + alpha * a instead of g, where
a_k = beta a_{k-1} + (1-beta)(g_k - g_{k-1}). It keeps ONE buffer per parameter
(the carry c of the exact rewrite a_k = c_k + (1-beta) g_k,
c_{k+1} = beta c_k - (1-beta)^2 g_k) instead of a and g_{k-1}.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from alto import defaults as D
from alto.optim import _impl_single
from alto.optim import _validate as check
from alto.optim._base import NonFinitePolicy
from alto.optim._common import global_grad_norm, state_dtype
from alto.optim._dispatch import GroupDispatch, summary
from alto.optim._protocol import Implementation

CARRY_KEY = "diff_carry"


class E(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` (SGD, Adam, AdamW, RMSprop, Adagrad, Lamb, ...).

    * ``param_groups`` and ``defaults`` ARE the base optimizer's (same objects), so
      LR schedulers, ``add_param_group`` and group edits act on both.
    * ``step()`` replaces each ``p.grad`` by g + alpha*a for the base step, then puts
      the caller's gradient tensor back: after ``step()`` returns, ``p.grad`` is the
      gradient the caller computed. The global optimizer step hooks fire once per
      ``E.step()`` (for E), the base's own step hooks once for its step.
    * ``state[p]`` holds only ``"diff_carry"`` (float32, float64 for float64
      parameters, complex for complex ones); the base keeps its own state.
    * ``state_dict()`` is the base's state dict with ``"diff_carry"`` added to each
      parameter's entry and E's hyperparameters under ``"e"``;
      ``load_state_dict()`` restores both. Both run the hooks registered on E.
    * Non-finite gradients (``on_nonfinite``): "skip" (default) calls neither the
      base step nor touches the buffers and counts ``skipped_steps``; "raise"
      skips then raises FloatingPointError; "unchecked" does not look.
    * A base built with ``differentiable=True`` gets a g~ that autograd can see
      through (computed out of place, with grad mode on, one tensor at a time).

    A closure, if given, is evaluated by E before the gradients are modified;
    optimizers that must re-evaluate it inside their step (LBFGS) are rejected.

    ``foreach``/``fused`` choose how g~ is built, per parameter group, as for ALTO
    (``alto.optim._dispatch``; the groups' own ``foreach``/``fused`` keys are the
    base's settings and configure the base). ``implementation`` names what runs
    ("fused", "blocked", "foreach" or "single"). Every path advances c in the same
    pass that builds g~, before the base step.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        alpha: float = D.E.alpha,
        beta: float = D.E.b1,
        *,
        on_nonfinite: NonFinitePolicy = D.ALTO.on_nonfinite,  # type: ignore[assignment]
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
        self.on_nonfinite = check.choice("on_nonfinite", on_nonfinite, D.NONFINITE_POLICIES)
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
        self._dispatch = GroupDispatch(None, self.fused)
        self._check_params()
        for gi, group in enumerate(self.param_groups):
            self._impl(gi, group)  # resolve now: a bad fused=True fails here

    # ------------------------------------------------------- implementation
    def _differentiable(self) -> bool:
        return bool(self.base.defaults.get("differentiable", False))

    def _impl(self, index: int, group: dict[str, Any]) -> Implementation:
        # E's own flags: a group's "foreach"/"fused" keys are the base's settings.
        flags = (self.foreach, self.fused, self._differentiable())
        return self._dispatch.for_group(index, group, flags)

    @property
    def implementations(self) -> list[str]:
        """What builds g~ for each parameter group: "single", "foreach", "blocked", "fused"."""
        return [self._impl(i, g).name for i, g in enumerate(self.param_groups)]

    @property
    def implementation(self) -> str:
        """One name, or the groups' names joined by "+" when they differ."""
        return summary(self.implementations)

    def _check_params(self) -> None:
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                check.float_or_complex_param(p, f"param_groups[{gi}]['params'][{pi}]")

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
        index = len(self.param_groups) - 1
        try:
            self._check_params()
            self._impl(index, self.param_groups[index])
        except Exception:
            self.param_groups.pop()
            raise

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_dispatch" not in self.__dict__:
            self._dispatch = GroupDispatch(None, self.__dict__.get("fused"))
        self.__dict__.pop("_fused_transform", None)
        self._patch_step_function()

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

    def _collect(self) -> list[tuple[Any, list[Tensor], list[Tensor]]]:
        plan = []
        for gi, group in enumerate(self.param_groups):
            params, grads = [], []
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param_groups[{gi}]['params'][{pi}]"
                check.dense_grad(p, where)
                check.float_or_complex_param(p, where)
                params.append(p)
                grads.append(p.grad)
            if params:
                plan.append((self._impl(gi, group), params, grads))
        return plan

    def _explore(
        self, impl: Implementation, params: list[Tensor], grads: list[Tensor]
    ) -> list[Tensor]:
        """g~ for one group; advances the carries."""
        carries = [self._carry(p) for p in params]
        if not self._differentiable():
            return impl.e_transform(grads, carries, b1=self.beta, alpha=self.alpha)
        out = []
        with torch.enable_grad():
            for p, g, c in zip(params, grads, carries):
                g_tilde, c_next = _impl_single.explore(
                    g.to(c.dtype), c, b1=self.beta, alpha=self.alpha
                )
                self.state[p][CARRY_KEY] = c_next
                out.append(g_tilde.to(g.dtype))
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate the closure (if any), then run the base step on g + alpha*a."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._collect()
        grads = [g for _, _, gs in plan for g in gs]
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
        swapped: list[tuple[Tensor, Tensor]] = []
        for impl, params, group_grads in plan:
            explored = self._explore(impl, params, group_grads)
            swapped.extend(zip(params, group_grads))
            for p, g in zip(params, explored):
                p.grad = g
        try:
            self._base_step()
        finally:
            for p, g in swapped:
                p.grad = g
        return loss

    def _base_step(self) -> None:
        """The base's step with its own step hooks but not the global ones, which
        already ran once for this E.step() (torch wraps every optimizer class's step
        in a function that runs the global hooks, then the instance's)."""
        base = self.base
        hooked = type(base).step
        raw = getattr(hooked, "__wrapped__", None)
        if raw is None or not getattr(hooked, "hooked", False):
            base.step()
            return
        args: tuple[Any, ...] = (base,)
        kwargs: dict[str, Any] = {}
        for pre_hook in base._optimizer_step_pre_hooks.values():
            result = pre_hook(base, args, kwargs)
            if result is not None:
                args, kwargs = result
        raw(*args, **kwargs)
        base._optimizer_step_code()
        for post_hook in base._optimizer_step_post_hooks.values():
            post_hook(base, args, kwargs)

    # ------------------------------------------------------------ checkpoints
    def _flat_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """The base's state dict plus E's carries (per-param "diff_carry") and "e".

        Runs the state-dict hooks registered on E (the base's run inside the base's
        own ``state_dict``)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.base.state_dict()
        state = dict(sd["state"])
        ids = chain.from_iterable(g["params"] for g in sd["param_groups"])
        for index, p in zip(ids, self._flat_params()):
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
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base's state and E's carries from ``state_dict()``'s output,
        running the load-state-dict hooks registered on E."""
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise TypeError("state_dict must be a dict produced by E.state_dict()")
        sd = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, sd)
            if result is not None:
                sd = dict(result)
        meta = sd.pop("e", None)
        base_state, carries = {}, {}
        for index, entry in sd["state"].items():
            entry = dict(entry)
            if CARRY_KEY in entry:
                carries[index] = entry.pop(CARRY_KEY)
            if entry:
                base_state[index] = entry
        sd["state"] = base_state
        ids = list(chain.from_iterable(g["params"] for g in sd["param_groups"]))
        self.base.load_state_dict(sd)
        by_id = dict(zip(ids, self._flat_params()))
        self.state = defaultdict(dict)
        for index, carry in carries.items():
            p = by_id[index]
            c = carry.to(device=p.device, dtype=state_dtype(p))
            self.state[p][CARRY_KEY] = c.clone() if c is carry else c
        if meta is not None:
            self.beta = check.beta("state_dict['e']['beta']", meta["beta"])
            self.alpha = check.alpha_for(
                "state_dict['e']['alpha']", meta["alpha"], self.beta, "beta"
            )
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
