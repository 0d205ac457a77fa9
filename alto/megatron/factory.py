"""``get_megatron_optimizer``: megatron's factory, plus ``optimizer="alto"`` and ``"e"``.

For "adam" and "sgd" this is megatron's ``get_megatron_optimizer`` itself: the same
wrappers, inner optimizers and numerics.  One addition: where megatron falls back to
torch's Adam/AdamW inside a DistributedOptimizer (no Transformer Engine or apex,
e.g. on CPU and on our GPU image), megatron 0.16.1 cannot load a distributed
checkpoint into it; that wrapper is re-typed to
:class:`~alto.megatron.distrib.TorchAdamDistributedOptimizer`, which fixes only the
checkpoint methods (see :mod:`alto.megatron.distrib`).  For
"alto" it lets megatron's factory make every structural decision (parameter groups
and their no-weight-decay rules, dense vs expert-parallel optimizers in a
ChainedOptimizer, process groups, FP32Optimizer / Float16OptimizerWithFloat16Params
/ DistributedOptimizer wrappers, gradient scaler) by building the Adam stack, whose
torch AdamW inner optimizers hold no state until their first step.  Then, per
wrapper, the AdamW is replaced by ALTO over the very same parameter groups (the
fp32 main parameters or DistributedOptimizer shards), with a
:class:`~alto.megatron.norms.ShardedNormReducer` for exact trust ratios, and
DistributedOptimizer wrappers are re-typed to
:class:`~alto.megatron.distrib.AltoDistributedOptimizer`.  So "alto" returns exactly
the wrapper types megatron returns for "adam", and gradient clipping, loss scaling,
found-inf skipping and grad-norm reporting stay megatron's.

"e" is built the same way, except that the Adam stack's inner torch Adam/AdamW is
kept and wrapped in :class:`~alto.optim.E` (E is elementwise, so no norm reducer is
needed: every shard's step is exactly its slice of the unsharded step), and
DistributedOptimizer wrappers become
:class:`~alto.megatron.distrib.EDistributedOptimizer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.optimizer import ChainedOptimizer, MegatronOptimizer
from megatron.core.optimizer import get_megatron_optimizer as _megatron_get_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer_config import OptimizerConfig

from alto import ALTO
from alto.megatron.config import OPTIMIZERS
from alto.megatron.distrib import (
    AltoDistributedOptimizer,
    EDistributedOptimizer,
    TorchAdamDistributedOptimizer,
    init_alto_state,
    init_e_state,
)
from alto.megatron.norms import ShardedNormReducer
from alto.optim import E

# keys torch's AdamW adds to each param group; ALTO groups must not inherit them
_ADAMW_GROUP_KEYS = frozenset(
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
    }
)


def get_megatron_optimizer(
    config: OptimizerConfig,
    model_chunks: list[torch.nn.Module],
    config_overrides: dict | None = None,
    use_gloo_process_groups: bool = True,
    pg_collection: Any = None,
    dump_param_to_param_group_map: str | None = None,
) -> MegatronOptimizer:
    """Build the megatron optimizer for ``model_chunks``; same call shape as megatron's.

    ``config.optimizer``: "adam" / "sgd" -> megatron's factory, untouched; "alto" /
    "e" -> the same wrappers around ALTO / E(Adam) (``config`` must then be an
    :class:`~alto.megatron.config.AltoOptimizerConfig`).
    """
    name = getattr(config, "optimizer", None)
    if name not in OPTIMIZERS:
        raise ValueError(
            f"config.optimizer={name!r} is not supported; "
            f"allowed: {', '.join(repr(o) for o in OPTIMIZERS)}"
        )
    kwargs = dict(
        config_overrides=config_overrides,
        use_gloo_process_groups=use_gloo_process_groups,
        pg_collection=pg_collection,
        dump_param_to_param_group_map=dump_param_to_param_group_map,
    )
    if name not in ("alto", "e"):
        built = _megatron_get_optimizer(config, model_chunks, **kwargs)
        for wrapper in _wrappers(built):
            if isinstance(wrapper, DistributedOptimizer) and type(wrapper.optimizer) in (
                torch.optim.Adam,
                torch.optim.AdamW,
            ):
                wrapper.__class__ = TorchAdamDistributedOptimizer
                wrapper.align_param_order()
        return built
    if not hasattr(config, "alto_betas"):
        raise TypeError(
            f"config.optimizer={name!r} needs an alto.megatron.AltoOptimizerConfig (it carries "
            f"ALTO's and E's hyperparameters), got {type(config).__name__}"
        )
    if getattr(model_chunks[0], "ddp_config", None) is not None and getattr(
        model_chunks[0].ddp_config, "use_megatron_fsdp", False
    ):
        raise ValueError(
            "DistributedDataParallelConfig.use_megatron_fsdp=True is not supported with "
            f"optimizer={name!r}; allowed: False (megatron's DDP, with or without the "
            "distributed optimizer)"
        )
    adam_config = dataclasses.replace(config, optimizer="adam")
    built = _megatron_get_optimizer(adam_config, model_chunks, **kwargs)
    install = install_alto if name == "alto" else install_e
    for wrapper in _wrappers(built):
        wrapper.config = config
        if wrapper.optimizer is not None:
            install(wrapper, config, pg_collection)
    if isinstance(built, ChainedOptimizer):
        built.config = config
    return built


def _wrappers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    if isinstance(optimizer, ChainedOptimizer):
        return list(optimizer.chained_optimizers)
    return [optimizer]


def _alto_group(group: dict[str, Any], config: Any) -> dict[str, Any]:
    """A megatron param group with AdamW's keys dropped and ALTO's hyperparameters set.

    ``weight_decay`` starts as ``config.weight_decay * wd_mult`` (what megatron's
    OptimizerParamScheduler sets every step), so megatron's no-decay groups (biases,
    norms) take ALTO's plain step even without a scheduler.
    """
    out = {k: v for k, v in group.items() if k not in _ADAMW_GROUP_KEYS}
    out["lr"] = group["lr"]
    out["weight_decay"] = config.weight_decay * group.get("wd_mult", 1.0)
    out["betas"] = config.alto_betas
    out["alpha"] = config.alto_alpha
    out["eps"] = config.alto_eps
    return out


def _build_alto(groups: list[dict[str, Any]], config: Any, device: torch.device) -> ALTO:
    """ALTO with megatron's param groups, assigned the way megatron assigns its shards.

    DistributedOptimizer shards are views of the model's parameter buffer (non-leaf
    tensors), which ``torch.optim.Optimizer.add_param_group`` refuses; megatron
    itself assigns them to ``param_groups`` directly, and so do we.  The constructor
    sees one placeholder leaf on the same device, so the implementation choice
    (foreach / fused) is the one the real parameters would get.
    """
    alto = ALTO(
        [torch.zeros(1, device=device)],
        lr=config.lr,
        betas=config.alto_betas,
        alpha=config.alto_alpha,
        eps=config.alto_eps,
        weight_decay=config.weight_decay,
        trust_ratio=config.alto_trust_ratio,
        trust_ratio_eps=tuple(config.alto_trust_ratio_eps),
        on_nonfinite="unchecked",
        foreach=config.alto_foreach,
        fused=config.alto_fused,
    )
    alto.param_groups = [_alto_group(g, config) for g in groups]
    alto.state.clear()
    return alto


def _slots(wrapper: MegatronOptimizer, alto: ALTO) -> list[tuple[torch.Tensor | None, Any]]:
    """(optimizer piece or None, model parameter) per logical tensor, rank-independent order."""
    if isinstance(wrapper, DistributedOptimizer):
        slots = []
        for buffer in wrapper.buffers:
            for model_param in buffer.param_index_map:
                where = wrapper.model_param_group_index_map.get(model_param)
                piece = None
                if where is not None:
                    gi, go = where
                    piece = alto.param_groups[gi]["params"][go]
                slots.append((piece, model_param))
        return slots
    return [(p, p) for group in alto.param_groups for p in group["params"]]


def _groups_for(wrapper: MegatronOptimizer, alto: ALTO, pg_collection: Any) -> tuple[Any, Any]:
    expert = any(g.get("is_expert_parallel", False) for g in alto.param_groups)
    if expert:
        tp = getattr(pg_collection, "expt_tp", None) if pg_collection is not None else None
        tp = tp or parallel_state.get_expert_tensor_parallel_group(check_initialized=False)
    else:
        tp = getattr(wrapper, "tp_group", None) or parallel_state.get_tensor_model_parallel_group()
    dp = wrapper.data_parallel_group if isinstance(wrapper, DistributedOptimizer) else None
    return dp, tp


def _fresh_inner(wrapper: MegatronOptimizer, caller: str) -> torch.optim.Optimizer:
    """``wrapper``'s inner optimizer, which must never have stepped (it gets replaced)."""
    inner = wrapper.optimizer
    if len(inner.state) != 0:
        raise RuntimeError(
            f"{caller} expects the freshly built, never-stepped inner optimizer "
            f"({type(inner).__name__} already holds state for {len(inner.state)} tensors)"
        )
    return inner


