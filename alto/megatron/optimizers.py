"""The one table of optimizers ``alto.megatron`` runs inside megatron-core.

In the spirit of megatron's own registry (``megatron/core/optimizer/emerging_optimizers.py``:
an entry holds the optimizer class, an ``init_state_fn`` and a ``config_to_kwargs``),
each :class:`OptimizerEntry` here says, for one ``config.optimizer`` name:

* ``build(param_groups, config, device)``: the inner torch optimizer over megatron's
  parameter groups (the fp32 main parameters, or the DistributedOptimizer's shards);
  its constructor keywords come from ``config_to_kwargs(config)`` and each group's
  hyperparameters from ``group_to_kwargs(group, config)`` (a group's own
  ``config_overrides`` win over the config);
* ``init_state_fn(optimizer, config)``: allocates the full per-parameter state, which
  megatron calls before a checkpoint load (its load template is built from it);
* ``distributed_cls``: the DistributedOptimizer subclass that checkpoints that state
  (:mod:`alto.megatron.distrib`).

Megatron's factory cannot construct these wrappers itself: in megatron-core 0.19 its
``_get_megatron_optimizer_based_on_param_groups`` instantiates ``DistributedOptimizer``
and the inner Adam/SGD by name, and its emerging-optimizer registry wraps only the
non-sharded and layer-wise optimizers (and needs the ``emerging_optimizers`` package).
So megatron's factory builds the Adam stack (every structural decision is megatron's:
parameter groups, dense vs expert optimizers, process groups, wrappers, grad scaler),
and :func:`adopt` -- the ONE place that changes a built megatron wrapper -- installs the
entry's inner optimizer and, for a DistributedOptimizer, re-types the wrapper to
``distributed_cls`` (a subclass with no fields of its own, only checkpoint methods).
Megatron's inner Adam holds no state before its first step, so nothing is lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

from alto import ALTO
from alto.megatron.distrib import (
    AltoDistributedOptimizer,
    EDistributedOptimizer,
    TorchAdamDistributedOptimizer,
)
from alto.optim import E

#: keys torch's Adam/AdamW/SGD add to a param group; other optimizers must not inherit them
_TORCH_GROUP_KEYS = frozenset(
    {
        "betas",
        "eps",
        "amsgrad",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
        "momentum",
        "dampening",
        "nesterov",
    }
)

#: per-group ``config_overrides`` keys each optimizer reads from its groups, and the
#: private group key megatron's Adam stack carries them under (see :func:`override_key`)
GROUP_OVERRIDE_KEYS: dict[str, tuple[str, ...]] = {
    "alto": ("betas", "eps", "alpha"),
    "e": (),  # E's base Adam/AdamW reads "betas"/"eps" itself; alpha/beta are E's, global
    "adam": (),
}

#: torch optimizers E can wrap outside the DistributedOptimizer (``e_base``)
E_BASES: dict[str, type[torch.optim.Optimizer]] = {
    "torch_adam": torch.optim.Adam,  # torch's own, with any of its keywords (amsgrad, ...)
    "torch_adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}


def override_key(name: str) -> str:
    """The group key under which megatron's Adam stack carries an ALTO override ``name``.

    megatron builds torch AdamW over its groups, and AdamW fills in ITS ``betas`` and
    ``eps`` wherever a group has none; the factory therefore renames ALTO's
    overrides before megatron sees them, so that a group's own value and AdamW's
    default cannot be confused."""
    return f"alto_override_{name}"


# ------------------------------------------------------------------ state init


def init_alto_state(optimizer: torch.optim.Optimizer, config: Any = None) -> None:
    """Allocate ALTO's state (step, exp_avg, exp_avg_sq, diff_carry) for every parameter,
    through the optimizer's public `init_state` (as its first step would)."""
    optimizer.init_state()


