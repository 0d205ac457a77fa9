"""Why sharded trust ratios need the norm reducer: a hand-made counterexample.

One logical tensor stored as two slices (what the DistributedOptimizer does to a
tensor that straddles a data-parallel boundary).  With slice-local norms each slice
gets its own ratio and the update differs from the whole-tensor update; summing the
squared partial norms (what ShardedNormReducer's all-reduce does across ranks)
restores the whole-tensor update exactly.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core")

from alto import ALTO
from alto.megatron.norms import ShardedNormReducer

HYPER = dict(lr=0.1, betas=(0.5, 0.9, 0.99), alpha=0.5, eps=1e-8, weight_decay=0.1)


def _whole_and_slices() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the two halves have very different ||theta|| / ||r||, so local ratios disagree
    theta = torch.cat([torch.full((4,), 3.0), torch.full((4,), 0.01)])
    grad = torch.cat([torch.full((4,), 0.001), torch.full((4,), 2.0)])
    return theta, grad, torch.tensor([4, 4])


def _step_whole(theta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    p = torch.nn.Parameter(theta.clone())
    opt = ALTO([p], **HYPER)
    p.grad = grad.clone()
    opt.step()
    return p.detach()


def _step_slices(theta: torch.Tensor, grad: torch.Tensor, reducer=None) -> torch.Tensor:
    a, b = (torch.nn.Parameter(t.clone()) for t in theta.split(4))
    opt = ALTO([a, b], norm_reducer=reducer, **HYPER)
    a.grad, b.grad = (g.clone() for g in grad.split(4))
    opt.step()
    return torch.cat([a.detach(), b.detach()])


def test_slice_local_trust_ratios_differ_from_whole_tensor() -> None:
    theta, grad, _ = _whole_and_slices()
    whole = _step_whole(theta, grad)
    local = _step_slices(theta, grad)
    assert (local - whole).abs().max() > 1e-2


def test_summed_partial_norms_reproduce_whole_tensor() -> None:
    theta, grad, _ = _whole_and_slices()
    whole = _step_whole(theta, grad)

    def sum_slices(sq: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        # both slices are pieces of ONE logical tensor: each row gets the total
        return sq.sum(dim=0, keepdim=True).expand_as(sq).clone()

    exact = _step_slices(theta, grad, reducer=sum_slices)
    torch.testing.assert_close(exact, whole, rtol=1e-6, atol=1e-7)


def test_reducer_without_groups_is_a_noop() -> None:
    a, b = torch.zeros(3), torch.zeros(2)
    reducer = ShardedNormReducer([(a, a), (b, b)], dp_group=None, tp_group=None)
    assert reducer.is_noop
    sq = torch.rand(2, 2)
    assert reducer(sq, [a, b]) is sq
    assert reducer.calls == 1


def test_reducer_rejects_a_piece_in_two_slots() -> None:
    a = torch.zeros(3)
    with pytest.raises(ValueError, match="appears in two slots"):
        ShardedNormReducer([(a, a), (a, a)], dp_group=None, tp_group=None)
