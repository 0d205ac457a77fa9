"""Every bad input gets a ValueError/TypeError naming the argument, value and the rule."""

from __future__ import annotations

import pytest
import torch

from alto import ALTO, E, Lamb, paper_defaults, param_groups


def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"lr": -1e-3}, ValueError, r"lr must be >= 0, got -0\.001"),
        ({"lr": float("nan")}, ValueError, r"lr must be finite"),
        ({"lr": "0.1"}, TypeError, r"lr must be a real number .* got '0\.1'"),
        ({"betas": (1.0, 0.9, 0.99)}, ValueError, r"betas\[0\] must be in \[0, 1\), got 1\.0"),
        ({"betas": (0.9, -0.1, 0.99)}, ValueError, r"betas\[1\] must be in \[0, 1\), got -0\.1"),
        ({"betas": (0.9, 0.9, 1.5)}, ValueError, r"betas\[2\] must be in \[0, 1\), got 1\.5"),
        ({"betas": (0.9, 0.99)}, ValueError, r"betas must have exactly 3 values"),
        ({"betas": 0.9}, TypeError, r"betas must be a tuple of 3 floats"),
        ({"eps": 0.0}, ValueError, r"eps must be > 0, got 0\.0"),
        ({"eps": -1e-8}, ValueError, r"eps must be > 0"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay must be >= 0, got -0\.1"),
        # |alpha| < 1/(1-b1): with b1 = 0.99 the bound is 100, with b1 = 0.01 it is 1/0.99.
        ({"alpha": 100.0}, ValueError, r"\|alpha\| < 1/\(1-betas\[0\]\) = 100 .* got 100\.0"),
        ({"alpha": -150.0}, ValueError, r"alpha.*got -150\.0"),
        ({"alpha": 1.02, "betas": (0.01, 0.9, 0.99)}, ValueError, r"= 1\.0101"),
        ({"alpha": True}, TypeError, r"alpha must be a real number"),
        ({"trust_ratio": "lamb"}, ValueError, r"trust_ratio must be one of 'published', 'paper'"),
        ({"trust_ratio_eps": (1e-6, -1.0)}, ValueError, r"trust_ratio_eps\[1\] must be >= 0"),
        ({"max_grad_norm": 0.0}, ValueError, r"max_grad_norm must be > 0, got 0\.0"),
        ({"on_nonfinite": "ignore"}, ValueError, r"on_nonfinite must be one of 'skip'"),
        ({"norm_reducer": 3}, TypeError, r"norm_reducer must be a callable or None, got int"),
        ({"foreach": "yes"}, TypeError, r"foreach must be True, False or None, got 'yes'"),
        ({"foreach": True, "fused": True}, ValueError, r"cannot both be set"),
        ({"fused": True}, ValueError, r"fused=True needs every parameter on a CUDA device"),
    ],
)
def test_alto_constructor_errors(kwargs: dict, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        ALTO(params(), **kwargs)


def test_alpha_bound_is_strict() -> None:
    ALTO(params(), alpha=99.99, betas=(0.99, 0.9, 0.99))
    with pytest.raises(ValueError, match="alpha"):
        ALTO(params(), alpha=2.0, betas=(0.5, 0.9, 0.99))


def test_group_override_errors_name_the_group() -> None:
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['lr'\] must be >= 0, got -1"):
        ALTO([{"params": params()}, {"params": params(), "lr": -1}])
    with pytest.raises(
        ValueError, match=r"\|alpha\| < 1/\(1-param_groups\[0\]\['betas'\]\[0\]\) = 2"
    ):
        ALTO([{"params": params(), "betas": (0.5, 0.9, 0.9)}], alpha=5.0)
    opt = ALTO(params())
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['eps'\] must be > 0"):
        opt.add_param_group({"params": params(), "eps": 0})
    assert len(opt.param_groups) == 1


def test_lamb_errors() -> None:
    with pytest.raises(ValueError, match=r"betas must have exactly 2 values"):
        Lamb(params(), betas=(0.9, 0.9, 0.9))
    with pytest.raises(ValueError, match=r"lr must be >= 0"):
        Lamb(params(), lr=-1)


def test_integer_parameters_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\] must be a floating"):
        ALTO([torch.zeros(3, dtype=torch.int64)])


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: ALTO(ps),
        lambda ps: ALTO(ps, foreach=False),
        lambda ps: Lamb(ps),
        lambda ps: E(torch.optim.SGD(ps, lr=0.1)),
    ],
    ids=["alto_foreach", "alto_single", "lamb", "e"],
)
def test_sparse_gradients_are_rejected(make) -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = make(list(emb.parameters()))
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] has a sparse grad"):
        opt.step()


def test_e_errors() -> None:
    with pytest.raises(TypeError, match=r"base_optimizer must be a torch.optim.Optimizer .* list"):
        E(params())
    with pytest.raises(TypeError, match=r"got type"):
        E(torch.optim.AdamW)
    base = torch.optim.SGD(params(), lr=0.1)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1\.0"):
        E(base, beta=1.0)
    with pytest.raises(ValueError, match=r"\|alpha\| < 1/\(1-beta\) = 2 .* got 2\.0"):
        E(base, alpha=2.0, beta=0.5)
    with pytest.raises(ValueError, match=r"already an E"):
        E(E(base, alpha=0.5, beta=0.5))
    with pytest.raises(ValueError, match=r"LBFGS"):
        E(torch.optim.LBFGS(params()))
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of"):
        E(base, on_nonfinite="nope")
    with pytest.raises(ValueError, match=r"cannot both be set"):
        E(base, foreach=True, fused=True)
    with pytest.raises(ValueError, match=r"fused=True needs every parameter on a CUDA device"):
        E(base, fused=True)
    assert E(base).implementation == "blocked"
    assert E(base, foreach=False).implementation == "single"


def test_norm_reducer_with_wrong_output_shape_is_reported() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = ALTO([p], norm_reducer=lambda sq, ps: sq[:, :1])
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"norm_reducer must return a tensor of shape \(1, 2\)"):
        opt.step()


def test_paper_defaults_errors() -> None:
    with pytest.raises(ValueError, match=r"global_batch_size must be >= 1, got 0"):
        paper_defaults(0)
    with pytest.raises(TypeError, match=r"global_batch_size must be a positive int, got float"):
        paper_defaults(512.0)


def test_param_groups_errors() -> None:
    with pytest.raises(ValueError, match=r"no_decay may contain only"):
        param_groups(torch.nn.Linear(2, 2), no_decay=("embedding",))
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        param_groups([torch.ones(2)])
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0"):
        param_groups(torch.nn.Linear(2, 2), weight_decay=-1.0)
