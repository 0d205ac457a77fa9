"""megatron's model-parallel process groups, set up and torn down whole.

``parallel_state.destroy_model_parallel()`` forgets megatron's groups but destroys only
its ``*_GLOO`` ones: every other group stays registered with torch.distributed and
alive.  On a GPU that is a leaked NCCL communicator per group; on CPU, where every group
is gloo, each keeps its worker and connection threads.  A process that re-initialises
megatron for a new layout (a sweep or a test that walks layouts in one process; the
engine's Ray workers initialise once, and a retry gets fresh processes) piles them up.
With dropped models that kept theirs alive too (tests/megatron/megatron_harness.py,
``release``), 45 layouts in one process left ~2,400 threads per rank and made a 3-step
train 28x slower by the end.

:func:`initialize_model_parallel` records which groups megatron's initialisation
created; :func:`destroy_model_parallel` destroys exactly those (and megatron's own
bookkeeping), so groups created by anyone else, the default group included, are left
alone.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch.distributed import distributed_c10d

#: the groups the last initialize_model_parallel created, in creation order
_created: list[dist.ProcessGroup] = []


def live_groups() -> list[dist.ProcessGroup]:
    """Every group this rank belongs to, the default group excepted (torch keeps no
    public list of them: this reads its registry)."""
    return [
        group for group in distributed_c10d._world.pg_map if group is not dist.GroupMember.WORLD
    ]


def initialize_model_parallel(**sizes: Any) -> None:
    """megatron's ``initialize_model_parallel(**sizes)``, first tearing down (whole) any
    groups a previous call here created."""
    from megatron.core import parallel_state

    destroy_model_parallel()
    before = set(live_groups())
    parallel_state.initialize_model_parallel(**sizes)
    _created[:] = [group for group in live_groups() if group not in before]


def destroy_model_parallel() -> None:
    """megatron's ``destroy_model_parallel()`` plus the groups it leaves alive."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    live = set(live_groups())
    for group in _created:
        if group in live:  # megatron has already destroyed its *_GLOO groups
            dist.destroy_process_group(group)
    _created.clear()
