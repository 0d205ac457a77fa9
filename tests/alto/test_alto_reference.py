"""ALTO, Lamb and E(...) against the float64 paper-equation reference over 100 steps."""

from __future__ import annotations

import pytest
import torch
from alto_reference import RefALTO, RefE, RefGroup

from alto import ALTO, E, Lamb
from alto.optim import _impl_blocked

STEPS = 100

# The three CPU code paths: the cache-blocked one (with tiny blocks, so that tensors
# span many blocks), plain foreach ops (what runs on CUDA), and single-tensor.
PATHS = ["blocked", "foreach", "single"]


FOREACH_ARG = {"blocked": None, "foreach": True, "single": False}


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool | None:
    """Select a code path; returns the ``foreach`` argument that picks it."""
    monkeypatch.setattr(_impl_blocked, "CHUNK", 7)
    return FOREACH_ARG[request.param]


SHAPES = [(6, 5), (7,), (3, 4, 2), (5, 3), (9,)]


def make_problem(seed: int) -> dict:
    """A convex problem per tensor: grad = h * (theta - target) + noise_k (closed loop)."""
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    init[4].zero_()  # a zero-initialised tensor: ||theta|| = 0 -> ratio 1 on step 1
    return {
        "init": init,
        "h": [0.5 + torch.rand(s, generator=gen, dtype=torch.float64) * 2 for s in SHAPES],
        "target": [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES],
        "noise": [
            [0.3 * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
            for _ in range(STEPS)
        ],
    }


def grads_for(problem: dict, params: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    return [
        (h.to(p.dtype) * (p.detach() - t.to(p.dtype)) + n.to(p.dtype))
        for p, h, t, n in zip(params, problem["h"], problem["target"], problem["noise"][k])
    ]


# Three groups: defaults; an lr override with weight_decay 0 (plain step); betas and
# weight decay overrides, holding the zero-initialised tensor.
GROUP_SPLIT = [(0, 2), (2, 3), (3, 5)]


def alto_groups(params: list[torch.Tensor]) -> list[dict]:
    return [
        {"params": params[0:2]},
        {"params": params[2:3], "lr": 3e-3, "weight_decay": 0.0},
        {"params": params[3:5], "betas": (0.9, 0.8, 0.95), "weight_decay": 1e-3},
    ]


def ref_groups(params: list[torch.Tensor], defaults: dict, overrides: list[dict]) -> list[RefGroup]:
    out = []
    for (a, b), over in zip(GROUP_SPLIT, overrides):
        kw = {**defaults, **over}
        out.append(RefGroup(params=params[a:b], **kw))
    return out


def run_lib(problem: dict, dtype: torch.dtype, make_opt) -> list[torch.Tensor]:
    params = [t.to(dtype).clone().requires_grad_() for t in problem["init"]]
    opt = make_opt(params)
    for k in range(STEPS):
        for p, g in zip(params, grads_for(problem, params, k)):
            p.grad = g
        opt.step()
    return [p.detach() for p in params]


def run_ref(problem: dict, make_ref) -> list[torch.Tensor]:
    params = [t.clone() for t in problem["init"]]
    ref = make_ref(params)
    for k in range(STEPS):
        gs = grads_for(problem, params, k)
        ref.step([gs[a:b] for a, b in GROUP_SPLIT])
    return params


def assert_rel_close(got: list[torch.Tensor], want: list[torch.Tensor], rel: float) -> None:
    for i, (x, y) in enumerate(zip(got, want)):
        err = float((x.double() - y).abs().max())
        scale = float(y.abs().max())
        assert err <= rel * scale, f"tensor {i}: max error {err:.3e} > {rel:g} * {scale:.3e}"


ALTO_KW = dict(lr=1e-2, betas=(0.99, 0.9, 0.99), alpha=-5.0, eps=1e-6, weight_decay=1e-2)
ALTO_OVERRIDES = [
    {},
    {"lr": 3e-3, "weight_decay": 0.0},
    {"betas": (0.9, 0.8, 0.95), "weight_decay": 1e-3},
]


@pytest.mark.parametrize("alpha", [-5.0, 0.5])
def test_alto_fp32_matches_reference(path: bool, alpha: float) -> None:
    foreach = path
    problem = make_problem(1)
    kw = {**ALTO_KW, "alpha": alpha}
    got = run_lib(problem, torch.float32, lambda ps: ALTO(alto_groups(ps), **kw, foreach=foreach))
    want = run_ref(problem, lambda ps: RefALTO(ref_groups(ps, kw, ALTO_OVERRIDES)))
    assert_rel_close(got, want, 1e-5)


def test_alto_fp64_matches_reference_tightly(path: bool) -> None:
    """In float64 only the float32 norm tensor differs: a formula slip would show."""
    foreach = path
    problem = make_problem(2)
    got = run_lib(
        problem, torch.float64, lambda ps: ALTO(alto_groups(ps), **ALTO_KW, foreach=foreach)
    )
    want = run_ref(problem, lambda ps: RefALTO(ref_groups(ps, ALTO_KW, ALTO_OVERRIDES)))
    assert_rel_close(got, want, 1e-6)


def test_alto_paper_ratio_and_clipping_match_reference(path: bool) -> None:
    foreach = path
    problem = make_problem(3)
    eps23 = (1e-3, 1e-2)
    got = run_lib(
        problem,
        torch.float32,
        lambda ps: ALTO(
            alto_groups(ps),
            **ALTO_KW,
            trust_ratio="paper",
            trust_ratio_eps=eps23,
            max_grad_norm=0.5,
            foreach=foreach,
        ),
    )
    want = run_ref(
        problem,
        lambda ps: RefALTO(
            ref_groups(ps, ALTO_KW, ALTO_OVERRIDES),
            ratio="paper",
            ratio_eps=eps23,
            max_grad_norm=0.5,
        ),
    )
    assert_rel_close(got, want, 1e-5)


def test_clipping_does_not_touch_caller_gradients() -> None:
    p = torch.nn.Parameter(torch.ones(10))
    opt = ALTO([p], max_grad_norm=1e-3)
    g = torch.full((10,), 7.0)
    p.grad = g
    opt.step()
    assert p.grad is g and torch.equal(g, torch.full((10,), 7.0))


def test_lamb_matches_reference(path: bool) -> None:
    foreach = path
    problem = make_problem(4)
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=1e-2)
    over = [{}, {"lr": 3e-3, "weight_decay": 0.0}, {"betas": (0.8, 0.95), "weight_decay": 1e-3}]

    def groups(ps):
        return [{"params": ps[a:b], **o} for (a, b), o in zip(GROUP_SPLIT, over)]

    got = run_lib(problem, torch.float32, lambda ps: Lamb(groups(ps), **kw, foreach=foreach))
    want = run_ref(problem, lambda ps: RefALTO(ref_groups(ps, kw, over)))
    assert_rel_close(got, want, 1e-5)


def test_e_adamw_matches_reference(path: bool) -> None:
    foreach = path
    problem = make_problem(5)
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)
    over = [{}, {"lr": 3e-3, "weight_decay": 0.0}, {"betas": (0.8, 0.95)}]

    def groups(ps):
        return [{"params": ps[a:b], **o} for (a, b), o in zip(GROUP_SPLIT, over)]

    def make(ps):
        base = torch.optim.AdamW(groups(ps), **kw, foreach=foreach)
        return E(base, alpha=-5.0, beta=0.99, foreach=foreach)

    got = run_lib(problem, torch.float32, make)
    want = run_ref(problem, lambda ps: RefE(ref_groups(ps, kw, over), "adamw", -5.0, 0.99))
    assert_rel_close(got, want, 1e-5)


