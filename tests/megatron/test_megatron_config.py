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


def test_e_replaces_a_non_torch_adam_with_torch_adamw_over_the_same_groups() -> None:
    """Where megatron built TE/apex FusedAdam, E gets a torch AdamW instead, with
    megatron's hyperparameters and each group's own keys (lr, wd_mult, flags) kept."""
    import torch

    from alto.megatron.factory import _torch_adam_over

    w, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    fused_stand_in = torch.optim.SGD(
        [
            {"params": [w], "wd_mult": 1.0, "lr_mult": 1.0, "is_expert_parallel": False},
            {"params": [b], "wd_mult": 0.0, "lr_mult": 1.0, "is_expert_parallel": False},
        ],
        lr=3e-4,
    )
    config = AltoOptimizerConfig(
        optimizer="e", lr=3e-4, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_eps=1e-6
    )
    adam = _torch_adam_over(fused_stand_in, config)
    assert type(adam) is torch.optim.AdamW and len(adam.state) == 0
    assert [g["params"] for g in adam.param_groups] == [[w], [b]]
    assert [g["weight_decay"] for g in adam.param_groups] == [0.1, 0.0]
    for group in adam.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["lr"] == 3e-4
        assert group["wd_mult"] in (0.0, 1.0) and group["is_expert_parallel"] is False
    # torch's own Adam/AdamW (megatron's fallback without TE/apex) is kept as it is
    torch_adamw = torch.optim.AdamW([w], lr=1e-3)
    assert _torch_adam_over(torch_adamw, config) is torch_adamw
