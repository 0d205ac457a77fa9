"""Exact per-tensor norms for ALTO's trust ratio under megatron's parallelism.

ALTO's trust ratio needs ||theta|| and ||r|| of each *logical* tensor.  Inside
megatron the optimizer sees pieces of tensors:

* DistributedOptimizer: each data-parallel rank owns a contiguous slice of the
  flattened gradient buffer, which cuts tensors anywhere (a tensor may be split
  between ranks, or absent on a rank);
* tensor parallelism: ``tensor_model_parallel`` weights are split across the TP group
  (the expert-TP group for expert weights), while the other parameters are
  replicated there and must be counted once, not TP times.

ALTO hands the squared partial norms of all its trust-ratio tensors to a
``norm_reducer`` once per step.  :class:`ShardedNormReducer` scatters them into a
*slot* table that is identical on every rank (one row per model parameter of this
optimizer, in the DDP buffer order), sums it with ONE all-reduce over the
data-parallel group, then sums the rows of TP-split tensors with ONE all-reduce
over the tensor-parallel group, and gathers the rows back.  All on the device;
the only host work is building the slot index once per distinct parameter list.
Every rank calls the collectives every step, also with no local rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def group_size(group: dist.ProcessGroup | None) -> int:
    """World size of ``group`` (1 for None or when torch.distributed is not initialised)."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


class ShardedNormReducer:
    """``norm_reducer`` for ALTO: sums squared partial norms over DP shards and TP splits.

    Args:
        slots: one entry per logical tensor, in an order identical on all ranks of
            both groups; each entry is the optimizer parameter that holds this rank's
            piece of it (None where this rank holds no piece, i.e. an unowned
            DistributedOptimizer range) and the model parameter that says whether it
            is tensor-parallel split (its ``tensor_model_parallel`` attribute).
        dp_group: the group whose members hold disjoint pieces of the same tensors
            (the DistributedOptimizer's data-parallel group), or None when every
            rank holds whole tensors (FP32Optimizer / Float16Optimizer).
        tp_group: the tensor-parallel group (expert-TP for expert parameters), or None.
    """

    def __init__(
        self,
        slots: Iterable[tuple[Tensor | None, Tensor]],
        dp_group: dist.ProcessGroup | None,
        tp_group: dist.ProcessGroup | None,
    ) -> None:
        slots = list(slots)
        self.num_slots = len(slots)
        self.dp_group = dp_group if group_size(dp_group) > 1 else None
        self.tp_group = tp_group if group_size(tp_group) > 1 else None
        self._slot_of: dict[int, int] = {}
        for index, (opt_param, _) in enumerate(slots):
            if opt_param is not None:
                if id(opt_param) in self._slot_of:
                    raise ValueError(
                        f"optimizer parameter of shape {tuple(opt_param.shape)} appears in two "
                        "slots; each optimizer parameter must hold one logical tensor's piece"
                    )
                self._slot_of[id(opt_param)] = index
        self._tp_split = torch.tensor(
            [
                bool(getattr(model_param, "tensor_model_parallel", False))
                for _, model_param in slots
            ],
            dtype=torch.bool,
        )
        self._index_cache: tuple[tuple[int, ...], Tensor] | None = None
        self.calls = 0

    @property
    def is_noop(self) -> bool:
        """True when no collective is needed (DP and TP groups of size 1)."""
        return self.dp_group is None and self.tp_group is None

    def _index(self, params: list[Tensor], device: torch.device) -> Tensor:
        key = tuple(id(p) for p in params)
        if self._index_cache is None or self._index_cache[0] != key:
            try:
                rows = [self._slot_of[id(p)] for p in params]
            except KeyError:
                raise ValueError(
                    "norm_reducer got a parameter that is not one of this optimizer's "
                    "registered pieces; was the optimizer's param_groups replaced after "
                    "the reducer was built?"
                ) from None
            self._index_cache = (key, torch.tensor(rows, dtype=torch.long, device=device))
        index = self._index_cache[1]
        return index if index.device == device else index.to(device)

    def __call__(self, sq: Tensor, params: list[Tensor]) -> Tensor:
        """Return the squared norms of the whole logical tensors, rows aligned with ``params``."""
        self.calls += 1
        if self.is_noop:
            return sq
        index = self._index(params, sq.device)
        table = torch.zeros((self.num_slots, 2), dtype=torch.float32, device=sq.device)
        table.index_copy_(0, index, sq.to(torch.float32))
        if self.dp_group is not None:
            dist.all_reduce(table, group=self.dp_group)
        if self.tp_group is not None:
            split = self._tp_split.to(sq.device).unsqueeze(1)
            summed = torch.where(split, table, torch.zeros_like(table))
            dist.all_reduce(summed, group=self.tp_group)
            table = torch.where(split, summed, table)
        return table.index_select(0, index)
