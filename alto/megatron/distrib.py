"""ALTO, E and torch AdamW under megatron's DistributedOptimizer: step state and checkpoints.

megatron-core 0.19's DistributedOptimizer accepts any inner optimizer that comes with
an ``init_state_fn``, and its sharding, gradient and parameter plumbing is
optimizer-agnostic.  What is not, and what the subclasses here override (no megatron
method is patched globally; re-measured on 0.19.2):

* ``state_dict``: without TE/apex megatron reads the common ``step`` from torch-Adam
  states, asserting that exactly one value exists (a fresh optimizer has none, so a
  checkpoint cannot even be *loaded* into one).  Here it comes from the
  per-parameter ``step`` of torch's convention, 0 before the first step.
* ``load_state_dict``: megatron pre-allocates only the keys of its
  ``optimizer_state_keys`` table before a load; it assigns ONE ``step`` tensor to
  every parameter (torch AdamW and ALTO increment steps in place, so that alias
  counts N steps per step: parameters drift after a resume); and for fp32 models
  it copies into the fp32 shards, views of grad-requiring parameters, outside
  ``no_grad``, which raises.  Here the full state is allocated first (the table's
  ``init_state_fn``), the load runs under ``no_grad`` and every parameter gets its
  own ``step`` afterwards.  The legacy ``torch`` format's parameter-state load
  (``load_parameter_state_from_dp_zero``) gets the same treatment.
* the order of the inner optimizer's parameters: megatron indexes checkpoint
  state by a parameter's position in its bucket order, but lists each group's
  shards as [fp32 params..., bf16/fp16 params...]; for a group mixing fp32 and
  bf16 parameters the two orders differ and state lands on the wrong shards.
  :meth:`CheckpointableDistributedOptimizer.align_param_order` reorders the
  shards to megatron's index (stepping is per parameter, so training is unchanged).
* ``optimizer_state_keys`` (ALTO and E): megatron's hard-coded table (Adam's keys,
  Lion's) drives the ``dp_zero_gather_scatter``, ``fully_reshardable`` and legacy
  ``torch`` formats; it is overridden with ``diff_carry`` added, so every format
  keeps the whole state.
* ``sharded_param_state_dp_reshardable``: with pipeline parallelism and tied
  embeddings megatron's bucket-end padding can reach past the checkpoint tensor
  (every optimizer's save fails); it is clipped to the tensor.
* E keeps its carry apart from its base AdamW's state (``E.state`` and
  ``E.base.state``); megatron's per-parameter state accessors, which every format
  saves and loads through, see the two merged.

The constructor is megatron's, unchanged; :func:`alto.megatron.optimizers.adopt` is
the one place that re-types a built DistributedOptimizer to a subclass below (they
add no fields, only these methods).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

#: per-parameter state tensors of ALTO and of E around Adam/AdamW, as megatron's
#: checkpoint formats name them (megatron's own table knows Adam's and Lion's only)
CARRY_STATE_KEYS: tuple[str, ...] = ("exp_avg", "exp_avg_sq", "diff_carry")

#: megatron's distributed-checkpoint formats that keep ALTO's / E's state complete
#: (tests/megatron: a resumed run continues bitwise), and the one that is refused
SHARDING_TYPES: tuple[str, ...] = (
    "dp_reshardable",
    "fully_reshardable",
    "dp_zero_gather_scatter",
)
UNSUPPORTED_SHARDING_TYPES: tuple[str, ...] = ("fully_sharded_model_space",)


def _common_step(optimizer: torch.optim.Optimizer) -> float:
    steps = {float(state["step"]) for state in optimizer.state.values() if "step" in state}
    if len(steps) > 1:
        raise RuntimeError(
            f"parameters have different step counts {sorted(steps)}; megatron "
            "checkpoints store one step per optimizer"
        )
    return steps.pop() if steps else 0.0


class CheckpointableDistributedOptimizer(DistributedOptimizer):
    """DistributedOptimizer whose inner optimizer keeps torch's per-parameter ``step``.

    ``self.init_state_fn`` (set by :func:`alto.megatron.optimizers.adopt` from the
    optimizer table) allocates the inner optimizer's full per-parameter state.
    """

    def _stepping_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer whose per-parameter state holds torch's ``step``."""
        return self.optimizer

    def _allocate_state(self) -> None:
        self.init_state_fn(self.optimizer, self.config)

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
        self._allocate_state()
        with torch.no_grad():
            super().load_state_dict(state_dict)
        self._restore_step(state_dict["optimizer"]["param_groups"])

    def _restore_step(self, param_groups: list[dict[str, Any]]) -> None:
        steps = {g["step"] for g in param_groups if g.get("step") is not None}
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
            self._allocate_state()
        return super().sharded_state_dict(
            {} if model_sharded_state_dict is None else model_sharded_state_dict,
            is_loading=is_loading,
            sharding_type=sharding_type,
            metadata=metadata,
        )

    def sharded_param_state_dp_reshardable(self, *args: Any, **kwargs: Any) -> Any:
        """megatron's ``dp_reshardable`` state with the end padding of each bucket clipped
        to the bucket's checkpoint size.

        With pipeline parallelism and tied embeddings megatron closes a bucket before the
        embedding's own one at the embedding's 64-element-aligned start, so the bucket's
        ``numel_unpadded`` (the checkpoint tensor's size) includes that alignment, and the
        padding megatron appends after the bucket's last parameter reaches past it
        ("out of bounds chunk" at save, for every optimizer; seen with parameters whose
        sizes are not multiples of 64).  Padding is never loaded, so cutting it at the
        tensor's end changes nothing else.
        """
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        state = super().sharded_param_state_dp_reshardable(*args, **kwargs)
        for tensor in nested_values(state):
            if not isinstance(tensor, ShardedTensor) or len(tensor.global_shape) != 1:
                continue
            room = tensor.global_shape[0] - tensor.global_offset[0]
            if 0 < room < tensor.local_shape[0]:
                tensor.data = tensor.data[:room]
                tensor.local_shape = (room,)
        return state

    def _set_main_param_and_optimizer_states(
        self, model_param: torch.Tensor, tensors: dict[str, torch.Tensor]
    ) -> None:
        """Copy loaded tensors into the shard and its state.  megatron's version demands
        every state key, ``step`` included, which the formats built from
        ``optimizer_state_keys`` do not store (KeyError 'step' for torch Adam too); the
        step comes from the param groups instead (``_restore_step``)."""
        for key, dst in self._get_main_param_and_optimizer_states(model_param).items():
            if key == "step" and key not in tensors:
                continue
            if key not in tensors:
                raise KeyError(
                    f"the checkpoint has no {key!r} for this parameter; it holds "
                    f"{sorted(tensors)} (was it saved by another optimizer?)"
                )
            if torch.is_tensor(tensors[key]):
                dst.copy_(tensors[key])

    def load_parameter_state_from_dp_zero(self, state_dict: Any, **kwargs: Any) -> None:
        """The legacy ``torch`` format's load (``--ckpt-format torch``): megatron copies into
        fp32 shards that are views of grad-requiring parameters, so it runs under no_grad."""
        self._allocate_state()
        with torch.no_grad():
            super().load_parameter_state_from_dp_zero(state_dict, **kwargs)


