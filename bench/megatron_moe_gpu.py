"""AdamW vs ALTO inside megatron-core on one GPU: tokens/s, peak memory, optimizer share.

A megatron MoE GPT (about 0.55B parameters: 12 layers, hidden 1024, 8 experts top-2,
alltoall dispatcher, local spec), bf16 (Float16Module) with the distributed optimizer
and fp32 main parameters, trained on synthetic tokens (throughput does not depend on
the text).  Both optimizers run in the same process, one after the other, from the
same initial weights; each gets ``--warmup`` untimed steps and ``--steps`` timed ones.

Prints one JSON object (also written to ``--out``) and a markdown table with ratios
against AdamW measured in the same run:

    python bench/megatron_moe_gpu.py --out bench_megatron_moe.json      # on a GPU
    python bench/megatron_moe_gpu.py --tiny                             # CPU smoke run

Expected on an H200 (see docs/megatron.md): ALTO's optimizer state is 4 bytes per
parameter more than AdamW's (12 vs 8, fp32 m, v, c) and tokens/s within a few percent.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FULL = dict(
    num_layers=12,
    hidden_size=1024,
    heads=16,
    ffn=4096,
    moe_ffn=2048,
    experts=8,
    vocab=50304,
    seq=1024,
    micro_batch=8,
)
TINY = dict(
    num_layers=2,
    hidden_size=64,
    heads=4,
    ffn=128,
    moe_ffn=64,
    experts=4,
    vocab=256,
    seq=32,
    micro_batch=2,
)


def _init(device: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if device == "cuda":
        torch.cuda.set_device(0)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as tp_random

    parallel_state.initialize_model_parallel(1, 1)
    tp_random.model_parallel_cuda_manual_seed(1234)


def _model(shape: dict[str, int], device: str) -> torch.nn.Module:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.module import Float16Module

    torch.manual_seed(1234)
    config = TransformerConfig(
        num_layers=shape["num_layers"],
        hidden_size=shape["hidden_size"],
        num_attention_heads=shape["heads"],
        ffn_hidden_size=shape["ffn"],
        num_moe_experts=shape["experts"],
        moe_router_topk=2,
        moe_ffn_hidden_size=shape["moe_ffn"],
        moe_token_dispatcher_type="alltoall",
        moe_aux_loss_coeff=1e-2,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bf16=True,
        params_dtype=torch.float32,
        use_cpu_initialization=device == "cpu",
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
    )
    spec = get_gpt_layer_local_spec(num_experts=shape["experts"])
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=shape["vocab"],
        max_sequence_length=shape["seq"],
        position_embedding_type="rope",
    )
    if device == "cuda":
        model = model.cuda()
    model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False, use_distributed_optimizer=True
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def _optimizer(name: str, model: torch.nn.Module) -> Any:
    from alto.megatron import AltoOptimizerConfig, get_megatron_optimizer

    config = AltoOptimizerConfig(
        optimizer={"adamw": "adam", "alto": "alto", "e_adamw": "e"}[name],
        lr=3e-4,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        clip_grad=1.0,
        bf16=True,
        use_distributed_optimizer=True,
        decoupled_weight_decay=True,
        alto_alpha=0.5,
        alto_beta1=0.01,
        e_alpha=0.5,
        e_beta=0.01,
    )
    return get_megatron_optimizer(config, [model])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _state_bytes(optimizer: Any) -> tuple[int, int]:
    total, numel = 0, 0
    for inner in optimizer.chained_optimizers:
        opt = inner.optimizer
        states = [opt.state] + ([opt.base.state] if hasattr(opt, "base") else [])  # E's base
        for group in opt.param_groups:
            for p in group["params"]:
                numel += p.numel()
                for state in states:
                    for v in state[p].values():
                        if torch.is_tensor(v) and v.shape == p.shape:
                            total += v.numel() * v.element_size()
    return total, numel


def run(name: str, shape: dict[str, int], device: str, warmup: int, steps: int) -> dict:
    from megatron.core.distributed import finalize_model_grads

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = _model(shape, device)
    optimizer = _optimizer(name, model)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device="cpu").manual_seed(7)
    b, s = shape["micro_batch"], shape["seq"]
    step_s, opt_s, losses = [], [], []
    for i in range(warmup + steps):
        tokens = torch.randint(0, shape["vocab"], (b, s + 1), generator=gen).to(device)
        positions = torch.arange(s, device=device).unsqueeze(0).expand(b, s)
        _sync(device)
        t0 = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        loss = model(tokens[:, :-1], positions, attention_mask=None, labels=tokens[:, 1:])
        loss = loss.float().mean()
        loss.backward()
        finalize_model_grads([model])
        _sync(device)
        t1 = time.perf_counter()
        ok, _, _ = optimizer.step()
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            step_s.append(t2 - t0)
            opt_s.append(t2 - t1)
            losses.append(float(loss))
    state, opt_numel = _state_bytes(optimizer)
    mean_step = sum(step_s) / len(step_s)
    result = {
        "params": params,
        "tokens_per_s": b * s / mean_step,
        "step_ms": 1e3 * mean_step,
        "optimizer_ms": 1e3 * sum(opt_s) / len(opt_s),
        "optimizer_share": sum(opt_s) / sum(step_s),
        "state_bytes_per_param": state / max(opt_numel, 1),
        "peak_GB": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "loss_first_last": [losses[0], losses[-1]],
        "last_step_ok": bool(ok),
    }
    del model, optimizer
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small model (CPU smoke run)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("no CUDA device: pass --tiny for the CPU smoke run")
    from alto.megatron import cpu_compat

    cpu_compat.enable()
    _init(device)
    shape = TINY if args.tiny else FULL
    started = time.time()
    results = {
        name: run(name, shape, device, args.warmup, args.steps)
        for name in ("adamw", "alto", "e_adamw")
    }
    a, b, e = results["adamw"], results["alto"], results["e_adamw"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "results": results,
        "alto_vs_adamw": {
            "tokens_per_s_ratio": b["tokens_per_s"] / a["tokens_per_s"],
            "extra_state_bytes_per_param": b["state_bytes_per_param"] - a["state_bytes_per_param"],
            "peak_GB_delta": None if a["peak_GB"] is None else b["peak_GB"] - a["peak_GB"],
        },
        "e_adamw_vs_adamw": {"tokens_per_s_ratio": e["tokens_per_s"] / a["tokens_per_s"]},
        "wall_s": round(time.time() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print("\n| optimizer | tokens/s | step ms | optimizer share | state B/param | peak GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        peak = "-" if r["peak_GB"] is None else f"{r['peak_GB']:.2f}"
        print(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['step_ms']:.1f} | "
            f"{100 * r['optimizer_share']:.1f}% | {r['state_bytes_per_param']:.1f} | {peak} |"
        )
    print(f"\nALTO / AdamW tokens/s: {report['alto_vs_adamw']['tokens_per_s_ratio']:.3f}")
    print(f"E(AdamW) / AdamW tokens/s: {report['e_adamw_vs_adamw']['tokens_per_s_ratio']:.3f}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
