"""The megatron GPTModel a spec describes, wrapped in megatron DDP."""

from __future__ import annotations

import hashlib
import re

import torch
from alto_client.spec import JobSpec


def transformer_config(spec: JobSpec):
    """megatron's TransformerConfig for the spec; fused kernels off (no TE/apex here)."""
    from megatron.core.transformer import TransformerConfig

    m = spec.model
    bf16 = spec.training.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    moe = {}
    if m.is_moe:
        moe = dict(
            num_moe_experts=m.num_experts,
            moe_router_topk=m.moe_router_topk,
            moe_aux_loss_coeff=m.moe_aux_loss_coeff,
            moe_token_dispatcher_type=m.moe_token_dispatcher,
            moe_ffn_hidden_size=m.moe_ffn_hidden_size or m.ffn_size,
            moe_router_load_balancing_type="aux_loss",
            # megatron requires softmax-before-top-k for top-1 routing (else all weights are 1)
            moe_router_pre_softmax=m.moe_router_topk == 1,
            moe_grouped_gemm=False,
            expert_model_parallel_size=spec.parallel.expert,
            expert_tensor_parallel_size=spec.parallel.tensor,
        )
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_size,
        num_attention_heads=m.num_attention_heads,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=True,
        tensor_model_parallel_size=spec.parallel.tensor,
        pipeline_model_parallel_size=spec.parallel.pipeline,
        sequence_parallel=spec.sequence_parallel,
        bf16=bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        add_bias_linear=not m.is_moe,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        init_method_std=0.02,
        **moe,
    )


def build_model(spec: JobSpec, vocab_size: int) -> torch.nn.Module:
    """GPTModel with megatron's local (no-TE) layer spec; MoE layers when experts > 0.

    With ``parallel.pipeline`` > 1 this rank's pipeline stage only: its
    ``num_layers / pipeline`` layers, the embedding on the first stage, the final norm
    and the output layer on the last (megatron keeps the tied output weight of the last
    stage equal to the first stage's embedding: an all-reduce at construction, and
    ``finalize_model_grads`` sums the two copies' gradients every step).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from alto.megatron.layers import sequence_parallel_local_spec

    config = transformer_config(spec)
    layer_spec = get_gpt_layer_local_spec(
        num_experts=spec.model.num_experts if spec.model.is_moe else None,
        moe_grouped_gemm=False,
    )
    if spec.sequence_parallel:
        layer_spec = sequence_parallel_local_spec(layer_spec, num_layers=spec.model.num_layers)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=padded_vocab_size(vocab_size, spec.parallel.tensor),
        max_sequence_length=spec.model.seq_length,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=True,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    if spec.model.is_moe and spec.parallel.expert > 1:
        _decorrelate_experts(model, spec.training.seed)
    return model


def padded_vocab_size(vocab_size: int, tensor_parallel: int, multiple: int = 128) -> int:
    """Megatron-LM's rule: pad the vocabulary to a multiple of 128 * TP for even shards."""
    step = multiple * tensor_parallel
    return ((vocab_size + step - 1) // step) * step


_LAYER = re.compile(r"layers\.(\d+)\.")


def _decorrelate_experts(model: torch.nn.Module, seed: int) -> None:
    """Give every expert its own initial weights whatever the expert-parallel layout.

    megatron initialises local experts from the same CPU generator on every EP rank,
    so expert 0 of rank 0 and expert 0 of rank 1 start identical; here each expert's
    weights are redrawn from a generator seeded by (seed, global expert index, name),
    the name with the global layer index (the local one repeats on every pipeline stage).
    """
    from megatron.core import parallel_state as ps

    ep_rank = ps.get_expert_model_parallel_rank()
    layer_offset = ps.get_pipeline_model_parallel_rank() * (
        model.config.num_layers // ps.get_pipeline_model_parallel_world_size()
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".local_experts." not in name:
                continue
            head, tail = name.split(".local_experts.", 1)
            if layer_offset:
                head = _LAYER.sub(lambda m: f"layers.{int(m.group(1)) + layer_offset}.", head)
            local_index, rest = tail.split(".", 1)
            num_local = model.config.num_moe_experts // ps.get_expert_model_parallel_world_size()
            global_index = ep_rank * num_local + int(local_index)
            key = f"{seed}:{head}:{global_index}:{rest}:{ps.get_expert_tensor_parallel_rank()}"
            gen = torch.Generator().manual_seed(
                int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")
            )
            std = model.config.init_method_std
            fresh = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
            param.copy_(fresh.to(param.dtype))


def wrap_ddp(model: torch.nn.Module, distributed_optimizer: bool) -> torch.nn.Module:
    """megatron DDP: fp32 gradient reduction, no overlap (CPU/gloo gains nothing from it)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=distributed_optimizer,
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters of the whole model (every expert, every TP shard, every pipeline
    stage), each counted once: the last stage's copy of tied embeddings is not."""
    from megatron.core import parallel_state as ps

    sums = {"dense_split": 0, "dense_rep": 0, "expert_split": 0, "expert_rep": 0}
    for param in model.parameters():
        if getattr(param, "shared", False):  # megatron's flag on that copy (PP > 1 only)
            continue
        kind = "dense" if getattr(param, "allreduce", True) else "expert"
        split = "split" if getattr(param, "tensor_model_parallel", False) else "rep"
        sums[f"{kind}_{split}"] += param.numel()

    def summed(value: int, group) -> int:
        t = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(t, group=group)
        return int(t.item())

    stage = (
        summed(sums["dense_split"], ps.get_tensor_model_parallel_group())
        + sums["dense_rep"]
        + summed(sums["expert_split"], ps.get_expert_tensor_and_model_parallel_group())
        + summed(sums["expert_rep"], ps.get_expert_model_parallel_group())
    )
    return summed(stage, ps.get_pipeline_model_parallel_group())
