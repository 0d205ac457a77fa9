"""Shared pieces of the distributed megatron tests: tiny GPT / MoE GPT, layout-free init, steps.

Every layout (DP, TP, EP) must start from the same logical model, so parameters are
initialised from their *canonical* name (DDP prefixes stripped, local expert index
turned into the global one) and sliced to the local tensor-parallel part.  The same
mapping slices a reference run's full parameters for comparison.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import re
from typing import Any

import torch

VOCAB = 64
NUM_LAYERS = 2
SEQ = 16
GLOBAL_BATCH = 4


@dataclasses.dataclass(frozen=True)
class Layout:
    """A parallel layout plus the model and optimizer variant to run on it."""

    tp: int = 1
    ep: int = 1
    #: pipeline stages (the 2 layers split over them); >1 runs megatron's 1F1B schedule
    pp: int = 1
    moe: bool = False
    sp: bool = False
    bf16: bool = False
    dist_opt: bool = True
    optimizer: str = "alto"
    dispatcher: str = "allgather"
    bucket_size: int | None = 1
    #: bf16 via Float16Module (all params bf16); False: params_dtype=bf16, which
    #: leaves torch LayerNorms fp32 (fp32 and bf16 params mixed in one group)
    float16_module: bool = True
    #: overlap the DistributedOptimizer's parameter all-gather with the next forward
    overlap_param_gather: bool = False
    fp16: bool = False
    #: output layer tied to the word embeddings (under PP the last stage holds a copy that
    #: megatron keeps equal to the first stage's)
    tied: bool = False


def init_distributed() -> None:
    """Initialise gloo from torchrun's environment (idempotent) and enable cpu_compat."""
    from alto.megatron import cpu_compat

    cpu_compat.enable()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")


#: the DDP models built for the current layout (released by the next set_layout)
_models: list[Any] = []
#: how many times set_layout has run in this process
layouts_set = 0


def set_layout(layout: Layout) -> None:
    """(Re)initialise megatron's process groups for a layout on the current world.

    The previous layout's models are released and its groups destroyed first: a worker
    walks ~50 layouts in one process, and each leaked layout kept ~57 gloo threads
    alive (2,400 by the end, with a 3-step train 28x slower than at the start).
    """
    from megatron.core.tensor_parallel import random as tp_random

    from alto.megatron import groups

    global layouts_set
    layouts_set += 1
    while _models:
        release(_models.pop())
    gc.collect()  # the plain Python cycles (model <-> DDP <-> hooks) go now, not later
    groups.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep,
        expert_tensor_parallel_size=None,
    )
    tp_random.model_parallel_cuda_manual_seed(1234, force_reset_rng=True)


def build_model(layout: Layout) -> torch.nn.Module:
    """A 2-layer GPT (4 experts top-2 when ``layout.moe``) with layout-independent init.

    With ``layout.pp`` > 1 each rank builds its pipeline stage only: the embedding on the
    first, the final norm and output layer on the last, ``NUM_LAYERS / pp`` layers each.

    bf16 models are built in fp32, initialised, then wrapped in megatron's
    Float16Module (which casts every parameter to bf16), as megatron training does.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from alto.megatron.layers import sequence_parallel_local_spec

    torch.manual_seed(1234)
    moe = {}
    if layout.moe:
        moe = dict(
            num_moe_experts=4,
            moe_router_topk=2,
            moe_token_dispatcher_type=layout.dispatcher,
            moe_aux_loss_coeff=0.0,
            moe_ffn_hidden_size=32,
            add_bias_linear=False,
            expert_model_parallel_size=layout.ep,
        )
    config = TransformerConfig(
        num_layers=NUM_LAYERS,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        pipeline_dtype=torch.bfloat16 if layout.bf16 else torch.float32,
        sequence_parallel=layout.sp,
        bf16=layout.bf16,
        fp16=layout.fp16,
        params_dtype=torch.bfloat16 if layout.bf16 and not layout.float16_module else torch.float32,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        **moe,
    )
    spec = get_gpt_layer_local_spec(num_experts=4 if layout.moe else None)
    if layout.sp:
        spec = sequence_parallel_local_spec(spec, num_layers=2)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=layout.tied,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )
    canonical_init(model)
    if (layout.bf16 or layout.fp16) and layout.float16_module:
        # megatron's bf16 path: every parameter bf16 (norms included), inputs cast.
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(config, model)
    return model


def wrap_ddp(model: torch.nn.Module, layout: Layout) -> torch.nn.Module:
    """Megatron DDP with fp32 grad reduction and (by default) one parameter per bucket.

    Each bucket is sharded across the data-parallel ranks separately; one parameter
    per bucket makes the DistributedOptimizer cut every weight matrix in two: the
    hard case for exact trust ratios.  ``bucket_size=None``: one bucket (megatron's
    ``dp_reshardable`` checkpoints need every rank to own part of every bucket).
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=layout.bucket_size is not None,  # else bucket_size is ignored
        use_distributed_optimizer=layout.dist_opt,
        bucket_size=layout.bucket_size,
        overlap_param_gather=layout.overlap_param_gather,
    )
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    _models.append(ddp)
    return ddp


