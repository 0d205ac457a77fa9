"""ALTO, E and torch AdamW under megatron's DistributedOptimizer: step state and checkpoints.

megatron-core 0.16.1's DistributedOptimizer was written for TE/apex FusedAdam.  Its
sharding, gradient and parameter plumbing is optimizer-agnostic, and so is the
``dp_reshardable`` checkpoint format (it stores every per-parameter state tensor it
finds).  What is not, and what the subclasses here override (no megatron method is
patched globally):

* ``state_dict``: megatron reads the common ``step`` from torch-Adam states,
  asserting that exactly one value exists (a fresh optimizer has none, so a
  checkpoint cannot even be *loaded* into one), or from TE/apex param groups.
  Here it comes from the per-parameter ``step`` of torch's convention, 0 before
  the first step.
* ``load_state_dict``: megatron pre-allocates only ``exp_avg``/``exp_avg_sq`` before
  a load (ALTO's ``diff_carry`` would be silently missing from the load template);
  it assigns ONE ``step`` tensor to every parameter (torch AdamW and ALTO increment
  steps in place, so that alias counts N steps per step: parameters drift after a
  resume); and for fp32 models it copies into the fp32 shards, views of
  grad-requiring parameters, outside ``no_grad``, which raises.  Here the full
  state is allocated first, the load runs under ``no_grad`` and every parameter
  gets its own ``step`` afterwards.
* the order of the inner optimizer's parameters: megatron indexes checkpoint
  state by a parameter's position in its bucket order, but lists each group's
  shards as [fp32 params..., bf16/fp16 params...]; for a group mixing fp32 and
  bf16 parameters the two orders differ and state lands on the wrong shards.
  :meth:`CheckpointableDistributedOptimizer.align_param_order` reorders the
  shards to megatron's index (stepping is per parameter, so training is unchanged).
* ``sharded_state_dict`` (ALTO and E): megatron's formats other than
  ``dp_reshardable`` hard-code Adam's keys and would drop ``diff_carry``; they are
  refused with a clear error instead of writing an incomplete checkpoint.
* E keeps its carry apart from its base AdamW's state (``E.state`` and
  ``E.base.state``); megatron's per-parameter state accessors, which
  ``dp_reshardable`` saves and loads through, see the two merged.

The constructor is megatron's, unchanged: :func:`alto.megatron.get_megatron_optimizer`
lets megatron's factory build the DistributedOptimizer, replaces the inner torch
AdamW by ALTO when asked, and re-types the wrapper to a subclass below (they add no
fields, only these methods).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

SUPPORTED_SHARDING_TYPES: tuple[str, ...] = ("dp_reshardable",)


def init_alto_state(optimizer: torch.optim.Optimizer, config: Any = None) -> None:
    """Allocate ALTO's state (step, exp_avg, exp_avg_sq, diff_carry) for every parameter.

    megatron calls this ``init_state_fn`` before loading a checkpoint into an
    optimizer that has not stepped yet, so the load template has every state key.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer._state_for(param)


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
    """Allocate E's carry and its base Adam/AdamW's state for every parameter."""
    init_torch_adam_state(optimizer.base)
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer._carry(param)


def _common_step(optimizer: torch.optim.Optimizer) -> float:
    steps = {float(state["step"]) for state in optimizer.state.values() if "step" in state}
    if len(steps) > 1:
        raise RuntimeError(
            f"parameters have different step counts {sorted(steps)}; megatron "
            "checkpoints store one step per optimizer"
        )
    return steps.pop() if steps else 0.0


