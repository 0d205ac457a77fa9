"""A torch LayerNorm/RMSNorm that megatron can use under sequence parallelism.

Why: megatron-core 0.16.1's local (no Transformer Engine, no apex) norm,
``WrappedTorchNorm``, asserts ``not config.sequence_parallel``; and MoE with
tensor parallelism > 1 *requires* sequence parallelism.  So without TE (our CPU
jobs, and the GPU image, which has no TE) MoE + TP cannot be built from megatron's
local spec.  Under sequence parallelism each TP rank normalises a different slice
of the sequence, so the norm's weight/bias gradients are partial sums; megatron's
``finalize_model_grads`` all-reduces exactly the parameters that carry
``sequence_parallel = True`` over the TP group.  This norm sets that attribute, which
is all TE's norm does differently for this purpose.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

_NORMS = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}


class SequenceParallelTorchNorm:
    """Factory with ``WrappedTorchNorm``'s signature that also works with sequence parallelism."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        if config.normalization not in _NORMS:
            raise ValueError(
                f"TransformerConfig.normalization={config.normalization!r} is not supported by "
                f"SequenceParallelTorchNorm; allowed: {sorted(_NORMS)}"
            )
        if config.layernorm_zero_centered_gamma:
            raise ValueError(
                "TransformerConfig.layernorm_zero_centered_gamma=True is not supported by "
                "SequenceParallelTorchNorm; allowed: False"
            )
        norm = _NORMS[config.normalization](
            normalized_shape=hidden_size, eps=eps, dtype=config.params_dtype
        )
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def sequence_parallel_local_spec(
    layer_spec: ModuleSpec, num_layers: int | None = None
) -> TransformerBlockSubmodules | ModuleSpec:
    """Swap the norms of a local GPT layer spec for :class:`SequenceParallelTorchNorm`.

    With ``num_layers`` it returns a whole-block spec (layers plus final norm), which
    GPTModel accepts as ``transformer_layer_spec``; without it, the layer spec only
    (then the final norm stays megatron's default; pass ``num_layers`` for SP).
    """
    sub = dataclasses.replace(
        layer_spec.submodules,
        input_layernorm=SequenceParallelTorchNorm,
        pre_mlp_layernorm=SequenceParallelTorchNorm,
    )
    layer = dataclasses.replace(layer_spec, submodules=sub)
    if num_layers is None:
        return layer
    return TransformerBlockSubmodules(
        layer_specs=[layer] * num_layers, layer_norm=SequenceParallelTorchNorm
    )
