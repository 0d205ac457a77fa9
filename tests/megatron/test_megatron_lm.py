"""Megatron-LM's entry point: ``--optimizer alto|e`` in its parser, its config builder and
its factory call routed through alto.megatron (alto.megatron.megatron_lm).

The DistributedOptimizer end of it (arguments -> Megatron-LM's config builder -> ALTO
inside megatron's DistributedOptimizer, two bf16 steps) runs in the ``reference``
launch of test_megatron_distributed.py and is checked there; these tests are in-process.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("megatron.core")
arguments = pytest.importorskip("megatron.training.arguments")
training = pytest.importorskip("megatron.training.training")

from alto.megatron import AltoOptimizerConfig, megatron_lm  # noqa: E402

MODEL = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
    "--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "1",
    "--global-batch-size", "2", "--lr", "1e-3", "--train-iters", "3",
]  # fmt: skip


def _parse(monkeypatch: pytest.MonkeyPatch, *argv: str, validate: bool = True):
    """Megatron-LM's own parse_args + validate_args, as pretrain() runs them."""
    megatron_lm.install()
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["pretrain_gpt.py", *MODEL, *argv])
    args = arguments.parse_args(None)
    if validate:
        arguments.validate_args(args, {})
    return args


def test_parser_takes_optimizer_alto_and_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(monkeypatch, "--optimizer", "alto", "--alto-alpha", "0.5", "--alto-beta1", "0.01")
    assert args.optimizer == "alto" and args.alto_alpha == 0.5 and args.alto_beta1 == 0.01
    assert args.alto_beta2 == AltoOptimizerConfig.alto_beta2  # defaults are the config's
    config, overrides = training.get_megatron_optimizer_config(args)
    assert type(config) is AltoOptimizerConfig and config.optimizer == "alto"
    assert config.alto_betas == (
        0.01,
        AltoOptimizerConfig.alto_beta2,
        AltoOptimizerConfig.alto_beta3,
    )
    assert overrides  # Megatron-LM's standard no-weight-decay rules for biases and norms


def test_e_takes_megatron_adam_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(monkeypatch, "--optimizer", "e", "--e-alpha", "-2", "--adam-beta2", "0.95")
    config, _ = training.get_megatron_optimizer_config(args)
    assert config.optimizer == "e" and config.e_alpha == -2.0 and config.adam_beta2 == 0.95


def test_other_optimizers_keep_megatron_lms_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(monkeypatch, "--optimizer", "adam")
    config, _ = training.get_megatron_optimizer_config(args)
    assert type(config) is not AltoOptimizerConfig and config.optimizer == "adam"
    with pytest.raises(SystemExit):
        _parse(monkeypatch, "--optimizer", "lamb", validate=False)


def test_bad_flag_values_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parse(monkeypatch, "--optimizer", "alto", "--alto-alpha", "500")
    with pytest.raises(ValueError, match=r"alto_alpha=500\.0"):
        training.get_megatron_optimizer_config(args)


def test_validate_args_treats_alto_as_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Megatron-LM's validation sends every optimizer but adam/sgd to its layer-wise
    emerging-optimizer path (switching the distributed optimizer off); ours must not."""
    args = _parse(monkeypatch, "--optimizer", "alto", "--use-distributed-optimizer")
    assert args.optimizer == "alto"
    assert args.use_distributed_optimizer and not args.use_layer_wise_distributed_optimizer
    config, _ = training.get_megatron_optimizer_config(args)
    assert config.use_distributed_optimizer


def test_install_is_idempotent() -> None:
    megatron_lm.install()
    first = (arguments.parse_args, training.get_megatron_optimizer)
    megatron_lm.install()
    assert (arguments.parse_args, training.get_megatron_optimizer) == first