class CheckpointableDistributedOptimizer(DistributedOptimizer):
    """DistributedOptimizer whose inner optimizer keeps torch's per-parameter ``step``."""

    #: allocates the inner optimizer's full per-parameter state (set by subclasses)
    allocate_state: Callable[[torch.optim.Optimizer], None] = staticmethod(init_torch_adam_state)

    def _stepping_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose per-parameter state holds torch's ``step``."""
        return self.optimizer

    def align_param_order(self) -> None:
        """Order each group's shards as megatron's checkpoint index expects (see module doc)."""
        shard_of: dict[torch.Tensor, torch.Tensor] = {}
        for models, shards in (
            (self.model_fp32_groups, self.shard_fp32_groups),
            (self.model_float16_groups, self.shard_fp32_from_float16_groups),
        ):
            for model_group, shard_group in zip(models, shards):
                shard_of.update(zip(model_group, shard_group))
        groups = self.optimizer.param_groups
        ordered: list[list[torch.Tensor | None]] = [[None] * len(g["params"]) for g in groups]
        for model_param, (gi, go) in self.model_param_group_index_map.items():
            ordered[gi][go] = shard_of[model_param]
        for group, params in zip(groups, ordered):
            if any(p is None for p in params) or {id(p) for p in params} != {
                id(p) for p in group["params"]
            }:
                raise RuntimeError(
                    "megatron's parameter index does not cover this optimizer's shards; "
                    "cannot align the checkpoint order"
                )
            group["params"] = params

    def state_dict(self) -> dict[str, Any]:
        """Non-sharded optimizer state: param groups (with the common step) and grad scaler."""
        inner = self.optimizer.state_dict()
        step = _common_step(self._stepping_optimizer())
        groups = []
        for group in inner["param_groups"]:
            group = {k: v for k, v in group.items() if k != "params"}
            group["step"] = step
            groups.append(group)
        state_dict: dict[str, Any] = {"optimizer": {"param_groups": groups}}
        if self.grad_scaler:
            state_dict["grad_scaler"] = self.grad_scaler.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """megatron's load, with the full state allocated first and per-parameter steps."""
        self.allocate_state(self.optimizer)
        with torch.no_grad():
            super().load_state_dict(state_dict)
        steps = {
            g["step"] for g in state_dict["optimizer"]["param_groups"] if g.get("step") is not None
        }
        if len(steps) > 1:
            raise ValueError(f"checkpoint param_groups carry different steps {sorted(steps)}")
        stepping = self._stepping_optimizer()
        step = float(steps.pop()) if steps else _common_step(stepping)
        for state in stepping.state.values():
            device = state["step"].device if "step" in state else torch.device("cpu")
            state["step"] = torch.tensor(step, dtype=torch.float32, device=device)

    def sharded_state_dict(
        self,
        model_sharded_state_dict: Any = None,
        is_loading: bool = False,
        sharding_type: str | None = None,
        metadata: dict | None = None,
    ) -> dict[str, Any]:
        """megatron's sharded state dict, with the full state allocated before a load."""
        if is_loading:
            self.allocate_state(self.optimizer)
        return super().sharded_state_dict(
            {} if model_sharded_state_dict is None else model_sharded_state_dict,
            is_loading=is_loading,
            sharding_type=sharding_type,
            metadata=metadata,
        )


class TorchAdamDistributedOptimizer(CheckpointableDistributedOptimizer):
    """megatron's DistributedOptimizer around torch Adam/AdamW (no TE/apex), checkpointable."""

    allocate_state = staticmethod(init_torch_adam_state)


class _CarryCheckpointFormats(CheckpointableDistributedOptimizer):
    """Refuses the sharded formats that would drop ``diff_carry`` (see module doc)."""

    def sharded_state_dict(
        self,
        model_sharded_state_dict: Any = None,
        is_loading: bool = False,
        sharding_type: str | None = None,
        metadata: dict | None = None,
    ) -> dict[str, Any]:
        """Refuse the formats that would drop ``diff_carry``; else megatron's."""
        chosen = sharding_type or (metadata or {}).get(
            "distrib_optim_sharding_type", "fully_sharded_model_space"
        )
        if chosen not in SUPPORTED_SHARDING_TYPES:
            name = type(self.optimizer).__name__
            raise ValueError(
                f"distrib_optim_sharding_type={chosen!r} is not supported for {name} (megatron's "
                "implementation of it stores only Adam's exp_avg/exp_avg_sq and would drop "
                f"{name}'s diff_carry); allowed: {', '.join(map(repr, SUPPORTED_SHARDING_TYPES))}"
                " -- pass metadata={'distrib_optim_sharding_type': 'dp_reshardable'}"
            )
        return super().sharded_state_dict(
            model_sharded_state_dict, is_loading, sharding_type, metadata
        )


class AltoDistributedOptimizer(_CarryCheckpointFormats):
    """megatron's DistributedOptimizer with ALTO (m, v, c in the fp32 shards) inside."""

    allocate_state = staticmethod(init_alto_state)


class EDistributedOptimizer(_CarryCheckpointFormats):
    """megatron's DistributedOptimizer with E around torch Adam/AdamW inside.

    Per shard: the base's ``step``, ``exp_avg`` and ``exp_avg_sq`` in ``E.base.state``
    and E's ``diff_carry`` in ``E.state``; checkpoints carry all four.
    """

    allocate_state = staticmethod(init_e_state)

    def _stepping_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.base

    def _get_main_param_and_optimizer_states(self, model_param: torch.Tensor) -> dict[str, Any]:
        """The shard and its state tensors, base's and E's merged (what dp_reshardable saves)."""
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        return {
            "param": main_param,
            **self.optimizer.base.state[main_param],
            **self.optimizer.state[main_param],
        }

    def _set_main_param_and_optimizer_states(
        self, model_param: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> None:
        """Copy loaded tensors into the shard and its merged state (the inverse of the get)."""
        for key, dst in self._get_main_param_and_optimizer_states(model_param).items():
            if key not in tensors:
                raise KeyError(
                    f"the checkpoint has no {key!r} for this parameter; it holds "
                    f"{sorted(tensors)} (was it saved by another optimizer than E?)"
                )
            dst.copy_(tensors[key])
