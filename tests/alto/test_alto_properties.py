"""Algebraic identities: E(Lamb) == ALTO, alpha = 0 gives Lamb / the base optimizer."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto import ALTO, E, Lamb

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
STEPS = 8

shapes = st.lists(
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3
)
beta = st.floats(0.0, 0.999)


@st.composite
def alto_setups(draw):
    b1, b2, b3 = draw(beta), draw(beta), draw(beta)
    bound = 1.0 / (1.0 - b1)
    alpha = draw(st.floats(-0.95 * bound, 0.95 * bound))
    wd = draw(st.sampled_from([0.0, 1e-3, 0.1]))
    return {
        "shapes": draw(shapes),
        "betas": (b1, b2, b3),
        "alpha": alpha,
        "wd": wd,
        "seed": draw(st.integers(0, 2**16)),
    }


def trajectory(setup: dict, make_opt) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(setup["seed"])
    params = [torch.randn(s, generator=gen).requires_grad_() for s in setup["shapes"]]
    grads = [[torch.randn(s, generator=gen) for s in setup["shapes"]] for _ in range(STEPS)]
    opt = make_opt(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], **tol) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)


@SETTINGS
@given(alto_setups(), st.booleans())
def test_e_of_lamb_equals_alto(setup: dict, foreach: bool) -> None:
    b1, b2, b3 = setup["betas"]
    lr, wd = 1e-2, setup["wd"]
    alto = trajectory(
        setup,
        lambda ps: ALTO(
            ps, lr=lr, betas=(b1, b2, b3), alpha=setup["alpha"], weight_decay=wd, foreach=foreach
        ),
    )
    e_lamb = trajectory(
        setup,
        lambda ps: E(
            Lamb(ps, lr=lr, betas=(b2, b3), eps=1e-6, weight_decay=wd, foreach=foreach),
            alpha=setup["alpha"],
            beta=b1,
            foreach=foreach,
        ),
    )
    assert_close(alto, e_lamb, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(alto_setups(), st.booleans())
def test_alto_with_alpha_zero_is_lamb_exactly(setup: dict, foreach: bool) -> None:
    b1, b2, b3 = setup["betas"]
    kw = dict(lr=1e-2, eps=1e-6, weight_decay=setup["wd"], foreach=foreach)
    alto = trajectory(setup, lambda ps: ALTO(ps, betas=(b1, b2, b3), alpha=0.0, **kw))
    lamb = trajectory(setup, lambda ps: Lamb(ps, betas=(b2, b3), **kw))
    assert_close(alto, lamb, rtol=0, atol=0)


BASES = {
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
    "lamb": lambda ps: Lamb(ps, lr=1e-2),
}


@SETTINGS
@given(alto_setups(), st.sampled_from(sorted(BASES)), st.booleans())
def test_e_with_alpha_zero_is_its_base_exactly(setup: dict, base: str, foreach: bool) -> None:
    plain = trajectory(setup, BASES[base])
    adapted = trajectory(
        setup, lambda ps: E(BASES[base](ps), alpha=0.0, beta=setup["betas"][0], foreach=foreach)
    )
    assert_close(plain, adapted, rtol=0, atol=0)


@SETTINGS
@given(alto_setups())
def test_single_tensor_and_foreach_paths_agree(setup: dict) -> None:
    kw = dict(lr=1e-2, betas=setup["betas"], alpha=setup["alpha"], weight_decay=setup["wd"])
    a = trajectory(setup, lambda ps: ALTO(ps, **kw, foreach=True))
    b = trajectory(setup, lambda ps: ALTO(ps, **kw, foreach=False))
    assert_close(a, b, rtol=1e-5, atol=1e-6)
