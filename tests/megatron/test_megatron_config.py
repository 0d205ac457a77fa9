"""AltoOptimizerConfig validation and the factory's argument checks (no processes needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("megatron.core")

from megatron.core.optimizer import OptimizerConfig

from alto.megatron import AltoOptimizerConfig, get_megatron_optimizer


def test_defaults_are_the_papers_large_batch_setting() -> None:
    config = AltoOptimizerConfig(optimizer="alto", lr=1e-3)
    assert config.alto_betas == (0.99, 0.9, 0.99)
    assert config.alto_alpha == -5.0
    assert config.alto_eps == 1e-6
    assert isinstance(config, OptimizerConfig)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"optimizer": "lamb"}, "optimizer='lamb'"),
        ({"optimizer": "alto", "alto_alpha": 5.0, "alto_beta1": 0.5}, "alto_alpha=5.0"),
        ({"optimizer": "alto", "alto_beta2": 1.0}, "alto_beta2=1.0"),
        ({"optimizer": "alto", "alto_eps": 0.0}, "alto_eps=0.0"),
        ({"optimizer": "alto", "alto_trust_ratio": "lars"}, "alto_trust_ratio='lars'"),
        ({"optimizer": "alto", "weight_decay": -1.0}, "weight_decay=-1.0"),
        (
            {"optimizer": "alto", "use_precision_aware_optimizer": True},
            "use_precision_aware_optimizer=True",
        ),
        ({"optimizer": "e", "e_beta": 1.0}, "e_beta=1.0"),
        ({"optimizer": "e", "e_alpha": -20.0, "e_beta": 0.9}, "e_alpha=-20.0"),
        ({"optimizer": "e", "optimizer_cpu_offload": True}, "optimizer_cpu_offload=True"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError) as info:
        AltoOptimizerConfig(lr=1e-3, **kwargs)
    assert field in str(info.value)


def test_adam_and_sgd_configs_skip_alto_checks() -> None:
    # ALTO's fields are not validated when ALTO is not used (megatron's own rules apply)
    AltoOptimizerConfig(optimizer="adam", lr=1e-3, alto_eps=0.0)
    AltoOptimizerConfig(optimizer="sgd", lr=1e-3, alto_beta1=2.0)
    AltoOptimizerConfig(optimizer="alto", lr=1e-3, e_beta=2.0)  # E's are E's only


def test_factory_rejects_unknown_optimizer_before_touching_the_model() -> None:
    config = OptimizerConfig(optimizer="muon", lr=1e-3)
    with pytest.raises(ValueError, match=r"config.optimizer='muon'.*'adam', 'sgd', 'alto'"):
        get_megatron_optimizer(config, [object()])


def test_factory_needs_alto_config_for_alto() -> None:
    config = OptimizerConfig(optimizer="adam", lr=1e-3)
    config.optimizer = "alto"
    with pytest.raises(TypeError, match="AltoOptimizerConfig"):
        get_megatron_optimizer(config, [object()])


def test_e_base_adam_is_torch_adamw_over_the_same_groups() -> None:
    """E's base is a torch AdamW with megatron's hyperparameters and each group's own
    keys (lr, wd_mult, flags, betas/eps overrides) kept, whatever megatron built."""
    import torch

    from alto.megatron.optimizers import build_torch_adam

    w, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    groups = [
        {"params": [w], "wd_mult": 1.0, "lr": 3e-4, "is_expert_parallel": False},
        {"params": [b], "wd_mult": 0.0, "lr": 3e-4, "is_expert_parallel": False, "eps": 1e-3},
    ]
    config = AltoOptimizerConfig(
        optimizer="e", lr=3e-4, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_eps=1e-6
    )
    adam = build_torch_adam(groups, config, torch.device("cpu"))
    assert type(adam) is torch.optim.AdamW and len(adam.state) == 0
    assert [g["params"] for g in adam.param_groups] == [[w], [b]]
    assert [g["weight_decay"] for g in adam.param_groups] == [0.1, 0.0]
    assert [g["eps"] for g in adam.param_groups] == [1e-6, 1e-3]
    for group in adam.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["lr"] == 3e-4
        assert group["wd_mult"] in (0.0, 1.0) and group["is_expert_parallel"] is False


def test_alto_refuses_coupled_weight_decay() -> None:
    """Trap: decoupled_weight_decay=False used to be ignored by ALTO (bitwise the same run)."""
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=False.*allowed: True"):
        AltoOptimizerConfig(optimizer="alto", lr=1e-3, decoupled_weight_decay=False)
    # E's base honours it (Adam instead of AdamW), so E accepts it
    AltoOptimizerConfig(optimizer="e", lr=1e-3, decoupled_weight_decay=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_precision_aware_optimizer", True),
        ("optimizer_cpu_offload", True),
        ("decoupled_weight_decay", False),
        ("alto_alpha", 500.0),
    ],
)
def test_fields_set_after_the_config_is_built_are_checked_by_the_factory(
    field: str, value: object
) -> None:
    """Trap: a field set after __post_init__ skipped our checks (and ended in an obscure
    megatron TypeError for use_precision_aware_optimizer); the factory checks again,
    before it touches the model."""
    config = AltoOptimizerConfig(optimizer="alto", lr=1e-3)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        get_megatron_optimizer(config, [object()])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"e_base": "lamb"}, "e_base='lamb'"),
        ({"e_base": "sgd", "use_distributed_optimizer": True}, "use_distributed_optimizer=True"),
    ],
)
def test_e_base_checks(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError) as info:
        AltoOptimizerConfig(optimizer="e", lr=1e-3, **kwargs)
    assert field in str(info.value)


def test_group_overrides_reach_alto_under_their_own_keys() -> None:
    """Trap: per-group overrides of betas/eps/alpha were overwritten by the config's.
    The factory carries them past megatron's AdamW (whose defaults would otherwise be
    indistinguishable from them) and ALTO's groups take them."""
    from megatron.core.optimizer.optimizer_config import ParamKey

    from alto.megatron.factory import _carry_overrides
    from alto.megatron.optimizers import alto_group_to_kwargs

    key = ParamKey(name="*.bias")
    carried = _carry_overrides("alto", {key: {"betas": [0.5, 0.8, 0.9], "eps": 1e-3, "wd_mult": 0}})
    config = AltoOptimizerConfig(optimizer="alto", lr=1e-3, weight_decay=0.1)
    # what megatron's AdamW leaves in the group: its own betas/eps defaults + ours renamed
    group = {"params": [], "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, **carried[key]}
    alto = alto_group_to_kwargs(group, config)
    assert alto["betas"] == (0.5, 0.8, 0.9) and alto["eps"] == 1e-3
    assert alto["alpha"] == config.alto_alpha and alto["weight_decay"] == 0.0
    plain = alto_group_to_kwargs({"params": [], "lr": 1e-3, "betas": (0.9, 0.999)}, config)
    assert plain["betas"] == config.alto_betas and plain["eps"] == config.alto_eps
    with pytest.raises(ValueError, match=r"betas=\(0.5, 0.8\).*\(beta1, beta2, beta3\)"):
        _carry_overrides("alto", {key: {"betas": (0.5, 0.8)}})
    with pytest.raises(ValueError, match="'alpha' are not supported with optimizer='e'"):
        _carry_overrides("e", {key: {"alpha": 0.5}})
