"""Chunk tables and pointer tables: how one launch finds every tensor of a group.

A *layout* depends only on the tensors' sizes and dtypes, so it is built once
per parameter-group shape and cached (a training run sees one or two).  It
sorts the tensors into dtype buckets (one launch each, since Triton fixes
element types at compile time), cuts each tensor into BLOCK-sized chunks and
records, on the device:

* ``chunk_pos`` / ``chunk_start``: per chunk slot, the tensor's position in
  bucket order and the element offset; per bucket first its *full* chunks
  (unmasked launch), then its ragged tails (masked launch);
* ``numel`` and ``orig`` (input position) per bucket-order position;
* ``full_begin`` / ``full_end`` / ``tail_slot``: which chunk slots hold a
  tensor's partial norms, for the deterministic per-tensor reduction.

A *pointer table* holds the raw addresses, one int64 row per role (param,
grad, m, v, c, step for ALTO), in bucket order.  ``_ops`` caches it (with the
layout and the validation of the tensors) by the tuple of addresses, so
steady-state training and CUDA-graph replay pay no host-to-device copy.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_DEFAULT_BLOCK = 4096
_DEFAULT_WARPS = 8
_CACHE_SIZE = 32


def _env_power_of_two(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high or value & (value - 1):
        raise ValueError(f"{name}={value} must be a power of two in [{low}, {high}]")
    return value


def block_size() -> int:
    """Elements per program (env ALTO_FUSED_BLOCK, for tuning on a new GPU).

    At least 16, so that every chunk of a 16-byte aligned tensor starts 16-byte
    aligned (the vectorisation hint the kernels give the compiler).
    """
    return _env_power_of_two("ALTO_FUSED_BLOCK", _DEFAULT_BLOCK, 16, 2**16)


def num_warps() -> int:
    """Warps per program (env ALTO_FUSED_WARPS)."""
    return _env_power_of_two("ALTO_FUSED_WARPS", _DEFAULT_WARPS, 1, 32)


@dataclass(frozen=True)
class Bucket:
    """Tensors that share element types: one masked and one unmasked launch."""

    dtypes: tuple[torch.dtype, ...]
    positions: tuple[int, int]  # bucket-order positions [lo, hi)
    full: tuple[int, int]  # chunk slots of the unmasked launch
    tail: tuple[int, int]  # chunk slots of the masked launch


@dataclass(frozen=True)
class Layout:
    """Device-resident chunk table of one group shape; see the module docstring."""

    n_tensors: int
    n_slots: int
    block: int
    order: tuple[int, ...]  # bucket-order position -> input index
    buckets: tuple[Bucket, ...]
    chunk_pos: torch.Tensor  # int32 [n_slots]
    chunk_start: torch.Tensor  # int64 [n_slots]
    numel: torch.Tensor  # int64 [n_tensors]
    orig: torch.Tensor  # int32 [n_tensors]
    full_begin: torch.Tensor  # int32 [n_tensors]
    full_end: torch.Tensor  # int32 [n_tensors]
    tail_slot: torch.Tensor  # int32 [n_tensors]


@dataclass(frozen=True)
class PointerTable:
    """Addresses of every role in bucket order, plus per-bucket 16-byte alignment."""

    table: torch.Tensor  # int64 [roles, n_tensors] on the device
    aligned: tuple[bool, ...]  # per bucket


_layouts: OrderedDict[tuple, Layout] = OrderedDict()
_lock = threading.Lock()


def remember(cache: OrderedDict, key: tuple, value: Any, limit: int = _CACHE_SIZE) -> Any:
    """Insert into a bounded LRU cache and return ``value``."""
    with _lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > limit:
            cache.popitem(last=False)
    return value


def get_layout(
    numels: Sequence[int], dtype_keys: Sequence[tuple[torch.dtype, ...]], device: torch.device
) -> Layout:
    """Cached :class:`Layout` for tensors of these sizes and per-role dtypes."""
    block = block_size()
    key = (device, block, tuple(numels), tuple(dtype_keys))
    layout = _layouts.get(key)
    if layout is not None:
        _layouts.move_to_end(key)
        return layout
    return remember(_layouts, key, _build_layout(list(numels), list(dtype_keys), device, block))


def _build_layout(
    numels: list[int], dtype_keys: list[tuple[torch.dtype, ...]], device: torch.device, block: int
) -> Layout:
    n = len(numels)
    groups: dict[tuple[torch.dtype, ...], list[int]] = {}
    for i, k in enumerate(dtype_keys):
        groups.setdefault(k, []).append(i)
    order: list[int] = [i for members in groups.values() for i in members]
    sorted_numel = torch.tensor([numels[i] for i in order], dtype=torch.int64)
    n_full = sorted_numel // block
    has_tail = (sorted_numel % block) != 0

    chunk_pos: list[torch.Tensor] = []
    chunk_start: list[torch.Tensor] = []
    full_begin = torch.zeros(n, dtype=torch.int64)
    full_end = torch.zeros(n, dtype=torch.int64)
    tail_slot = torch.full((n,), -1, dtype=torch.int64)
    buckets: list[Bucket] = []
    slot = 0
    lo = 0
    for dtypes, members in groups.items():
        hi = lo + len(members)
        pos = torch.arange(lo, hi, dtype=torch.int64)
        counts = n_full[lo:hi]
        # full chunks: tensor pos repeated n_full times, starts 0, B, 2B, ...
        rep = torch.repeat_interleave(pos, counts)
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(int(counts.sum()), dtype=torch.int64) - torch.repeat_interleave(
            first, counts
        )
        full_begin[lo:hi] = slot + first
        full_end[lo:hi] = slot + first + counts
        full_slots = (slot, slot + rep.numel())
        slot += rep.numel()
        chunk_pos.append(rep)
        chunk_start.append(within * block)
        # tails: one masked chunk for each tensor whose size is not a multiple of B
        tails = pos[has_tail[lo:hi]]
        tail_slot[tails] = torch.arange(slot, slot + tails.numel(), dtype=torch.int64)
        tail_slots = (slot, slot + tails.numel())
        slot += tails.numel()
        chunk_pos.append(tails)
        chunk_start.append(n_full[tails] * block)
        buckets.append(Bucket(dtypes, (lo, hi), full_slots, tail_slots))
        lo = hi

    if slot >= 2**31:
        raise ValueError(
            f"fused ALTO: {slot} chunks exceed the int32 chunk table; raise ALTO_FUSED_BLOCK"
        )
    cat_pos = torch.cat(chunk_pos) if chunk_pos else torch.zeros(0, dtype=torch.int64)
    cat_start = torch.cat(chunk_start) if chunk_start else torch.zeros(0, dtype=torch.int64)
    # one host-to-device copy for all int32 metadata, one for int64
    i32 = torch.cat(
        [cat_pos, torch.tensor(order, dtype=torch.int64), full_begin, full_end, tail_slot]
    ).to(torch.int32)
    i64 = torch.cat([cat_start, sorted_numel])
    i32 = i32.to(device)
    i64 = i64.to(device)
    s = slot
    return Layout(
        n_tensors=n,
        n_slots=s,
        block=block,
        order=tuple(order),
        buckets=tuple(buckets),
        chunk_pos=i32[:s],
        chunk_start=i64[:s],
        numel=i64[s:],
        orig=i32[s : s + n],
        full_begin=i32[s + n : s + 2 * n],
        full_end=i32[s + 2 * n : s + 3 * n],
        tail_slot=i32[s + 3 * n : s + 4 * n],
    )


def build_pointer_table(
    layout: Layout, addresses: Sequence[Sequence[int]], device: torch.device
) -> PointerTable:
    """Device table of the roles' addresses (input order in, bucket order out)."""
    order = layout.order
    rows = [[role[i] for i in order] for role in addresses]
    aligned = []
    for bucket in layout.buckets:
        lo, hi = bucket.positions
        aligned.append(all(a % 16 == 0 for r in rows for a in r[lo:hi]))
    host = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), layout.n_tensors)
    if device.type == "cuda":
        # pinned + non_blocking: no host sync; the caching host allocator keeps
        # the staging buffer alive until the copy has run
        dev = host.pin_memory().to(device, non_blocking=True)
    else:
        dev = host
    return PointerTable(dev, tuple(aligned))
