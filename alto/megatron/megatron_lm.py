"""ALTO and E for Megatron-LM users: ``pretrain_gpt.py --optimizer alto``.

One step (docs/megatron.md, "Megatron-LM"): launch Megatron-LM's script through this
module instead of ``python``::

    torchrun --nproc-per-node 8 -m alto.megatron.megatron_lm path/to/pretrain_gpt.py \\
        --optimizer alto --alto-alpha -5 --alto-beta1 0.99 --use-distributed-optimizer ...

or, in your own launcher, call :func:`install` before Megatron-LM parses its arguments
(and pass :func:`add_alto_args` as ``extra_args_provider`` if you parse them yourself).

What :func:`install` changes, and only in ``megatron.training`` (Megatron-LM's training
package, which megatron-core 0.19 wheels ship; ``pretrain_gpt.py`` is not shipped):

* ``arguments.parse_args``: :func:`add_alto_args` runs after any other
  ``extra_args_provider``: ``--optimizer`` also accepts ``alto`` and ``e``, plus the
  ``--alto-*`` / ``--e-*`` flags (one per :class:`~alto.megatron.AltoOptimizerConfig`
  field, same names, same defaults).
* ``arguments.validate_args``: for ``alto`` / ``e`` Megatron-LM's validation runs as
  for ``adam`` (its emerging-optimizer branch would otherwise switch the
  distributed optimizer to the layer-wise one); the name is restored afterwards.
* ``training.get_megatron_optimizer_config``: for ``alto`` / ``e`` the config is an
  ``AltoOptimizerConfig`` built from the same arguments, as Megatron-LM's builder
  does for ``OptimizerConfig``; other optimizers get Megatron-LM's own.
* ``training.get_megatron_optimizer``: ``alto`` / ``e`` / ``adam`` / ``sgd`` go
  through :func:`alto.megatron.get_megatron_optimizer` (the optimizer table); any
  other name (muon, lion, ...) through megatron's factory, untouched.

Without CUDA the launcher enables :mod:`alto.megatron.cpu_compat` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import runpy
import sys
from typing import Any

OURS = ("alto", "e")

_FLAGS: dict[str, str] = {
    "alto_alpha": "acceleration factor alpha; |alpha| < 1/(1 - beta1)",
    "alto_beta1": "EMA factor of the gradient difference (b1)",
    "alto_beta2": "first-moment EMA factor (b2)",
    "alto_beta3": "second-moment EMA factor (b3)",
    "alto_eps": "added to sqrt(v_hat)",
    "alto_trust_ratio": "'published' (the authors' code) or 'paper'",
    "e_alpha": "E's acceleration factor; |alpha| < 1/(1 - e_beta)",
    "e_beta": "E's EMA factor of the gradient difference",
    "e_base": "the optimizer E wraps ('adam': Megatron's --adam-* flags)",
}


def add_alto_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Megatron-LM ``extra_args_provider``: ``--optimizer alto|e`` and the ALTO/E flags."""
    from alto.megatron.config import AltoOptimizerConfig

    for action in parser._actions:
        if action.dest == "optimizer" and action.choices is not None:
            action.choices = [*action.choices, *(c for c in OURS if c not in action.choices)]
    if any(a.dest == "alto_alpha" for a in parser._actions):
        return parser  # already added (install() and an explicit provider together)
    defaults = {f.name: f.default for f in dataclasses.fields(AltoOptimizerConfig)}
    group = parser.add_argument_group("ALTO / E (alto.megatron)")
    for dest, text in _FLAGS.items():
        default = defaults[dest]
        group.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            type=type(default),
            default=default,
            help=f"{text} (default {default!r})",
        )
    return parser


def _chain_provider(provider: Any) -> Any:
    def both(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        if provider is not None:
            parser = provider(parser)
        return add_alto_args(parser)

    return both


def config_from_args(args: argparse.Namespace) -> Any:
    """``AltoOptimizerConfig`` from Megatron-LM's arguments (as its own config builder)."""
    from alto.megatron.config import AltoOptimizerConfig

    kwargs = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(AltoOptimizerConfig)
        if f.init and hasattr(args, f.name)
    }
    return AltoOptimizerConfig(**kwargs)


def validate_as_adam(validate_args: Any) -> Any:
    """``validate_args`` that validates ``--optimizer alto|e`` as Megatron-LM validates adam."""

    @functools.wraps(validate_args)
    def alto_validate_args(args: argparse.Namespace, *rest: Any, **kwargs: Any) -> Any:
        name = getattr(args, "optimizer", None)
        if name not in OURS:
            return validate_args(args, *rest, **kwargs)
        args.optimizer = "adam"
        try:
            return validate_args(args, *rest, **kwargs)
        finally:
            args.optimizer = name

    return alto_validate_args


def install() -> None:
    """Route Megatron-LM's argument parsing and optimizer construction through ours
    (idempotent; see the module doc for the four functions it wraps)."""
    arguments = importlib.import_module("megatron.training.arguments")
    training = importlib.import_module("megatron.training.training")
    if getattr(arguments.parse_args, "_alto", False):
        return

    parse_args = arguments.parse_args
    validate_args = arguments.validate_args
    config_builder = training.get_megatron_optimizer_config
    megatron_factory = training.get_megatron_optimizer

    @functools.wraps(parse_args)
    def alto_parse_args(extra_args_provider: Any = None, *args: Any, **kwargs: Any) -> Any:
        return parse_args(_chain_provider(extra_args_provider), *args, **kwargs)

    alto_validate_args = validate_as_adam(validate_args)

    @functools.wraps(config_builder)
    def alto_config_builder(args: argparse.Namespace) -> Any:
        if getattr(args, "optimizer", None) not in OURS:
            return config_builder(args)
        from megatron.core.optimizer import get_standard_config_overrides

        config = config_from_args(args)
        return config, get_standard_config_overrides(config=config)

    @functools.wraps(megatron_factory)
    def alto_factory(config: Any, model_chunks: Any, *args: Any, **kwargs: Any) -> Any:
        from alto.megatron.factory import get_megatron_optimizer

        if getattr(config, "optimizer", None) not in (*OURS, "adam", "sgd"):
            return megatron_factory(config, model_chunks, *args, **kwargs)
        return get_megatron_optimizer(config, model_chunks, *args, **kwargs)

    for fn in (alto_parse_args, alto_validate_args, alto_config_builder, alto_factory):
        fn._alto = True  # type: ignore[attr-defined]
    arguments.parse_args = alto_parse_args
    arguments.validate_args = alto_validate_args
    training.get_megatron_optimizer_config = alto_config_builder
    training.get_megatron_optimizer = alto_factory


def main(argv: list[str] | None = None) -> None:
    """``python -m alto.megatron.megatron_lm SCRIPT [megatron args]``: run Megatron-LM's
    ``SCRIPT`` (e.g. ``pretrain_gpt.py``) as ``__main__`` with :func:`install` applied."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise SystemExit(
            "usage: python -m alto.megatron.megatron_lm path/to/pretrain_gpt.py [Megatron-LM "
            "arguments, e.g. --optimizer alto --alto-alpha -5]"
        )
    script = os.path.abspath(argv[0])
    import torch

    if not torch.cuda.is_available():
        from alto.megatron import cpu_compat

        cpu_compat.enable()
    install()
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))  # pretrain_gpt.py imports its helpers
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