def test_e_sgd_momentum_matches_reference(path: bool) -> None:
    foreach = path
    problem = make_problem(6)
    kw = dict(lr=1e-2, weight_decay=1e-3)
    over = [{}, {"lr": 3e-3, "weight_decay": 0.0}, {"weight_decay": 1e-2}]

    def groups(ps):
        return [{"params": ps[a:b], **o} for (a, b), o in zip(GROUP_SPLIT, over)]

    def make(ps):
        base = torch.optim.SGD(groups(ps), **kw, momentum=0.9, foreach=foreach)
        return E(base, alpha=0.5, beta=0.01, foreach=foreach)

    ref_kw = {**kw, "betas": (), "eps": 0.0}
    got = run_lib(problem, torch.float32, make)
    want = run_ref(
        problem, lambda ps: RefE(ref_groups(ps, ref_kw, over), "sgd", 0.5, 0.01, momentum=0.9)
    )
    assert_rel_close(got, want, 1e-5)


def test_alto_bf16_step_is_the_fp32_step_rounded_once(path: bool) -> None:
    """bf16 parameters: fp32 states, the update computed in fp32, one rounding per step.

    Each step is compared with an fp32 twin that starts from the same (bf16-exact)
    parameters and the same optimizer state.
    """
    problem = make_problem(7)
    params = [t.to(torch.bfloat16).requires_grad_() for t in problem["init"]]
    foreach = path
    opt = ALTO(alto_groups(params), **ALTO_KW, foreach=foreach)
    for k in range(5):
        grads = grads_for(problem, params, k)
        twin = [p.detach().float().requires_grad_() for p in params]
        twin_opt = ALTO(alto_groups(twin), **ALTO_KW, foreach=foreach)
        if k:
            twin_opt.load_state_dict(opt.state_dict())
        for p, q, g in zip(params, twin, grads):
            p.grad = g
            q.grad = g.float()
        opt.step()
        twin_opt.step()
        for p, q in zip(params, twin):
            assert p.dtype == torch.bfloat16
            torch.testing.assert_close(p.detach(), q.detach().to(torch.bfloat16), rtol=0, atol=0)
    for st in opt.state.values():
        for key in ("exp_avg", "exp_avg_sq", "diff_carry"):
            assert st[key].dtype == torch.float32
