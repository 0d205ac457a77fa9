"""The torch.optim.Optimizer protocol, checked over ALTO, Lamb, E(AdamW) and E(SGD)
on every implementation path: single, foreach, blocked and fused (the Triton
kernels through their interpreter on the CPU, when triton is installed).

The shape follows torch's own generic optimizer tests (one suite, every
optimizer); the checks are this project's. Small tensors and few steps keep the
interpreted fused path affordable.
"""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from alto import ALTO, E, Lamb
from alto.optim import _impl_blocked

HAS_TRITON = __import__("importlib").util.find_spec("triton") is not None
PATHS = ["single", "foreach", "blocked", "fused"]
KINDS = ["ALTO", "Lamb", "E(AdamW)", "E(SGD)"]
PATH_KW = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "blocked": {},
    "fused": {"fused": True},
}


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """An implementation path; blocked uses 5-element blocks so tensors span several."""
    if request.param == "fused":
        if not HAS_TRITON:
            pytest.skip("the fused path needs triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("ALTO_FUSED_BLOCK", "64")
    monkeypatch.setattr(_impl_blocked, "CHUNK", 5)
    return request.param


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def make(
    kind: str, path: str, groups: list[dict] | list[torch.Tensor], **over
) -> torch.optim.Optimizer:
    """The optimizer ``kind`` over ``groups``, forced onto ``path``."""
    kw = PATH_KW[path]
    if kind == "ALTO":
        return ALTO(groups, **{"lr": 1e-2, "weight_decay": 0.1, "alpha": -2.0, **over}, **kw)
    if kind == "Lamb":
        return Lamb(groups, **{"lr": 1e-2, "weight_decay": 0.1, **over}, **kw)
    if kind == "E(AdamW)":
        return E(torch.optim.AdamW(groups, **{"lr": 1e-2, **over}), alpha=-2.0, beta=0.9, **kw)
    if kind == "E(SGD)":
        base = torch.optim.SGD(groups, **{"lr": 1e-1, "momentum": 0.9, **over})
        return E(base, alpha=0.5, beta=0.5, **kw)
    raise AssertionError(kind)


SHAPES = [(4, 3), (7,), (2, 3, 2)]


def new_params(
    dtype: torch.dtype = torch.float32, seed: int = 0, shapes=SHAPES
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def two_groups(params: list[torch.Tensor]) -> list[dict]:
    """A decay group (trust ratio) and a weight_decay=0 group (plain step)."""
    return [{"params": params[:-1]}, {"params": params[-1:], "weight_decay": 0.0}]


def grads_at(k: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + k)
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def set_grads(params: list[torch.Tensor], k: int, like: list[torch.Tensor] | None = None) -> None:
    for p, g in zip(params, grads_at(k, like if like is not None else params)):
        p.grad = g.to(p.dtype)


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for k in steps:
        set_grads(params, k)
        opt.step()


def flat_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def all_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every state tensor, E's carries and its base's included, in parameter order."""
    out = []
    owners = [opt, opt.base] if isinstance(opt, E) else [opt]
    for p in flat_params(opt):
        for owner in owners:
            st = owner.state.get(p, {})
            out.extend(torch.as_tensor(st[k]) for k in sorted(st))
    return out


def through_bytes(state_dict: dict, weights_only: bool = False) -> dict:
    """A state dict as a checkpoint would give it back (no tensor shared with a live one:
    torch's loader aliases tensors that need no cast, e.g. an AdamW base's "step")."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def own_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The state tensors this project's code allocates (E: the carries only)."""
    return [
        t
        for p in flat_params(opt)
        for t in opt.state.get(p, {}).values()
        if isinstance(t, torch.Tensor)
    ]


def assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.detach().cpu(), y.detach().cpu())


def expected_implementation(path: str) -> str:
    return path


# ----------------------------------------------------------------- dispatch
def test_implementation_names_the_path(kind: str, path: str) -> None:
    opt = make(kind, path, two_groups(new_params()))
    assert opt.implementation == expected_implementation(path)
    assert opt.implementations == [path, path]


# ------------------------------------------------------------ copy / pickle
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_then_step_matches_the_original(kind: str, path: str, how: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    run(opt, params, range(2))
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin.implementation == opt.implementation
    twin_params = flat_params(twin)
    assert all(a is not b for a, b in zip(params, twin_params))
    for k in range(2, 4):
        set_grads(params, k)
        set_grads(twin_params, k, like=params)
        opt.step()
        twin.step()
    assert_bitwise(params, twin_params)
    assert_bitwise(all_state(opt), all_state(twin))


# --------------------------------------------------------------- state dict
def test_state_dict_round_trip_is_bitwise(kind: str, path: str) -> None:
    a_params, b_params = new_params(), new_params()
    a = make(kind, path, two_groups(a_params))
    run(a, a_params, range(3))
    b = make(kind, path, two_groups(b_params))
    for x, y in zip(a_params, b_params):
        y.data.copy_(x.data)
    b.load_state_dict(through_bytes(a.state_dict()))
    assert_bitwise(all_state(a), all_state(b))
    run(a, a_params, range(3, 6))
    run(b, b_params, range(3, 6))
    assert_bitwise(a_params, b_params)
    assert_bitwise(all_state(a), all_state(b))


def test_loading_a_live_state_dict_copies_our_states(kind: str, path: str) -> None:
    """Our states (E: its carries) never share storage with the source optimizer's.

    E's base states are torch's business: torch's loader keeps a tensor that needs
    no cast, so a torch optimizer loaded from a live one shares its buffers.
    """
    a_params = new_params()
    a = make(kind, path, two_groups(a_params))
    run(a, a_params, range(2))
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    b = make(kind, path, two_groups(b_params))
    b.load_state_dict(a.state_dict())
    mine = own_state(b)
    assert mine
    for x, y in zip(own_state(a), mine):
        assert torch.equal(x, y)
        if x.numel():
            assert x.data_ptr() != y.data_ptr()


def test_weights_only_torch_load_of_the_state_dict(kind: str, path: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    run(opt, params, range(2))
    sd = through_bytes(opt.state_dict(), weights_only=True)
    other_params = [p.detach().clone().requires_grad_() for p in params]
    other = make(kind, path, two_groups(other_params))
    other.load_state_dict(sd)
    run(opt, params, range(2, 4))
    run(other, other_params, range(2, 4))
    assert_bitwise(params, other_params)


@pytest.mark.filterwarnings("ignore:fused ALTO. torch.float64 tensors")
def test_fp32_state_loads_into_fp64_parameters(kind: str, path: str) -> None:
    """On the fused path fp64 tensors take the kernels' (warned) foreach fallback."""
    p32 = new_params(torch.float32)
    o32 = make(kind, path, two_groups(p32))
    run(o32, p32, range(2))
    p64 = [p.detach().double().requires_grad_() for p in p32]
    o64 = make(kind, path, two_groups(p64))
    o64.load_state_dict(through_bytes(o32.state_dict()))
    states = [t for t in all_state(o64) if t.dim() > 0]
    assert states and all(t.dtype == torch.float64 for t in states)
    run(o32, p32, range(2, 4))
    run(o64, p64, range(2, 4))
    for x, y in zip(p32, p64):
        assert torch.allclose(x.double(), y, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- hooks
def test_every_hook_kind_is_called_exactly_once_per_call(kind: str, path: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    calls: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        def hook(*_args) -> None:
            calls[name] = calls.get(name, 0) + 1

        return hook

    opt.register_step_pre_hook(count("step_pre"))
    opt.register_step_post_hook(count("step_post"))
    opt.register_state_dict_pre_hook(count("sd_pre"))
    opt.register_state_dict_post_hook(count("sd_post"))
    opt.register_load_state_dict_pre_hook(count("load_pre"))
    opt.register_load_state_dict_post_hook(count("load_post"))
    handles = [
        register_optimizer_step_pre_hook(count("global_pre")),
        register_optimizer_step_post_hook(count("global_post")),
    ]
    try:
        set_grads(params, 0)
        opt.step()
        assert calls == {"step_pre": 1, "step_post": 1, "global_pre": 1, "global_post": 1}
        sd = opt.state_dict()
        assert calls["sd_pre"] == 1 and calls["sd_post"] == 1
        opt.load_state_dict(sd)
        assert calls["load_pre"] == 1 and calls["load_post"] == 1
        assert len(calls) == 8
    finally:
        for h in handles:
            h.remove()


def test_load_state_dict_pre_hook_can_rewrite_the_state_dict(kind: str, path: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    run(opt, params, range(1))
    sd = opt.state_dict()

    def set_lr(_opt, state_dict):
        state_dict = dict(state_dict)
        state_dict["param_groups"] = [{**g, "lr": 0.5} for g in state_dict["param_groups"]]
        return state_dict

    opt.register_load_state_dict_pre_hook(set_lr)
    opt.load_state_dict(sd)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]


# ------------------------------------------------------- groups and shapes
def test_add_param_group_after_steps(kind: str, path: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    run(opt, params, range(2))
    extra = new_params(seed=5, shapes=[(3, 2), (4,)])
    before = [p.detach().clone() for p in extra]
    opt.add_param_group({"params": extra, "lr": 5e-3})
    assert opt.implementations == [path, path, path]
    everything = params + extra
    run(opt, everything, range(2, 4))
    for p, b in zip(extra, before):
        assert not torch.equal(p.detach(), b)
    assert opt.param_groups[2]["lr"] == 5e-3


def test_zero_size_parameters(kind: str, path: str) -> None:
    params = new_params(shapes=[(4, 3), (0,), (0, 3), (5,)])
    opt = make(kind, path, two_groups(params))
    before = [p.detach().clone() for p in params]
    run(opt, params, range(3))
    assert not torch.equal(params[0].detach(), before[0])
    for p in params[1:3]:
        assert p.numel() == 0
    owner = opt.base if isinstance(opt, E) else opt
    for p in params:
        for v in owner.state[p].values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape


def test_closure_is_called_once_and_its_loss_returned(kind: str, path: str) -> None:
    params = new_params()
    opt = make(kind, path, two_groups(params))
    target = [torch.ones_like(p) for p in params]
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, target))
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor) and loss.item() > 0
    assert all(p.grad is not None for p in params)


def test_lr_scheduler_drives_the_step(kind: str, path: str) -> None:
    a_params, b_params = new_params(), new_params()
    a = make(kind, path, two_groups(a_params))
    b = make(kind, path, two_groups(b_params))
    sched = torch.optim.lr_scheduler.StepLR(a, step_size=1, gamma=0.5)
    lr0 = [g["lr"] for g in b.param_groups]
    for k in range(3):
        set_grads(a_params, k)
        set_grads(b_params, k)
        a.step()
        b.step()
        sched.step()
        for g, base in zip(b.param_groups, lr0):
            g["lr"] = base * 0.5 ** (k + 1)
    assert [g["lr"] for g in a.param_groups] == [g["lr"] for g in b.param_groups]
    assert_bitwise(a_params, b_params)


# ------------------------------------------------------------ paths agree
@pytest.mark.parametrize("kind_", KINDS)
def test_foreach_single_and_blocked_agree_on_fp64(kind_: str, monkeypatch) -> None:
    monkeypatch.setattr(_impl_blocked, "CHUNK", 5)
    results = {}
    for path in ("single", "foreach", "blocked"):
        params = new_params(torch.float64)
        opt = make(kind_, path, two_groups(params))
        assert opt.implementation == path
        run(opt, params, range(6))
        results[path] = [p.detach() for p in params] + all_state(opt)
    # The trust ratio group agrees to ~1e-9 only: its norms travel as the float32
    # [N, 2] tensor of the reducer contract; everything else to fp64 rounding.
    n_ratio = len(SHAPES) - 1  # two_groups: all but the last parameter
    for path in ("foreach", "blocked"):
        for i, (x, y) in enumerate(zip(results[path], results["single"])):
            tight = kind_.startswith("E(") or i >= n_ratio
            rtol = 1e-12 if tight else 1e-7
            assert torch.allclose(x, y, rtol=rtol, atol=1e-14), (path, i)


@pytest.mark.skipif(not HAS_TRITON, reason="the fused path needs triton")
@pytest.mark.parametrize("kind_", KINDS)
def test_fused_agrees_with_the_other_paths(kind_: str, monkeypatch) -> None:
    """fp32: the fused kernels compute in fp32 (fp64 parameters take their foreach fallback)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ALTO_FUSED_BLOCK", "64")
    results = {}
    for path in ("single", "fused"):
        params = new_params(torch.float32)
        opt = make(kind_, path, two_groups(params))
        assert opt.implementation == path
        run(opt, params, range(4))
        results[path] = [p.detach() for p in params]
    for x, y in zip(results["fused"], results["single"]):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)


# -------------------------------------------------- maximize and tensor lr
def test_maximize_equals_minimizing_the_negated_gradients(kind: str, path: str) -> None:
    a_params, b_params = new_params(), new_params()
    a = make(kind, path, two_groups(a_params), maximize=True)
    b = make(kind, path, two_groups(b_params))
    for k in range(3):
        set_grads(a_params, k)
        for p, g in zip(b_params, grads_at(k, b_params)):
            p.grad = -g
        a.step()
        b.step()
    assert_bitwise(a_params, b_params)


@pytest.mark.parametrize("kind_", ["ALTO", "Lamb"])
def test_tensor_lr_equals_the_float(kind_: str, path: str) -> None:
    lr = torch.tensor(1e-2)
    a_params, b_params = new_params(), new_params()
    a = make(kind_, path, two_groups(a_params), lr=float(lr))
    b = make(kind_, path, two_groups(b_params), lr=lr)
    run(a, a_params, range(3))
    run(b, b_params, range(3))
    assert_bitwise(a_params, b_params)


# -------------------------------------------------------- documented errors
def test_documented_errors_for_unsupported_features() -> None:
    p = new_params()
    with pytest.raises(TypeError, match=r"must be a floating-point tensor \(real\), got dtype "):
        ALTO([torch.zeros(3, dtype=torch.complex64)])
    with pytest.raises(TypeError, match=r"complex parameters: wrap with torch.view_as_real"):
        Lamb([torch.zeros(3, dtype=torch.complex64)])
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'differentiable'"):
        ALTO(p, differentiable=True)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'capturable'"):
        Lamb(p, capturable=True)
    with pytest.raises(ValueError, match=r"cannot both be set"):
        ALTO(p, foreach=True, fused=True)
    with pytest.raises(ValueError, match=r"cannot both be set"):
        ALTO([{"params": p, "foreach": True, "fused": True}])
    with pytest.raises(
        TypeError, match=r"param_groups\[1\]\['foreach'\] must be True, False or None"
    ):
        ALTO(p).add_param_group({"params": [torch.zeros(2)], "foreach": 1})
    with pytest.raises(TypeError, match=r"maximize must be True or False, got 1"):
        ALTO(p, maximize=1)
    with pytest.raises(ValueError, match=r"state_dtype=torch.bfloat16 needs the fused"):
        ALTO(p, state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"lr as a tensor must hold exactly one"):
        Lamb(p, lr=torch.ones(2))
    with pytest.raises(ValueError, match=r"fused=True cannot build a differentiable g~"):
        E(torch.optim.SGD(p, lr=0.1, differentiable=True), fused=True)
    with pytest.raises(TypeError, match=r"must be a floating-point or complex tensor"):
        E(torch.optim.SGD([torch.zeros(2, dtype=torch.int64)], lr=0.1))


def test_a_rejected_group_is_not_left_behind() -> None:
    opt = ALTO(new_params())
    with pytest.raises(ValueError, match=r"cannot both be set"):
        opt.add_param_group({"params": [torch.zeros(2)], "foreach": True, "fused": True})
    assert len(opt.param_groups) == 1 and opt.implementations == ["blocked"]