def init_torch_adam_state(optimizer: torch.optim.Optimizer, config: Any = None) -> None:
    """Allocate torch Adam/AdamW's state (step, exp_avg, exp_avg_sq) as its first step would."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def init_e_state(optimizer: torch.optim.Optimizer, config: Any = None) -> None:
    """Allocate E's carry and its base's state for every parameter.

    An Adam/AdamW base gets its state directly; any other base (E outside the
    DistributedOptimizer) the generic way: one step on zero gradients, whose effect
    the checkpoint load that follows overwrites."""
    base = optimizer.base
    if type(base) in (torch.optim.Adam, torch.optim.AdamW):
        init_torch_adam_state(base)
    elif any(len(base.state[p]) == 0 for g in base.param_groups for p in g["params"]):
        with torch.no_grad():
            grads = {}
            for group in base.param_groups:
                for param in group["params"]:
                    grads[param] = param.grad
                    param.grad = torch.zeros_like(param)
            saved = [p.detach().clone() for p in grads]
            base.step()
            for (param, grad), before in zip(grads.items(), saved):
                param.copy_(before)
                param.grad = grad
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer._carry(param)


# -------------------------------------------------------------- constructors


def _strip(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in _TORCH_GROUP_KEYS}


def _decay(group: dict[str, Any], config: Any) -> float:
    """``config.weight_decay * wd_mult``: what megatron's OptimizerParamScheduler sets each
    step, so megatron's no-decay groups (biases, norms) have none even without one."""
    return config.weight_decay * group.get("wd_mult", 1.0)


def alto_config_to_kwargs(config: Any) -> dict[str, Any]:
    """ALTO's constructor keywords from an AltoOptimizerConfig (megatron clips and checks)."""
    return dict(
        lr=config.lr,
        betas=config.alto_betas,
        alpha=config.alto_alpha,
        eps=config.alto_eps,
        weight_decay=config.weight_decay,
        trust_ratio=config.alto_trust_ratio,
        trust_ratio_eps=tuple(config.alto_trust_ratio_eps),
        on_nonfinite="unchecked",  # megatron's found-inf check skips bad steps
        foreach=config.alto_foreach,
        fused=config.alto_fused,
    )


def alto_group_to_kwargs(group: dict[str, Any], config: Any) -> dict[str, Any]:
    """A megatron group as ALTO takes it: torch's keys dropped, the group's own
    overrides of betas / eps / alpha kept, the config's values elsewhere."""
    out = _strip(group)
    for name, default in (
        ("betas", config.alto_betas),
        ("eps", config.alto_eps),
        ("alpha", config.alto_alpha),
    ):
        out[name] = out.pop(override_key(name), default)
    out["lr"] = group["lr"]
    out["weight_decay"] = _decay(group, config)
    return out


