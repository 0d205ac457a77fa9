"""The torch.optim contract defects of issue 14, one test each.

Every test here failed on the code before the fix (checked by running this file
against that tree); ``test_conformance.py`` then runs the whole contract over
every optimizer and implementation path.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from alto import ALTO, E, Lamb


def _params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(4, 3, generator=gen, dtype=dtype).requires_grad_(),
        torch.randn(5, generator=gen, dtype=dtype).requires_grad_(),
    ]


def _grads(k: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in like]


def _set(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


@pytest.mark.parametrize("cls", [ALTO, Lamb])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_optimizer_keeps_its_options_and_steps(cls, how) -> None:
    params = _params()
    opt = cls(params, lr=1e-2, weight_decay=0.1, on_nonfinite="raise", max_grad_norm=0.5)
    _set(params, _grads(0, params))
    opt.step()
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin.on_nonfinite == "raise" and twin.max_grad_norm == 0.5
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    for k in (1, 2):
        _set(params, _grads(k, params))
        _set(twin_params, _grads(k, params))
        opt.step()
        twin.step()  # AttributeError: no attribute 'on_nonfinite' before the fix
    for a, b in zip(params, twin_params):
        assert torch.equal(a, b)


def test_e_state_dict_runs_the_hooks_registered_on_e() -> None:
    params = _params()
    opt = E(torch.optim.AdamW(params, lr=1e-2), alpha=-2.0, beta=0.9)
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    _set(params, _grads(0, params))
    opt.step()
    sd = opt.state_dict()
    assert calls == ["sd_pre", "sd_post"]
    opt.load_state_dict(sd)
    assert calls == ["sd_pre", "sd_post", "load_pre", "load_post"]


def test_e_state_dict_post_hook_result_is_returned() -> None:
    opt = E(torch.optim.SGD(_params(), lr=0.1), alpha=0.5, beta=0.5)
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": 7})
    assert opt.state_dict()["tag"] == 7


def test_one_e_step_fires_the_global_step_hooks_once() -> None:
    params = _params()
    opt = E(torch.optim.AdamW(params, lr=1e-2), alpha=-2.0, beta=0.9)
    seen: list[str] = []
    pre = register_optimizer_step_pre_hook(lambda o, a, k: seen.append(f"pre {type(o).__name__}"))
    post = register_optimizer_step_post_hook(
        lambda o, a, k: seen.append(f"post {type(o).__name__}")
    )
    base_local: list[str] = []
    opt.base.register_step_pre_hook(lambda o, a, k: base_local.append("base pre"))
    opt.base.register_step_post_hook(lambda o, a, k: base_local.append("base post"))
    try:
        _set(params, _grads(0, params))
        opt.step()
    finally:
        pre.remove()
        post.remove()
    assert seen == ["pre E", "post E"]  # was ['pre E', 'pre AdamW', 'post AdamW', 'post E']
    assert base_local == ["base pre", "base post"]  # hooks on the base itself still run


NO_TRITON = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # as if triton were not installed
    import pytest, torch
    from alto import ALTO, E, Lamb
    from alto.optim import _dispatch
    ps = [torch.nn.Parameter(torch.ones(3))]
    for make in (lambda **k: ALTO(ps, **k), lambda **k: Lamb(ps, **k),
                 lambda **k: E(torch.optim.SGD(ps, lr=0.1), **k)):
        with pytest.raises(ValueError, match="fused=True is unavailable: triton is not installed"):
            make(fused=True)
    # fused=None on all-CUDA parameters (simulated): falls back instead of crashing
    _dispatch._all_cuda = lambda params: True
    impl = _dispatch.resolve(None, None, ps)
    assert impl.name == "blocked", impl
    assert _dispatch.load_fused()[0] is None
    print("OK")
    """
)


def test_without_triton_fused_is_a_value_error_and_the_default_falls_back() -> None:
    env_script = "import os; os.environ['TRITON_INTERPRET'] = '1'\n" + NO_TRITON
    out = subprocess.run(
        [sys.executable, "-c", env_script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


@pytest.mark.parametrize("cls", [ALTO, Lamb])
@pytest.mark.parametrize("foreach", [None, True, False])
def test_tensor_lr_is_supported_and_equals_the_float(cls, foreach) -> None:
    a, b = _params(), _params()
    lr = torch.tensor(1e-2)  # float32: compare with the float it holds
    oa = cls(a, lr=float(lr), weight_decay=0.1, foreach=foreach)
    ob = cls(b, lr=lr, weight_decay=0.1, foreach=foreach)  # TypeError before the fix
    assert ob.param_groups[0]["lr"] is lr
    for k in range(3):
        _set(a, _grads(k, a))
        _set(b, _grads(k, a))
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_tensor_lr_with_several_values_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"lr as a tensor must hold exactly one"):
        ALTO(_params(), lr=torch.tensor([1e-2, 1e-3]))
    with pytest.raises(ValueError, match=r"lr must be >= 0"):
        ALTO(_params(), lr=torch.tensor(-1.0))


def test_foreach_in_a_param_group_selects_that_groups_implementation() -> None:
    a, b = _params()
    opt = ALTO([{"params": [a], "foreach": False}, {"params": [b]}], lr=1e-2)
    assert opt.implementations == ["single", "blocked"]
    opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "foreach": True})
    assert opt.implementations == ["single", "blocked", "foreach"]
    assert opt.implementation == "single+blocked+foreach"


