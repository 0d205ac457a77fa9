"""The norm_reducer hook: once per step, [N, 2] squared partial norms, sharding works."""

from __future__ import annotations

import threading

import pytest
import torch

from alto import ALTO


class Recorder:
    def __init__(self, transform=None) -> None:
        self.calls: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        self.transform = transform

    def __call__(self, sq: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        self.calls.append((sq.clone(), list(params)))
        return sq if self.transform is None else self.transform(sq)


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(4, 3), (5,), (2, 2)]]


def set_grads(params: list[torch.Tensor], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single"])
def test_called_once_per_step_with_squared_norms_in_group_order(foreach: bool) -> None:
    ps = make_params()
    rec = Recorder()
    opt = ALTO(
        [{"params": [ps[0]]}, {"params": [ps[1]], "weight_decay": 0.0}, {"params": [ps[2]]}],
        lr=1e-2,
        weight_decay=0.1,
        norm_reducer=rec,
        foreach=foreach,
    )
    for k in range(3):
        set_grads(ps, k)
        if k == 2:
            ps[2].grad = None  # no gradient: not a row this step
        before = [p.detach().clone() for p in ps]
        opt.step()
        assert len(rec.calls) == k + 1
        sq, plist = rec.calls[-1]
        expected = [ps[0], ps[2]] if k < 2 else [ps[0]]
        assert [id(p) for p in plist] == [id(p) for p in expected]
        assert sq.dtype == torch.float32 and sq.shape == (len(expected), 2)
        idx = {id(p): i for i, p in enumerate(ps)}
        for row, p in zip(sq, expected):
            theta = before[idx[id(p)]]
            torch.testing.assert_close(row[0], theta.square().sum(), rtol=1e-5, atol=0)
            assert row[1] > 0


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single"])
def test_called_with_empty_tensor_when_no_trust_ratio_parameter(foreach: bool) -> None:
    ps = make_params()
    rec = Recorder()
    opt = ALTO(ps, weight_decay=0.0, norm_reducer=rec, foreach=foreach)
    set_grads(ps, 0)
    opt.step()
    for p in ps:
        p.grad = None
    opt.step()  # no gradients at all: the collective must still happen
    assert len(rec.calls) == 2
    assert all(sq.shape == (0, 2) and plist == [] for sq, plist in rec.calls)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single"])
def test_reducer_output_drives_the_ratios(foreach: bool) -> None:
    """x4 on ||theta||^2 doubles the ratio, so the first step's update doubles."""

    def first_delta(transform) -> list[torch.Tensor]:
        ps = make_params()
        opt = ALTO(ps, lr=1e-2, weight_decay=0.1, norm_reducer=Recorder(transform), foreach=foreach)
        set_grads(ps, 0)
        before = [p.detach().clone() for p in ps]
        opt.step()
        return [p.detach() - b for p, b in zip(ps, before)]

    plain = first_delta(None)
    scaled = first_delta(lambda sq: sq * torch.tensor([4.0, 1.0]))
    for a, b in zip(plain, scaled):
        torch.testing.assert_close(b, 2 * a, rtol=1e-5, atol=1e-7)
    # A zero ||r||^2 makes the published ratio 1: the update is -lr * r.
    unit = first_delta(lambda sq: sq * torch.tensor([1.0, 0.0]))
    ps = make_params()
    opt = ALTO(ps, lr=1e-2, weight_decay=0.1, foreach=foreach)
    set_grads(ps, 0)
    grads = [p.grad.clone() for p in ps]
    opt.step()
    for d, p, g in zip(unit, make_params(), grads):
        # step 1 with zero state: m_hat = g~, v_hat = g~^2, g~ = (1 + alpha(1-b1)) g
        gt = (1 + -5.0 * 0.01) * g
        r = gt / (gt.abs() + 1e-6) + 0.1 * p.detach()
        torch.testing.assert_close(d, -1e-2 * r, rtol=1e-5, atol=1e-7)


class ThreadAllReduce:
    """A sum all-reduce between threads: stands in for torch.distributed in the test."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world, timeout=60)
        self.buffers: list[torch.Tensor | None] = [None] * world
        self.calls = [0] * world

    def reducer(self, rank: int):
        def reduce(sq: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
            self.calls[rank] += 1
            self.buffers[rank] = sq.clone()
            self.barrier.wait()
            total = torch.stack(self.buffers).sum(0)
            self.barrier.wait()
            return total

        return reduce


@pytest.mark.timeout(120)
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single"])
def test_sharded_parameters_with_summing_reducer_match_unsharded(foreach: bool) -> None:
    """Two 'ranks' each own a contiguous half of every flattened tensor (as Megatron's
    distributed optimizer does); summing partial norms reproduces unsharded ALTO."""
    full = make_params()
    shards = [
        [torch.nn.Parameter(p.detach().flatten().chunk(2)[r].clone()) for p in full]
        for r in range(2)
    ]
    kw = dict(lr=1e-2, weight_decay=0.1, foreach=foreach)
    full_opt = ALTO([{"params": full[:2]}, {"params": full[2:], "weight_decay": 0.0}], **kw)
    comm = ThreadAllReduce(2)
    shard_opts = [
        ALTO(
            [{"params": s[:2]}, {"params": s[2:], "weight_decay": 0.0}],
            **kw,
            norm_reducer=comm.reducer(r),
        )
        for r, s in enumerate(shards)
    ]
    errors: list[BaseException] = []

    def run_rank(r: int, k: int) -> None:
        try:
            shard_opts[r].step()
        except BaseException as exc:
            errors.append(exc)
            comm.barrier.abort()

    for k in range(10):
        set_grads(full, k)
        for r in range(2):
            for p, q in zip(full, shards[r]):
                q.grad = p.grad.flatten().chunk(2)[r].clone()
        full_opt.step()
        threads = [threading.Thread(target=run_rank, args=(r, k)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    assert comm.calls == [10, 10]
    for i, p in enumerate(full):
        joined = torch.cat([shards[0][i].detach(), shards[1][i].detach()])
        torch.testing.assert_close(joined, p.detach().flatten(), rtol=1e-6, atol=1e-7)