class TorchAdamDistributedOptimizer(CheckpointableDistributedOptimizer):
    """megatron's DistributedOptimizer around torch Adam/AdamW (no TE/apex), checkpointable."""


class _CarryStateKeys(CheckpointableDistributedOptimizer):
    """Names ``diff_carry`` to megatron's checkpoint formats.

    In megatron-core 0.19 ``dp_reshardable`` and ``fully_sharded_model_space`` save
    every state tensor of a shard, but ``dp_zero_gather_scatter``, ``fully_reshardable``
    and the legacy ``torch`` format (``save_parameter_state``) iterate over
    ``optimizer_state_keys``, a table that knows Adam's and Lion's keys only; here it
    lists ALTO's / E's three, so every format stores the state complete.
    """

    @property
    def optimizer_state_keys(self) -> tuple[str, ...]:
        return CARRY_STATE_KEYS

    def sharded_state_dict(
        self,
        model_sharded_state_dict: Any = None,
        is_loading: bool = False,
        sharding_type: str | None = None,
        metadata: dict | None = None,
    ) -> dict[str, Any]:
        """megatron's, except the one format that cannot be written (refused by name)."""
        chosen = sharding_type or (metadata or {}).get("distrib_optim_sharding_type")
        if chosen in UNSUPPORTED_SHARDING_TYPES:
            raise ValueError(
                f"distrib_optim_sharding_type={chosen!r} is not supported: megatron-core 0.19's "
                'implementation of it fails for every optimizer ("ShardedTensor.flattened_range '
                f'is not supported"); allowed: {", ".join(map(repr, SHARDING_TYPES))} -- e.g. '
                "metadata={'distrib_optim_sharding_type': 'dp_reshardable'}"
            )
        return super().sharded_state_dict(
            model_sharded_state_dict, is_loading, sharding_type, metadata
        )


class AltoDistributedOptimizer(_CarryStateKeys):
    """megatron's DistributedOptimizer with ALTO (m, v, c in the fp32 shards) inside."""


class EDistributedOptimizer(_CarryStateKeys):
    """megatron's DistributedOptimizer with E around torch Adam/AdamW inside.

    Per shard: the base's ``step``, ``exp_avg`` and ``exp_avg_sq`` in ``E.base.state``
    and E's ``diff_carry`` in ``E.state``; checkpoints carry all four.
    """

    def _stepping_optimizer(self) -> torch.optim.Optimizer:
        return self.optimizer.base

    def _get_main_param_and_optimizer_states(self, model_param: torch.Tensor) -> dict[str, Any]:
        """The shard and its state tensors, base's and E's merged (what checkpoints save)."""
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        return {
            "param": main_param,
            **self.optimizer.base.state[main_param],
            **self.optimizer.state[main_param],
        }