def release(ddp: Any) -> None:
    """Break the cycles that keep a megatron DDP model, and so its layout's process
    groups and their threads, alive after the last reference to it is dropped.

    DDP's gradient hooks close over DDP itself and hang on the parameters' grad
    accumulators, C++ autograd nodes that Python's collector cannot see through.  Any
    autograd graph that outlives the step therefore pins the whole model: the MoE token
    dispatchers keep the last forward's routing tensors (and their graphs back to the
    router weights) as attributes, and the pipeline schedule's callbacks on the model's
    config hold the optimizer, whose state is keyed by parameter views.  Outside any
    graph, ``RotaryEmbedding.forward`` is a class-wide ``lru_cache`` keyed on the module,
    so the last 32 rotary modules, their groups and (with overlap_param_gather, through
    DDP's forward pre-hooks) their whole models stay alive.  Dropping the accumulators,
    those tensors and callbacks, and that cache frees it.
    """
    ddp.grad_accs.clear()
    # the pipeline schedule's callbacks (set on the shared config by train_steps) hold the
    # optimizer, whose state is keyed by views of the parameters: graphs again
    for name in ("finalize_model_grads_func", "no_sync_func", "grad_scale_func"):
        setattr(ddp.config, name, None)
    for module in ddp.modules():
        forward = type(module).forward
        if hasattr(forward, "cache_clear"):  # RotaryEmbedding.forward: a class-wide
            forward.cache_clear()  # lru_cache keyed on the module (and its hooks, its groups)
        _drop_graphs(module)
        for value in vars(module).values():  # helpers such as token_dispatcher
            if not isinstance(value, (torch.nn.Module, torch.Tensor, type)) and hasattr(
                value, "__dict__"
            ):
                _drop_graphs(value)


def _drop_graphs(owner: Any) -> None:
    """Set to None every attribute of ``owner`` that holds an autograd graph."""
    for name, value in list(vars(owner).items()):
        if isinstance(value, torch.Tensor) and value.grad_fn is not None:
            setattr(owner, name, None)


_EXPERT = re.compile(r"local_experts\.(\d+)\.")
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def canonical(name: str, param: torch.Tensor) -> tuple[str, int | None, int, int]:
    """(layout-free name, partition dim or None, tp rank, tp size) of a local parameter."""
    from megatron.core import parallel_state as ps

    name = name.replace("module.", "")
    if name == "output_layer.weight" and getattr(param, "shared_embedding", False):
        name = "embedding.word_embeddings.weight"  # the last stage's copy of tied embeddings
    if ps.get_pipeline_model_parallel_world_size() > 1:  # local layer index -> global one
        offset = ps.get_pipeline_model_parallel_rank() * (
            NUM_LAYERS // ps.get_pipeline_model_parallel_world_size()
        )
        name = _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)
    if ".experts." in name:
        match = _EXPERT.search(name)
        if match is not None:
            num_local = _num_local_experts(param)
            global_index = ps.get_expert_model_parallel_rank() * num_local + int(match.group(1))
            name = _EXPERT.sub(f"local_experts.{global_index}.", name)
        rank, size = (
            ps.get_expert_tensor_parallel_rank(),
            ps.get_expert_tensor_parallel_world_size(),
        )
    else:
        rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    dim = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
    return name, dim, rank, size


def _num_local_experts(param: torch.Tensor) -> int:
    from megatron.core import parallel_state as ps

    return 4 // ps.get_expert_model_parallel_world_size()


def full_shape(param: torch.Tensor, dim: int | None, size: int) -> list[int]:
    shape = list(param.shape)
    if dim is not None:
        shape[dim] *= size
    return shape