def install_alto(wrapper: MegatronOptimizer, config: Any, pg_collection: Any = None) -> ALTO:
    """Replace ``wrapper``'s state-less inner AdamW by ALTO over the same param groups."""
    inner = _fresh_inner(wrapper, "install_alto")
    params = [p for g in inner.param_groups for p in g["params"]]
    device = params[0].device if params else torch.device("cpu")
    alto = _build_alto(inner.param_groups, config, device)
    wrapper.optimizer = alto
    wrapper.init_state_fn = init_alto_state
    if isinstance(wrapper, DistributedOptimizer):
        wrapper.__class__ = AltoDistributedOptimizer
        wrapper.align_param_order()
    dp, tp = _groups_for(wrapper, alto, pg_collection)
    reducer = ShardedNormReducer(_slots(wrapper, alto), dp, tp)
    if not reducer.is_noop:
        alto.norm_reducer = reducer
    return alto


def _torch_adam_over(inner: torch.optim.Optimizer, config: Any) -> torch.optim.Optimizer:
    """torch Adam/AdamW over ``inner``'s param groups: ``inner`` itself when megatron
    fell back to torch's (no Transformer Engine / apex), else a state-less replacement
    with megatron's hyperparameters (E needs an optimizer that reads ``p.grad``)."""
    if type(inner) in (torch.optim.Adam, torch.optim.AdamW):
        return inner
    cls = torch.optim.AdamW if config.decoupled_weight_decay else torch.optim.Adam
    params = [p for g in inner.param_groups for p in g["params"]]
    device = params[0].device if params else torch.device("cpu")
    adam = cls(
        [torch.zeros(1, device=device)],
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    own = dict(adam.defaults)
    adam.param_groups = [
        {
            **own,
            **{k: v for k, v in g.items() if k not in own or k in ("lr", "weight_decay")},
            "weight_decay": config.weight_decay * g.get("wd_mult", 1.0),
        }
        for g in inner.param_groups
    ]
    adam.state.clear()
    return adam


def install_e(wrapper: MegatronOptimizer, config: Any, pg_collection: Any = None) -> E:
    """Wrap ``wrapper``'s state-less inner Adam/AdamW in E over the same param groups."""
    inner = _fresh_inner(wrapper, "install_e")
    e = E(
        _torch_adam_over(inner, config),
        alpha=config.e_alpha,
        beta=config.e_beta,
        on_nonfinite="unchecked",  # megatron's found-inf check skips bad steps
    )
    wrapper.optimizer = e
    wrapper.init_state_fn = init_e_state
    if isinstance(wrapper, DistributedOptimizer):
        wrapper.__class__ = EDistributedOptimizer
        wrapper.align_param_order()
    return e