def _with_groups(
    optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """``optimizer`` with megatron's groups assigned the way megatron assigns its shards.

    DistributedOptimizer shards are views of the model's parameter buffer (non-leaf
    tensors), which ``torch.optim.Optimizer.add_param_group`` refuses; megatron
    itself assigns them to ``param_groups`` directly, and so do we.  The constructor
    saw one placeholder leaf on the same device, so the implementation choice
    (foreach / fused) is the one the real parameters get."""
    optimizer.param_groups = groups
    optimizer.state.clear()
    return optimizer


def build_alto(groups: list[dict[str, Any]], config: Any, device: torch.device) -> ALTO:
    alto = ALTO([torch.zeros(1, device=device)], **alto_config_to_kwargs(config))
    return _with_groups(alto, [alto_group_to_kwargs(g, config) for g in groups])


def adam_config_to_kwargs(config: Any) -> dict[str, Any]:
    return dict(
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def build_torch_adam(
    groups: list[dict[str, Any]], config: Any, device: torch.device
) -> torch.optim.Optimizer:
    """torch Adam/AdamW (``decoupled_weight_decay``) with megatron's hyperparameters over
    the groups; each group's own keys (betas/eps overrides, lr, wd_mult, flags) kept."""
    cls = torch.optim.AdamW if config.decoupled_weight_decay else torch.optim.Adam
    adam = cls([torch.zeros(1, device=device)], **adam_config_to_kwargs(config))
    own = dict(adam.defaults)
    return _with_groups(
        adam,
        [
            {
                **own,
                **{k: v for k, v in g.items() if k not in own or k in ("lr", "betas", "eps")},
                "weight_decay": _decay(g, config),
            }
            for g in groups
        ],
    )


def e_config_to_kwargs(config: Any) -> dict[str, Any]:
    return dict(alpha=config.e_alpha, beta=config.e_beta, on_nonfinite="unchecked")


def build_e(groups: list[dict[str, Any]], config: Any, device: torch.device) -> E:
    """E around megatron's Adam/AdamW (``e_base="adam"``) or a named torch optimizer."""
    if config.e_base == "adam":
        base = build_torch_adam(groups, config, device)
    else:
        cls = E_BASES[config.e_base]
        kwargs = dict(config.e_base_kwargs or {})
        base = cls([torch.zeros(1, device=device)], lr=config.lr, **kwargs)
        own = dict(base.defaults)
        base = _with_groups(
            base,
            [
                {**own, **_strip(g), "lr": g["lr"], "weight_decay": _decay(g, config)}
                for g in groups
            ],
        )
    return E(base, **e_config_to_kwargs(config))


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
    """Everything needed to put one optimizer inside megatron's wrappers."""

    optimizer_cls: type[torch.optim.Optimizer]
    init_state_fn: Callable[[torch.optim.Optimizer, Any], None]
    config_to_kwargs: Callable[[Any], dict[str, Any]]
    build: Callable[[list[dict[str, Any]], Any, torch.device], torch.optim.Optimizer]
    distributed_cls: type[DistributedOptimizer]


OPTIMIZER_TABLE: dict[str, OptimizerEntry] = {
    "alto": OptimizerEntry(ALTO, init_alto_state, alto_config_to_kwargs, build_alto,
                           AltoDistributedOptimizer),
    "e": OptimizerEntry(E, init_e_state, e_config_to_kwargs, build_e, EDistributedOptimizer),
    # megatron's own Adam where megatron fell back to torch's (no TE/apex): the inner
    # optimizer stays megatron's; only the wrapper gains working checkpoint methods
    "adam": OptimizerEntry(torch.optim.AdamW, init_torch_adam_state, adam_config_to_kwargs,
                           build_torch_adam, TorchAdamDistributedOptimizer),
}  # fmt: skip


def adopt(wrapper: MegatronOptimizer, name: str, config: Any) -> torch.optim.Optimizer | None:
    """Put table entry ``name`` into a megatron wrapper built for Adam; THE re-typing place.

    * "alto" / "e": the wrapper's state-less inner Adam is replaced by the entry's
      optimizer over the very same param groups, with the entry's ``init_state_fn``.
    * "adam": megatron's inner optimizer is kept; only when it is torch's Adam/AdamW
      inside a DistributedOptimizer (no TE/apex) is the wrapper re-typed.
    * a DistributedOptimizer is re-typed to the entry's ``distributed_cls`` and its
      shards aligned to megatron's checkpoint index.

    Returns the inner optimizer now installed (None for a stub wrapper with no params).
    """
    entry = OPTIMIZER_TABLE[name]
    inner = wrapper.optimizer
    if inner is None:
        return None
    if name == "adam":
        if not (
            isinstance(wrapper, DistributedOptimizer)
            and type(inner) in (torch.optim.Adam, torch.optim.AdamW)
        ):
            return inner
    else:
        if len(inner.state) != 0:
            raise RuntimeError(
                f"cannot install {name!r}: the inner {type(inner).__name__} has already "
                f"stepped (state for {len(inner.state)} tensors)"
            )
        params = [p for g in inner.param_groups for p in g["params"]]
        device = params[0].device if params else torch.device("cpu")
        wrapper.optimizer = entry.build(inner.param_groups, config, device)
        wrapper.init_state_fn = entry.init_state_fn
    if isinstance(wrapper, DistributedOptimizer):
        wrapper.__class__ = entry.distributed_cls
        wrapper.align_param_order()
    return wrapper.optimizer