def local_slice(full: torch.Tensor, dim: int | None, rank: int, size: int) -> torch.Tensor:
    if dim is None:
        return full
    return full.chunk(size, dim=dim)[rank]


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "little")


def canonical_init(model: torch.nn.Module) -> None:
    """Set every parameter from a generator seeded by its canonical name."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            cname, dim, rank, size = canonical(name, param)
            gen = torch.Generator().manual_seed(_seed(cname))
            shape = full_shape(param, dim, size)
            if cname.endswith("layer_norm_weight") or cname.endswith("norm.weight"):
                full = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                full = 0.2 * torch.randn(shape, generator=gen)
            param.copy_(local_slice(full, dim, rank, size).to(param.dtype))


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The local parameters as fp32 CPU tensors keyed by canonical name (single-rank use)."""
    return {canonical(n, p)[0]: p.detach().float().clone() for n, p in model.named_parameters()}


def max_rel_diff(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """max over local parameters of ||local - ref slice|| / ||ref slice||."""
    worst = 0.0
    for name, param in model.named_parameters():
        cname, dim, rank, size = canonical(name, param)
        ref = local_slice(reference[cname], dim, rank, size)
        diff = (param.detach().float() - ref).norm() / ref.norm().clamp_min(1e-12)
        worst = max(worst, float(diff))
    return worst


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def one_step(model: torch.nn.Module, optimizer: Any, step: int) -> tuple[bool, float]:
    """One step on this rank's share of global batch ``step``: (update applied, mean loss)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads

    dp = ps.get_data_parallel_world_size()
    dp_rank = ps.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp
    tokens, labels = global_batch(step)
    tokens = tokens[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    labels = labels[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    positions = torch.arange(SEQ).unsqueeze(0).expand_as(tokens)
    model.zero_grad_buffer()
    optimizer.zero_grad()
    if ps.get_pipeline_model_parallel_world_size() > 1:
        loss = _pipeline_forward_backward(model, optimizer, tokens, labels, positions)
    else:
        out = model(tokens, positions, attention_mask=None, labels=labels)
        loss = out.float().mean()
        optimizer.scale_loss(loss).backward()  # x 1.0 (bitwise x) without a grad scaler
        finalize_model_grads([model])
    ok, _, _ = optimizer.step()
    reduced = loss.detach().clone()
    torch.distributed.all_reduce(reduced, group=ps.get_data_parallel_group())
    return ok, float(reduced) / dp


def _pipeline_forward_backward(
    model: torch.nn.Module,
    optimizer: Any,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """megatron's 1F1B schedule over this rank's share, one sequence per micro batch.

    The schedule averages the micro batches' mean losses, which is the mean over the
    share the single-stage path takes; it calls ``finalize_model_grads`` itself. The
    loss (known on the last stage only) is broadcast over the pipeline group.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = model.config
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model.no_sync
    config.grad_scale_func = optimizer.scale_loss
    micro = [
        (tokens[i : i + 1], labels[i : i + 1], positions[i : i + 1]) for i in range(len(tokens))
    ]

    def forward_step(data_iterator, chunk):
        tok, lab, pos = next(data_iterator)
        out = chunk(tok, pos, attention_mask=None, labels=lab)

        def loss_func(per_token: torch.Tensor):
            loss = per_token.float().mean()
            # a copy: megatron divides the returned loss in place by the micro-batch count
            return loss, {"loss": loss.detach().clone()}

        return out, loss_func

    outputs = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(micro),
        model=[model],
        num_microbatches=len(micro),
        seq_length=SEQ,
        micro_batch_size=1,
        forward_only=False,
    )
    loss = torch.zeros(())
    if ps.is_pipeline_last_stage():
        loss = torch.stack([o["loss"] for o in outputs]).mean()
    torch.distributed.all_reduce(loss, group=ps.get_pipeline_model_parallel_group())
    return loss


def train_steps(model: torch.nn.Module, optimizer: Any, steps: range) -> list[float]:
    """Run ``steps`` on this rank's share of the fixed global batches; return mean losses."""
    losses = []
    for step in steps:
        ok, loss = one_step(model, optimizer, step)
        assert ok, f"optimizer step {step} was skipped"
        losses.append(loss)
    if getattr(model.ddp_config, "overlap_param_gather", False):
        # the last step's all-gather is still in flight (the next forward's pre-hooks would
        # wait for it): finish it, so the model holds the updated parameters
        model.start_param_sync(force_sync=True)
    return losses


def rank() -> int:
    return int(os.environ.get("RANK", "0"))