def test_e_foreach_true_really_runs_torch_foreach_ops(monkeypatch) -> None:
    """E(foreach=True) said "foreach" but ran the cache-blocked transform on the CPU."""
    calls = []
    original = torch._foreach_mul

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    ps = _params()
    opt = E(torch.optim.SGD(ps, lr=0.1, foreach=False), alpha=0.5, beta=0.5, foreach=True)
    _set(ps, _grads(0, ps))
    monkeypatch.setattr(torch, "_foreach_mul", spy)
    opt.step()
    assert calls, "E's transform did not run torch's foreach ops"
    assert opt.implementation == "foreach"


def test_group_foreach_false_really_runs_the_single_tensor_code(monkeypatch) -> None:
    from alto.optim import _impl_single

    calls = []
    original = _impl_single.Single.moments_and_sq_norms

    def spy(self, params, *args, **kwargs):
        calls.append(len(params))
        return original(self, params, *args, **kwargs)

    monkeypatch.setattr(_impl_single.Single, "moments_and_sq_norms", spy)
    a, b = _params()
    opt = ALTO([{"params": [a], "foreach": False}, {"params": [b]}], lr=1e-2)
    _set([a, b], _grads(0, [a, b]))
    opt.step()
    assert calls == [1]


@pytest.mark.parametrize("foreach", [None, True, False])
def test_e_takes_complex_parameters_like_its_base(foreach) -> None:
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(4, 3, generator=gen, dtype=torch.complex64)
    grads = [torch.randn(4, 3, generator=gen, dtype=torch.complex64) for _ in range(3)]
    p = p0.clone().requires_grad_()
    alpha, beta, lr = -2.0, 0.9, 0.1
    opt = E(torch.optim.SGD([p], lr=lr), alpha=alpha, beta=beta, foreach=foreach)
    # reference: a_k = beta a_{k-1} + (1-beta)(g_k - g_{k-1}), theta -= lr (g + alpha a)
    want, a, g_prev = p0.clone().to(torch.complex128), 0.0, 0.0
    for g in grads:
        p.grad = g.clone()
        opt.step()  # TypeError "must be a floating-point tensor" before the fix
        g = g.to(torch.complex128)
        a = beta * a + (1 - beta) * (g - g_prev)
        want = want - lr * (g + alpha * a)
        g_prev = g
    assert opt.state[p]["diff_carry"].dtype == torch.complex64
    assert torch.allclose(p.detach().to(torch.complex128), want, rtol=1e-5, atol=1e-5)


def test_e_with_a_differentiable_base_builds_g_tilde_in_the_graph() -> None:
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, dtype=torch.float64, requires_grad=True)
    p = w.clone()  # a non-leaf, so the step can update it in place under autograd
    p.grad = g
    lr, alpha, beta = 0.1, 0.5, 0.9
    opt = E(torch.optim.SGD([p], lr=lr, differentiable=True), alpha=alpha, beta=beta)
    opt.step()
    p.sum().backward()
    # first step: c = 0, g~ = (1 + alpha (1-beta)) g, p = w - lr g~
    s = 1.0 + alpha * (1.0 - beta)
    assert g.grad is not None, "the update does not depend on the gradient's graph"
    assert torch.allclose(g.grad, torch.full_like(g, -lr * s))
    assert torch.allclose(w.grad, torch.ones_like(w))
    assert opt.implementation == "single"  # out of place, one tensor at a time


@pytest.mark.parametrize("cls", [ALTO, Lamb])
@pytest.mark.parametrize("foreach", [None, True, False])
def test_maximize_is_minimizing_the_negated_objective(cls, foreach) -> None:
    a, b = _params(), _params()
    oa = cls(a, lr=1e-2, weight_decay=0.1, foreach=foreach, maximize=True)
    ob = cls(b, lr=1e-2, weight_decay=0.1, foreach=foreach)
    assert oa.param_groups[0]["maximize"] is True
    for k in range(3):
        gs = _grads(k, a)
        _set(a, gs)
        _set(b, [-g for g in gs])
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
