"""Non-finite gradients never corrupt state: skip (default), raise, or unchecked."""

from __future__ import annotations

import copy

import pytest
import torch

from alto import ALTO, E, Lamb


def make(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(3, 4), (6,)]]


def grads(k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + k)
    return [torch.randn(s, generator=gen) for s in [(3, 4), (6,)]]


def snapshot(opt, params) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_same(a, b) -> None:
    pa, sa = a
    pb, sb = b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key, val in sa["state"][i].items():
            assert torch.equal(val, sb["state"][i][key]), key


OPTS = {
    "alto_foreach": lambda ps, **kw: ALTO(ps, lr=1e-2, weight_decay=0.1, **kw),
    "alto_single": lambda ps, **kw: ALTO(ps, lr=1e-2, weight_decay=0.1, foreach=False, **kw),
    "lamb": lambda ps, **kw: Lamb(ps, lr=1e-2, **kw),
    "e_adamw": lambda ps, **kw: E(torch.optim.AdamW(ps, lr=1e-2), alpha=-5.0, **kw),
}


@pytest.mark.parametrize("name", sorted(OPTS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_skip_leaves_everything_untouched_and_training_continues(name: str, bad: float) -> None:
    ps, clean_ps = make(), make()
    opt, clean = OPTS[name](ps), OPTS[name](clean_ps)
    for k in range(2):
        for p, q, g in zip(ps, clean_ps, grads(k)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        clean.step()
    before = snapshot(opt, ps)
    poisoned = grads(99)
    poisoned[1][2] = bad
    for p, g in zip(ps, poisoned):
        p.grad = g
    opt.step()
    assert opt.skipped_steps == 1 and opt.last_step_skipped
    assert_same(before, snapshot(opt, ps))
    assert torch.isnan(ps[1].grad[2]) or torch.isinf(ps[1].grad[2])  # caller's grad kept
    # The skipped step left no trace: the run continues like one that never saw it.
    for k in range(2, 4):
        for p, q, g in zip(ps, clean_ps, grads(k)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        clean.step()
    assert not opt.last_step_skipped and opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(ps, clean_ps))


@pytest.mark.parametrize("name", sorted(OPTS))
def test_skip_on_the_first_step_creates_no_state(name: str) -> None:
    ps = make()
    opt = OPTS[name](ps)
    for p, g in zip(ps, grads(0)):
        p.grad = g
    ps[0].grad[0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert len(opt.state) == 0 and all(
        len(s) == 0 for s in getattr(opt, "base", opt).state.values()
    )


@pytest.mark.parametrize("name", sorted(OPTS))
def test_raise_names_the_parameter_and_changes_nothing(name: str) -> None:
    ps = make()
    opt = OPTS[name](ps, on_nonfinite="raise")
    for p, g in zip(ps, grads(0)):
        p.grad = g
    opt.step()
    before = snapshot(opt, ps)
    for p, g in zip(ps, grads(1)):
        p.grad = g
    ps[1].grad[0] = float("inf")
    pattern = r"param_groups\[0\]\['params'\]\[1\]" if "e_" not in name else "non-finite"
    with pytest.raises(FloatingPointError, match=pattern):
        opt.step()
    assert_same(before, snapshot(opt, ps))
    assert opt.skipped_steps == 1


def test_unchecked_does_not_look() -> None:
    """'unchecked' is for callers that decide themselves (Megatron's found-inf logic)."""
    ps = make()
    opt = ALTO(ps, on_nonfinite="unchecked")
    for p, g in zip(ps, grads(0)):
        p.grad = g
    ps[0].grad[0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 0
    assert torch.isnan(opt.state[ps[0]]["exp_avg"]).any()
