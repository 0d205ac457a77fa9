"""The step machinery ALTO and Lamb share: Adam moments, layer-wise trust ratio.

Both are "bias-corrected Adam direction + decoupled weight decay, scaled per tensor
by ||theta|| / ||r||"; ALTO adds E's gradient-difference term in front (ALTO = E
then Lamb). Keeping one class means ALTO with alpha=0 and Lamb run literally the
same code, and every policy (clipping, maximize, non-finite gradients, the
distributed norm hook, the torch.optim contract: pickling, hooks, state dicts) is
written once. The arithmetic is the implementations' (``alto.optim._protocol``);
which one runs a group is decided in one place, ``alto.optim._dispatch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, Literal

import torch
from torch import Tensor

from alto import defaults as D
from alto.optim import _validate as check
from alto.optim._common import TrustRatioForm, global_grad_norm, state_dtype, trust_ratios
from alto.optim._dispatch import GroupDispatch, summary
from alto.optim._protocol import Implementation

NormReducer = Callable[[Tensor, list[Tensor]], Tensor]
NonFinitePolicy = Literal["skip", "raise", "unchecked"]

_STATE_KEYS = ("exp_avg", "exp_avg_sq", "diff_carry")
#: Instance attributes that are part of the optimizer (pickled, deep-copied).
_OPTIONS = (
    "trust_ratio",
    "trust_ratio_eps",
    "max_grad_norm",
    "on_nonfinite",
    "norm_reducer",
    "state_dtype",
    "skipped_steps",
    "last_step_skipped",
    "_dispatch",
)
#: Group keys every group carries (torch's convention: flags live in the groups too).
_FLAG_KEYS = ("foreach", "fused", "maximize")

__all__ = [
    "NonFinitePolicy",
    "NormReducer",
    "TrustRatioAdam",
    "TrustRatioForm",
    "global_grad_norm",
    "trust_ratios",
]


def _check_state_dtype(value: torch.dtype | None) -> torch.dtype | None:
    """state_dtype: None/float32 everywhere; bfloat16 only where the math stays fp32 (fused)."""
    if value is None or value == torch.float32:
        return None
    if value != torch.bfloat16:
        raise ValueError(
            f"state_dtype must be None, torch.float32 or torch.bfloat16, got {value!r}"
        )
    return value


class TrustRatioAdam(torch.optim.Optimizer):
    """Base class of ALTO and Lamb; not meant to be used directly.

    Subclasses set ``_n_betas`` (3 for ALTO: b1, b2, b3; 2 for Lamb: b2, b3),
    ``_uses_carry`` and implement ``_check_group``.
    """

    _n_betas: int = 3
    _uses_carry: bool = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        *,
        trust_ratio: TrustRatioForm,
        trust_ratio_eps: tuple[float, float],
        max_grad_norm: float | None,
        on_nonfinite: NonFinitePolicy,
        foreach: bool | None,
        fused: bool | None,
        maximize: bool,
        norm_reducer: NormReducer | None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        self.trust_ratio = check.choice("trust_ratio", trust_ratio, D.TRUST_RATIO_FORMS)
        if isinstance(trust_ratio_eps, str) or not isinstance(trust_ratio_eps, tuple | list):
            raise TypeError(f"trust_ratio_eps must be a pair (eps2, eps3), got {trust_ratio_eps!r}")
        if len(trust_ratio_eps) != 2:
            raise ValueError(
                f"trust_ratio_eps must have 2 values (eps2, eps3), got {trust_ratio_eps!r}"
            )
        self.trust_ratio_eps = (
            check.non_negative("trust_ratio_eps[0]", trust_ratio_eps[0]),
            check.non_negative("trust_ratio_eps[1]", trust_ratio_eps[1]),
        )
        self.max_grad_norm = (
            None if max_grad_norm is None else check.positive("max_grad_norm", max_grad_norm)
        )
        self.on_nonfinite = check.choice("on_nonfinite", on_nonfinite, D.NONFINITE_POLICIES)
        self.norm_reducer = check.optional_callable("norm_reducer", norm_reducer)
        # fused helper: optional bf16 storage of m, v, c (the fused kernels compute in fp32)
        self.state_dtype = _check_state_dtype(state_dtype)
        self._dispatch = GroupDispatch(foreach, fused)
        self.skipped_steps = 0
        self.last_step_skipped = False
        defaults = {**defaults, "foreach": foreach, "fused": fused, "maximize": maximize}
        self._check_group(defaults, lambda key: key)
        self._check_flags(defaults, lambda key: key)
        super().__init__(params, defaults)

    # -------------------------------------------------------- implementation
    @property
    def implementations(self) -> list[str]:
        """What runs each parameter group: "single", "foreach", "blocked" or "fused"."""
        return self._dispatch.names(self.param_groups)

    @property
    def implementation(self) -> str:
        """What runs the step: one name, or the groups' names joined by "+" when they differ."""
        return summary(self.implementations)

    def _impl(self, index: int, group: dict[str, Any]) -> Implementation:
        return self._dispatch.for_group(index, group)

    # ----------------------------------------------------------------- groups
    def _check_group(self, group: dict[str, Any], name: Callable[[str], str]) -> None:
        """Validate a group's hyperparameters; ``name(key)`` is how errors call the key."""
        raise NotImplementedError

    def _check_flags(self, group: dict[str, Any], name: Callable[[str], str]) -> None:
        check.optional_bool(name("foreach"), group.get("foreach"))
        check.optional_bool(name("fused"), group.get("fused"))
        if not isinstance(group.get("maximize", False), bool):
            raise TypeError(f"{name('maximize')} must be True or False, got {group['maximize']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate a group's hyperparameters (overrides and defaults) before adding it,
        and resolve the implementation that will run it."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        index = len(self.param_groups)
        merged = {**self.defaults, **param_group}

        def name(key: str) -> str:  # an override is named by its group, a default plainly
            return f"param_groups[{index}]['{key}']" if key in param_group else key

        self._check_group(merged, name)
        self._check_flags(merged, name)
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif not isinstance(params, set):  # torch rejects sets (no stable order) itself
            params = list(params)
        param_group["params"] = params
        for j, p in enumerate(params):
            if isinstance(p, Tensor):
                check.float_param(p, f"param_groups[{index}]['params'][{j}]")
        super().add_param_group(param_group)
        param_group["betas"] = tuple(float(b) for b in param_group["betas"])
        try:
            impl = self._impl(index, param_group)
            if self.state_dtype is not None and impl.name != "fused":
                raise ValueError(
                    "state_dtype=torch.bfloat16 needs the fused implementation (CUDA "
                    f"parameters and triton; fused=None or True), but param_groups[{index}] "
                    f"runs {impl.name!r}"
                )
        except Exception:
            self.param_groups.pop()
            raise

    def _betas3(self, group: dict[str, Any]) -> tuple[float, float, float]:
        betas = group["betas"]
        return (0.0, *betas) if self._n_betas == 2 else tuple(betas)

    # ------------------------------------------------- pickling and copying
    def __getstate__(self) -> dict[str, Any]:
        """torch's three entries plus this optimizer's options (torch would drop them)."""
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in _OPTIONS if key in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also called by torch's load_state_dict with state and groups only; an object
        pickled before the options were saved gets their defaults."""
        super().__setstate__(state)
        self.__dict__.setdefault("trust_ratio", D.ALTO.trust_ratio)
        self.__dict__.setdefault("trust_ratio_eps", D.ALTO.trust_ratio_eps)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("on_nonfinite", D.ALTO.on_nonfinite)
        self.__dict__.setdefault("norm_reducer", None)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("last_step_skipped", False)
        if "_dispatch" not in self.__dict__:
            self._dispatch = GroupDispatch(self.defaults.get("foreach"), self.defaults.get("fused"))
        for key, value in (("foreach", None), ("fused", None), ("maximize", False)):
            self.defaults.setdefault(key, value)
            for group in self.param_groups:
                group.setdefault(key, self.defaults[key])

    # ------------------------------------------------------------------ state
    def _state_dtype_for(self, p: Tensor) -> torch.dtype:
        """fp32 (fp64 for fp64 params), or the requested bf16 state for other params."""
        if self.state_dtype is None or p.dtype == torch.float64:
            return state_dtype(p)
        return self.state_dtype

    def _state_for(self, p: Tensor, impl: Implementation | None = None) -> dict[str, Any]:
        """``p``'s state, created on first use; ``impl`` is the implementation of
        ``p``'s group (looked up when not given, e.g. by Megatron's state init)."""
        state = self.state[p]
        if len(state) == 0:
            if impl is None:
                index, group = next(
                    (i, g)
                    for i, g in enumerate(self.param_groups)
                    if any(q is p for q in g["params"])
                )
                impl = self._impl(index, group)
            step_device = p.device if impl.step_on_param_device else torch.device("cpu")
            state["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
            dtype = self._state_dtype_for(p)
            fmt = torch.preserve_format
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=fmt)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=fmt)
            if self._uses_carry:
                state["diff_carry"] = torch.zeros_like(p, dtype=dtype, memory_format=fmt)
        return state

    def init_state(self) -> None:
        """Create every parameter's state as its first step would (all zeros, step 0).

        For callers that need the state's layout before any step, e.g. Megatron's
        ``init_state_fn`` building the template a checkpoint is loaded into.
        """
        for index, group in enumerate(self.param_groups):
            impl = self._impl(index, group)
            for p in group["params"]:
                self._state_for(p, impl)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch, but keep fp32 states for bf16/fp16 params and steps on their device.

        torch's loader casts every floating state to the parameter's dtype, which
        would silently round fp32 moments of bf16 parameters to bf16; the states are
        re-materialised from the saved tensors (as the load-state-dict pre-hooks left
        them) before the post-hooks run, and never share storage with the source.
        """
        loaded: dict[str, Any] = {}

        def capture(_opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
            loaded["sd"] = sd

        def restore(_opt: torch.optim.Optimizer) -> None:
            self._restore_states(loaded["sd"])

        first_post = self.register_load_state_dict_post_hook(restore, prepend=True)
        last_pre = self.register_load_state_dict_pre_hook(capture)
        try:
            super().load_state_dict(state_dict)
        finally:
            last_pre.remove()
            first_post.remove()

    def _restore_states(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["state"]
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        ids = iter(saved_ids)
        for gi, group in enumerate(self.param_groups):
            group["betas"] = tuple(float(b) for b in group["betas"])
            impl = self._impl(gi, group)
            step_device_of = (lambda p: p.device) if impl.step_on_param_device else None
            for p in group["params"]:
                pid = next(ids)
                if pid not in saved or p not in self.state:
                    continue
                st, src = self.state[p], saved[pid]
                for key in _STATE_KEYS:
                    if key in src:
                        st[key] = src[key].to(device=p.device, dtype=self._state_dtype_for(p))
                        st[key] = st[key].clone() if st[key] is src[key] else st[key]
                device = step_device_of(p) if step_device_of else torch.device("cpu")
                st["step"] = torch.tensor(float(src["step"]), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------- step
    def _collect(self) -> list[tuple[dict[str, Any], Implementation, list[Tensor], list[Tensor]]]:
        plan = []
        for gi, group in enumerate(self.param_groups):
            params, grads = [], []
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                check.dense_grad(p, f"param_groups[{gi}]['params'][{pi}]")
                params.append(p)
                grads.append(p.grad)
            plan.append((group, self._impl(gi, group), params, grads))
        return plan

    def _nonfinite_report(self) -> str:
        bad = []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    bad.append(f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})")
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        return shown or "the global gradient norm overflowed float32"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step; returns the closure's loss if a closure is given.

        Non-finite gradients (policy ``on_nonfinite``): "skip" leaves parameters and
        all state untouched, increments ``skipped_steps`` and sets
        ``last_step_skipped``; "raise" does the same and then raises
        FloatingPointError; "unchecked" does no check (the caller owns it, e.g.
        Megatron's found-inf logic). The check costs one device read per step.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        plan = self._collect()
        all_grads = [g for _, _, _, grads in plan for g in grads]
        grad_scale: Tensor | None = None
        self.last_step_skipped = False
        check_finite = self.on_nonfinite != "unchecked"
        if all_grads and (check_finite or self.max_grad_norm is not None):
            total = global_grad_norm(all_grads)
            if check_finite and not bool(torch.isfinite(total)):  # the one host read
                self.skipped_steps += 1
                self.last_step_skipped = True
                if self.on_nonfinite == "raise":
                    raise FloatingPointError(
                        f"non-finite gradient in {self._nonfinite_report()}; the step was "
                        "skipped and parameters and optimizer state are unchanged "
                        "(on_nonfinite='raise')"
                    )
                return loss
            if self.max_grad_norm is not None:
                grad_scale = (self.max_grad_norm / (total + 1e-6)).clamp_(max=1.0)

        # Phase 1: moments and squared partial norms for all groups.
        sq_parts: list[Tensor] = []
        ratio_params: list[Tensor] = []
        work = []
        for group, impl, params, grads in plan:
            if not params:
                continue
            states = [self._state_for(p, impl) for p in params]
            b1, b2, b3 = self._betas3(group)
            with_norms = group["weight_decay"] != 0.0
            scale = self._grad_scale(group, grad_scale, params[0].device)
            workspace: dict[str, Any] = {}
            sq = impl.moments_and_sq_norms(
                params,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["diff_carry"] for s in states] if self._uses_carry else None,
                [s["step"] for s in states],
                b1=b1,
                b2=b2,
                b3=b3,
                alpha=group.get("alpha", 0.0),
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                with_norms=with_norms,
                grad_scale=scale,
                workspace=workspace,
            )
            if with_norms:
                sq_parts.append(sq)
                ratio_params.extend(params)
            work.append((group, impl, params, states, with_norms, workspace))

        # Between the phases: exactly one call of the reducer per step.
        device = self._norm_device(ratio_params, plan)
        if sq_parts:
            sq = torch.cat([s.to(device) for s in sq_parts])
        else:
            sq = torch.zeros((0, 2), dtype=torch.float32, device=device)
        if self.norm_reducer is not None:
            sq = self._reduce(sq, ratio_params)
        ratios = trust_ratios(sq, self.trust_ratio, *self.trust_ratio_eps)

        # Phase 2: apply the updates.
        offset = 0
        for group, impl, params, states, with_norms, workspace in work:
            group_ratios = None
            if with_norms:
                group_ratios = ratios[offset : offset + len(params)].to(params[0].device)
                offset += len(params)
            _, b2, b3 = self._betas3(group)
            impl.apply_update(
                params,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                lr=self._lr(group["lr"], impl, params[0].device),
                b2=b2,
                b3=b3,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                ratios=group_ratios,
                workspace=workspace,
            )
        return loss

    @staticmethod
    def _grad_scale(
        group: dict[str, Any], clip: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """The factor on the group's gradients: the clipping scale, negated to maximize."""
        scale = None if clip is None else clip.to(device)
        if group.get("maximize", False):
            scale = torch.full((), -1.0, device=device) if scale is None else -scale
        return scale

    @staticmethod
    def _lr(lr: float | Tensor, impl: Implementation, device: torch.device) -> float | Tensor:
        """A tensor learning rate stays a device tensor where the implementation reads it
        on the device (fused); elsewhere it is read once per group and step."""
        if isinstance(lr, Tensor):
            return lr.to(device=device, dtype=torch.float32) if impl.tensor_lr else float(lr)
        return lr

    @staticmethod
    def _norm_device(ratio_params: list[Tensor], plan: list[Any]) -> torch.device:
        if ratio_params:
            return ratio_params[0].device
        for _, _, params, _ in plan:
            if params:
                return params[0].device
        for group, _, _, _ in plan:
            if group["params"]:
                return group["params"][0].device
        return torch.device("cpu")

    def _reduce(self, sq: Tensor, ratio_params: list[Tensor]) -> Tensor:
        assert self.norm_reducer is not None
        out = self.norm_reducer(sq, ratio_params)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(sq.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"norm_reducer must return a tensor of shape {tuple(sq.shape)} (the squared "
                f"norms it was given, reduced), got {got}"
            )
        return out.to(dtype=torch.float32)
