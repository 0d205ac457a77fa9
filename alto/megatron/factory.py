"""``get_megatron_optimizer``: megatron's factory, plus ``optimizer="alto"`` and ``"e"``.

The call shape is megatron's.  For "adam" and "sgd" the result is what megatron's
factory returns, with the same numerics; where megatron fell back to torch's
Adam/AdamW inside a DistributedOptimizer (no Transformer Engine or apex: CPU, our GPU
image) the wrapper also gets working checkpoint methods (the "adam" row of
:mod:`alto.megatron.optimizers`).  For "alto" and "e" megatron's factory builds the
Adam stack (every structural decision is megatron's) and each wrapper adopts the
optimizer table's entry (:func:`alto.megatron.optimizers.adopt`); a
:class:`~alto.megatron.norms.ShardedNormReducer` then gives ALTO exact trust ratios
under data, tensor and expert parallelism.  Gradient clipping, loss scaling,
found-inf skipping and grad-norm reporting stay megatron's.
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

from alto.megatron.config import OPTIMIZERS
from alto.megatron.norms import ShardedNormReducer
from alto.megatron.optimizers import GROUP_OVERRIDE_KEYS, adopt, override_key


def get_megatron_optimizer(
    config: OptimizerConfig,
    model_chunks: list[torch.nn.Module],
    config_overrides: dict | None = None,
    use_gloo_process_groups: bool = True,
    pg_collection: Any = None,
    dump_param_to_param_group_map: str | None = None,
) -> MegatronOptimizer:
    """Build the megatron optimizer for ``model_chunks``; same call shape as megatron's.

    ``config.optimizer``: "adam" / "sgd" -> megatron's factory; "alto" / "e" -> the
    same wrappers around ALTO / E (``config`` must then be an
    :class:`~alto.megatron.config.AltoOptimizerConfig`; it is validated again here,
    so a field set after the config was built is checked too).
    """
    name = getattr(config, "optimizer", None)
    if name not in OPTIMIZERS:
        raise ValueError(
            f"config.optimizer={name!r} is not supported; "
            f"allowed: {', '.join(repr(o) for o in OPTIMIZERS)}"
        )
    kwargs = dict(
        use_gloo_process_groups=use_gloo_process_groups,
        pg_collection=pg_collection,
        dump_param_to_param_group_map=dump_param_to_param_group_map,
    )
    if name not in ("alto", "e"):
        built = _megatron_get_optimizer(
            config, model_chunks, config_overrides=config_overrides, **kwargs
        )
        for wrapper in _wrappers(built):
            adopt(wrapper, "adam", config)
        return built
    if not hasattr(config, "alto_betas"):
        raise TypeError(
            f"config.optimizer={name!r} needs an alto.megatron.AltoOptimizerConfig (it carries "
            f"ALTO's and E's hyperparameters), got {type(config).__name__}"
        )
    config.validate()
    if getattr(model_chunks[0], "ddp_config", None) is not None and getattr(
        model_chunks[0].ddp_config, "use_megatron_fsdp", False
    ):
        raise ValueError(
            "DistributedDataParallelConfig.use_megatron_fsdp=True is not supported with "
            f"optimizer={name!r}; allowed: False (megatron's DDP, with or without the "
            "distributed optimizer)"
        )
    adam_config = dataclasses.replace(config, optimizer="adam")
    if config_overrides is None:
        from megatron.core.optimizer import get_standard_config_overrides

        config_overrides = get_standard_config_overrides(adam_config)
    built = _megatron_get_optimizer(
        adam_config,
        model_chunks,
        config_overrides=_carry_overrides(name, config_overrides),
        **kwargs,
    )
    for wrapper in _wrappers(built):
        wrapper.config = config
        inner = adopt(wrapper, name, config)
        if name == "alto" and inner is not None:
            dp, tp = _groups_for(wrapper, inner, pg_collection)
            reducer = ShardedNormReducer(_slots(wrapper, inner), dp, tp)
            if not reducer.is_noop:
                inner.norm_reducer = reducer
    if isinstance(built, ChainedOptimizer):
        built.config = config
    return built


def _carry_overrides(name: str, config_overrides: dict) -> dict:
    """``config_overrides`` with the optimizer's own group keys renamed (see
    :func:`alto.megatron.optimizers.override_key`); keys it cannot honour refused."""
    carried = {}
    own = GROUP_OVERRIDE_KEYS[name]
    for key, override in config_overrides.items():
        override = dict(override)
        if name == "e" and "alpha" in override:
            raise ValueError(
                "config_overrides with 'alpha' are not supported with optimizer='e' (E's "
                "alpha and beta are one per optimizer); allowed: 'betas' and 'eps' (E's "
                "base Adam's), or AltoOptimizerConfig.e_alpha for all parameters"
            )
        for field in own:
            if field in override:
                override[override_key(field)] = override.pop(field)
        if name == "alto" and override_key("betas") in override:
            betas = tuple(override[override_key("betas")])
            if len(betas) != 3:
                raise ValueError(
                    f"config_overrides betas={betas!r} for optimizer='alto' must be "
                    "(beta1, beta2, beta3), as AltoOptimizerConfig.alto_betas"
                )
            override[override_key("betas")] = betas
        carried[key] = override
    return carried


def _wrappers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    if isinstance(optimizer, ChainedOptimizer):
        return list(optimizer.chained_optimizers)
    return [optimizer]


def _slots(wrapper: MegatronOptimizer, alto: Any) -> list[tuple[torch.Tensor | None, Any]]:
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


def _groups_for(wrapper: MegatronOptimizer, alto: Any, pg_collection: Any) -> tuple[Any, Any]:
    expert = any(g.get("is_expert_parallel", False) for g in alto.param_groups)
    if expert:
        tp = getattr(pg_collection, "expt_tp", None) if pg_collection is not None else None
        tp = tp or parallel_state.get_expert_tensor_parallel_group(check_initialized=False)
    else:
        tp = getattr(wrapper, "tp_group", None) or parallel_state.get_tensor_model_parallel_group()
    dp = wrapper.data_parallel_group if isinstance(wrapper, DistributedOptimizer) else None
    return dp, tp
