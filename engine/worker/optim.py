"""The job's optimizer inside megatron's wrappers, and its LR schedule.

This module maps a spec to an ``alto.megatron.AltoOptimizerConfig`` and nothing more:
building, sharding and checkpointing are ``alto.megatron.get_megatron_optimizer``'s
(its optimizer table).  ``alto`` and ``adamw`` run in megatron's DistributedOptimizer
(alto.megatron ships with the engine: one factory for every optimizer);
``e`` around Adam/AdamW configured by betas, eps and weight_decay (``ESpec.sharded``)
too, and ``e`` around any other torch optimizer unsharded (``e_base``).
"""

from __future__ import annotations

import torch
from alto_client.spec import AdamWSpec, AltoSpec, ESpec, JobSpec

from alto.megatron import AltoOptimizerConfig, get_megatron_optimizer


def uses_distributed_optimizer(spec: JobSpec) -> bool:
    opt = spec.optimizer
    return not isinstance(opt, ESpec) or opt.sharded


def _base_config_kwargs(spec: JobSpec) -> dict:
    t = spec.training
    return dict(
        lr=spec.peak_lr,
        min_lr=spec.final_lr,
        clip_grad=t.grad_clip,
        bf16=t.precision == "bf16",
        params_dtype=torch.bfloat16 if t.precision == "bf16" else torch.float32,
        use_distributed_optimizer=uses_distributed_optimizer(spec),
    )


def build_optimizer(spec: JobSpec, model: torch.nn.Module):
    """A megatron optimizer (possibly a ChainedOptimizer for dense + expert params)."""
    opt = spec.optimizer
    if isinstance(opt, AltoSpec):
        return _build_alto(spec, opt, model)
    if isinstance(opt, AdamWSpec):
        return _build_adamw(spec, opt, model)
    if isinstance(opt, ESpec):
        return _build_e(spec, opt, model)
    raise ValueError(f"optimizer.name {opt.name!r} is not one of 'alto', 'adamw', 'e'")


def _build_alto(spec: JobSpec, opt: AltoSpec, model: torch.nn.Module):
    config = AltoOptimizerConfig(
        optimizer="alto",
        alto_alpha=opt.alpha,
        alto_beta1=opt.beta1,
        alto_beta2=opt.beta2,
        alto_beta3=opt.beta3,
        alto_eps=opt.eps,
        weight_decay=opt.weight_decay,
        **_base_config_kwargs(spec),
    )
    return get_megatron_optimizer(config, [model])


def _build_adamw(spec: JobSpec, opt: AdamWSpec, model: torch.nn.Module):
    kwargs = dict(
        optimizer="adam",
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_eps=opt.eps,
        weight_decay=opt.weight_decay,
        decoupled_weight_decay=True,
        **_base_config_kwargs(spec),
    )
    return get_megatron_optimizer(AltoOptimizerConfig(**kwargs), [model])


def _build_e(spec: JobSpec, opt: ESpec, model: torch.nn.Module):
    """E through alto.megatron's "e": around megatron's Adam/AdamW (sharded, bf16) when
    the spec's base is Adam/AdamW configured by betas, eps and weight_decay
    (``ESpec.sharded``), else around the named torch optimizer, unsharded."""
    hyper = dict(opt.base_hyperparameters)
    hyper.pop("weight_decay", None)  # the config's weight_decay (times wd_mult) is the base's
    if opt.sharded:
        beta1, beta2 = hyper.get("betas", (0.9, 0.999))
        base = dict(
            e_base="adam",
            adam_beta1=float(beta1),
            adam_beta2=float(beta2),
            adam_eps=float(hyper.get("eps", 1e-8)),
            decoupled_weight_decay=opt.base == "adamw",
        )
    else:  # Adam/AdamW with other keywords (amsgrad, ...) are torch's, unsharded
        name = f"torch_{opt.base}" if opt.base in ("adam", "adamw") else opt.base
        base = dict(e_base=name, e_base_kwargs=hyper)
    config = AltoOptimizerConfig(
        optimizer="e",
        e_alpha=opt.alpha,
        e_beta=opt.beta1,
        weight_decay=opt.weight_decay,
        **base,
        **_base_config_kwargs(spec),
    )
    return get_megatron_optimizer(config, [model])


def _leaf_optimizers(optimizer) -> list:
    """The megatron optimizers inside a ChainedOptimizer (or the optimizer itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def build_scheduler(spec: JobSpec, optimizer):
    """megatron's OptimizerParamScheduler: linear warmup then cosine/linear/constant decay."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    t = spec.training
    decay = t.lr_decay_steps if t.lr_decay_steps is not None else t.steps
    wd = getattr(spec.optimizer, "weight_decay", 0.0)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if t.warmup_steps > 0 else spec.peak_lr,
        max_lr=spec.peak_lr,
        min_lr=spec.final_lr,
        lr_warmup_steps=t.warmup_steps,
        lr_decay_steps=max(decay, t.warmup_steps + 1),
        lr_decay_style=t.lr_decay_style,
        start_wd=wd,
        end_wd=wd,
        wd_incr_steps=t.steps,
        wd_incr_style="constant",
    )


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of optimizer state tensors on this rank (moments and buffers, not params)."""
    total = 0
    for leaf in _leaf_optimizers(optimizer):
        inner = getattr(leaf, "optimizer", None)
        if inner is None:
            continue
        states = [inner.state]
        base = getattr(inner, "base", None)  # E keeps its base optimizer's state apart
        if base is not None:
            states.append(base.state)
        for state in states:
            for per_param in state.values():
                for value in per_param.values():
                    if torch.is_tensor(value) and value.dim() > 0:
                        total += value.numel() * value.element_size()
    return total
