"""Save and restore a training state with megatron's dist_checkpointing.

Each rank writes its shards to its own local directory and reports it to Ray
Train, which merges the ranks' files into one checkpoint directory in the run's
storage; a restarted worker group loads that merged directory.  Besides model
and optimizer, the scheduler state and the step are stored, so a resumed run
continues the same LR schedule and the same data order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SHARDING_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
STEP_FILE = "alto_step.json"


def _sharded_state(ddp_model, optimizer, is_loading: bool) -> dict:
    model_state = ddp_model.module.sharded_state_dict()
    state = {"model": model_state}
    state["optimizer"] = optimizer.sharded_state_dict(
        state, is_loading=is_loading, metadata=SHARDING_METADATA
    )
    return state


def save_checkpoint(directory: Path, ddp_model, optimizer, scheduler, step: int) -> None:
    """Collective: every rank calls it with its own (empty) directory."""
    from megatron.core import dist_checkpointing

    directory.mkdir(parents=True, exist_ok=True)
    state = _sharded_state(ddp_model, optimizer, is_loading=False)
    state["scheduler"] = scheduler.state_dict()
    state["step"] = step
    dist_checkpointing.save(state, str(directory))
    if torch.distributed.get_rank() == 0:
        (directory / STEP_FILE).write_text(json.dumps({"step": step}))


def load_checkpoint(directory: Path, ddp_model, optimizer, scheduler) -> int:
    """Collective: restore model, optimizer and scheduler; return the step it was saved at.

    Works around three megatron-core 0.16.1 problems of the DistributedOptimizer with
    torch's (Adam) optimizers, which have no TE/apex fused Adam to hide them:
    a fresh optimizer has no per-parameter ``step`` (its state_dict asserts), so the
    states get megatron's dummy initialisation first; loading copies into views of
    leaf parameters, which autograd forbids outside ``no_grad``; and torch's
    ``load_state_dict`` may leave one ``step`` tensor shared by all parameters, which
    Adam would then advance once per parameter per step.
    """
    from megatron.core import dist_checkpointing

    for leaf in _leaves(optimizer):
        init = getattr(leaf, "_init_optimizer_states_with_dummy_values", None)
        inner = getattr(leaf, "optimizer", None)
        if init is not None and inner is not None and not inner.state:
            init()
    state = _sharded_state(ddp_model, optimizer, is_loading=True)
    state["scheduler"] = scheduler.state_dict()
    state["step"] = 0
    loaded = dist_checkpointing.load(state, str(directory))
    with torch.no_grad():
        ddp_model.module.load_state_dict(loaded["model"])
        optimizer.load_state_dict(loaded["optimizer"])
    _restore_steps(optimizer, loaded["optimizer"])
    scheduler.num_steps = 0  # megatron's load_state_dict *adds* the saved step count
    scheduler.load_state_dict(loaded["scheduler"])
    return int(loaded["step"])


def _leaves(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _restore_steps(optimizer, loaded_state) -> None:
    """Give every parameter its own ``step`` tensor holding the checkpoint's step.

    megatron's DistributedOptimizer keeps the step of torch's Adam in its param groups
    (one per optimizer) and, without TE/apex, does not get it back into the
    per-parameter states reliably; the per-parameter tensors may also be aliased.
    """
    leaves = _leaves(optimizer)
    if len(leaves) == 1:
        leaf_states = [loaded_state]
    else:
        leaf_states = [v for _, v in sorted(loaded_state.items(), key=lambda kv: int(kv[0]))]
    for leaf, state in zip(leaves, leaf_states):
        inner = getattr(leaf, "optimizer", None)
        if inner is None:
            continue
        groups = (
            state.get("optimizer", {}).get("param_groups", []) if isinstance(state, dict) else []
        )
        steps = {
            float(g["step"]) for g in groups if isinstance(g, dict) and g.get("step") is not None
        }
        common = steps.pop() if len(steps) == 1 else None
        for per_param in inner.state.values():
            step = per_param.get("step")
            if not torch.is_tensor(step):
                continue
            value = torch.tensor(common, dtype=step.dtype) if common is not None else step
            per_param["step"] = value.clone().to(step.device)
