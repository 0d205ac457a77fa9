"""Parameter groups without weight decay for norms and biases.

The published create_ALTO_optimizer puts LayerNorm/BatchNorm parameters and biases
in a weight_decay = 0 group; with ALTO's published rule that group also takes a plain
step without trust ratio. This helper builds those groups for any torch module,
including norm classes defined outside torch (Megatron's, RMSNorm variants), which
it recognises by "Norm" in the class name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from alto import defaults as D

_TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)
_ALLOWED = ("norm", "bias")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_NORMS) or "Norm" in type(module).__name__


def param_groups(
    model: nn.Module,
    weight_decay: float = D.ALTO.weight_decay,
    no_decay: Iterable[str] = ("norm", "bias"),
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into decay / no-decay groups.

    ``no_decay`` names what goes in the weight_decay = 0 group: "norm" (every
    parameter of a normalisation module) and/or "bias" (parameters whose name ends
    in "bias"). Empty groups are left out; each parameter appears once.
    """
    no_decay = tuple(no_decay)
    unknown = [x for x in no_decay if x not in _ALLOWED]
    if unknown or isinstance(no_decay, str):
        raise ValueError(f"no_decay may contain only {_ALLOWED}, got {no_decay!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float):
        raise TypeError(f"weight_decay must be a number, got {weight_decay!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    skip: set[int] = set()
    if "norm" in no_decay:
        for module in model.modules():
            if _is_norm(module):
                skip.update(id(p) for p in module.parameters(recurse=False))
    decay: list[torch.Tensor] = []
    plain: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_bias = "bias" in no_decay and name.rsplit(".", 1)[-1].endswith("bias")
        (plain if id(p) in skip or is_bias else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups
