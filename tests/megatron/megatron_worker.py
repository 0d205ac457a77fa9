"""Worker for the distributed megatron tests; launched by torchrun from test_megatron_distributed.py.

Phases (each is one process launch, so the import cost is paid once per phase):

* ``parity`` (2 processes): every DP=2 / TP=2 / EP=2 case for 6 steps, the
  slice-local negative control, the state-memory count, and the checkpoint save at
  step 3 plus the uninterrupted continuation to step 6.
* ``reference`` (1 process): the same models with DP=TP=EP=1, and the DP=2
  checkpoint loaded into DP=1 and continued.
* ``resume`` (2 processes): the DP=2 checkpoint loaded in fresh processes and
  continued to step 6.

Each rank writes ``<out>/<phase>_rank<r>.pt``: case -> {"params": [(canonical name,
partition dim, tp rank, tp size, fp32 tensor)], "losses": [...], ...}; the test
process compares them.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import megatron_harness as H

STEPS = 6
SAVE_AT = 3
SHARDING = {"distrib_optim_sharding_type": "dp_reshardable"}

PARITY_CASES: dict[str, H.Layout] = {
    "alto_fp32_dp2": H.Layout(),
    "alto_bf16_dp2": H.Layout(bf16=True),
    "adam_fp32_dp2": H.Layout(optimizer="adam"),
    "adam_bf16_dp2": H.Layout(optimizer="adam", bf16=True),
    "alto_moe_dp2": H.Layout(moe=True),
    "alto_fp32_dp2_nodistopt": H.Layout(dist_opt=False),
    "alto_fp32_tp2": H.Layout(tp=2),
    "alto_moe_tp2_sp": H.Layout(moe=True, tp=2, sp=True),
    "alto_moe_ep2": H.Layout(moe=True, ep=2),
    "alto_moe_ep2_alltoall": H.Layout(moe=True, ep=2, dispatcher="alltoall"),
    "e_fp32_dp2": H.Layout(optimizer="e"),
    "e_bf16_dp2": H.Layout(optimizer="e", bf16=True),
    "e_fp32_tp2": H.Layout(optimizer="e", tp=2),
    "e_moe_ep2": H.Layout(optimizer="e", moe=True, ep=2),
}


def reference_layout(layout: H.Layout) -> H.Layout:
    """The single-process layout a parallel case must reproduce."""
    return dataclasses.replace(
        layout, tp=1, ep=1, sp=False, dispatcher="allgather", bucket_size=None
    )


def optimizer_config(layout: H.Layout) -> Any:
    from alto.megatron import AltoOptimizerConfig

    return AltoOptimizerConfig(
        optimizer=layout.optimizer,
        lr=1e-2,
        weight_decay=0.1,
        adam_eps=1e-4,
        clip_grad=1.0,
        bf16=layout.bf16,
        use_distributed_optimizer=layout.dist_opt,
        alto_eps=1e-4,
        alto_alpha=0.5,
        alto_beta1=0.01,
        e_alpha=-2.0,
        e_beta=0.9,
    )


def build(layout: H.Layout, *, megatron_factory: bool = False) -> tuple[torch.nn.Module, Any]:
    from megatron.core.optimizer import get_megatron_optimizer as megatron_get

    from alto.megatron import get_megatron_optimizer

    H.set_layout(layout)
    model = H.wrap_ddp(H.build_model(layout), layout)
    factory = megatron_get if megatron_factory else get_megatron_optimizer
    return model, factory(optimizer_config(layout), [model])


def snapshot(model: torch.nn.Module) -> list[tuple[str, int | None, int, int, torch.Tensor]]:
    out = []
    for name, param in model.named_parameters():
        cname, dim, rank, size = H.canonical(name, param)
        out.append((cname, dim, rank, size, param.detach().float().clone()))
    return out


def _states(inner: Any) -> list[dict]:
    """The per-parameter state dicts of an inner optimizer: E keeps its base's apart."""
    base = getattr(inner, "base", None)
    return [inner.state] + ([base.state] if base is not None else [])


def state_bytes(optimizer: Any) -> dict[str, int]:
    """Bytes of full-size optimizer state tensors and the elements they cover, this rank."""
    total, numel = 0, 0
    for inner in optimizer.chained_optimizers:
        for group in inner.optimizer.param_groups:
            for p in group["params"]:
                numel += p.numel()
                for state in _states(inner.optimizer):
                    for value in state[p].values():
                        if isinstance(value, torch.Tensor) and value.shape == p.shape:
                            total += value.numel() * value.element_size()
    return {"state_bytes": total, "opt_numel": numel}


def run_case(
    layout: H.Layout, *, slice_local: bool = False, megatron_factory: bool = False
) -> dict[str, Any]:
    model, optimizer = build(layout, megatron_factory=megatron_factory)
    if slice_local:
        for inner in optimizer.chained_optimizers:
            inner.optimizer.norm_reducer = None  # the wrong, slice-local trust ratio
    losses = H.train_steps(model, optimizer, range(STEPS))
    result = {"params": snapshot(model), "losses": losses, **state_bytes(optimizer)}
    result["model_numel"] = sum(p.numel() for p in model.parameters())
    return result


def save_checkpoint(model: Any, optimizer: Any, path: Path) -> None:
    from megatron.core import dist_checkpointing

    model_sd = model.module.sharded_state_dict()
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, metadata=SHARDING),
    }
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(state, str(path))


def load_checkpoint(model: Any, optimizer: Any, path: Path) -> None:
    from megatron.core import dist_checkpointing

    model_sd = model.module.sharded_state_dict()
    template = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=SHARDING),
    }
    loaded = dist_checkpointing.load(template, str(path))
    model.module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])


CKPT_LAYOUT = H.Layout(bucket_size=None)
#: checkpoint round trips in fresh processes; "dense" is also loaded into DP=1
CKPT_LAYOUTS: dict[str, H.Layout] = {
    "dense": CKPT_LAYOUT,
    "bf16": H.Layout(bf16=True, bucket_size=None),
    "moe_ep2": H.Layout(moe=True, ep=2, bucket_size=None),
    "adam": H.Layout(optimizer="adam", bucket_size=None),
    "bf16_mixed": H.Layout(bf16=True, float16_module=False, bucket_size=None),
    "e": H.Layout(optimizer="e", bucket_size=None),
    "e_bf16_moe_ep2": H.Layout(optimizer="e", bf16=True, moe=True, ep=2, bucket_size=None),
}


def _steps(optimizer: Any) -> list[float]:
    return sorted(
        {
            float(s["step"])
            for i in optimizer.chained_optimizers
            for states in _states(i.optimizer)
            for s in states.values()
            if "step" in s
        }
    )


def phase_parity(ckpt: Path) -> dict[str, Any]:
    results = {name: run_case(layout) for name, layout in PARITY_CASES.items()}
    results["alto_fp32_dp2_slice_local"] = run_case(H.Layout(), slice_local=True)
    results["alto_fp32_tp2_slice_local"] = run_case(H.Layout(tp=2), slice_local=True)
    results["adam_fp32_dp2_megatron_factory"] = run_case(
        H.Layout(optimizer="adam"), megatron_factory=True
    )
    for name, layout in CKPT_LAYOUTS.items():
        model, optimizer = build(layout)
        first = H.train_steps(model, optimizer, range(SAVE_AT))
        save_checkpoint(model, optimizer, ckpt / name)
        rest = H.train_steps(model, optimizer, range(SAVE_AT, STEPS))
        results[f"ckpt_uninterrupted_{name}"] = {
            "params": snapshot(model),
            "losses": first + rest,
            "steps": _steps(optimizer),
        }
    return results


def resumed(ckpt: Path, layout: H.Layout, *, drop_carry: bool = False) -> dict[str, Any]:
    model, optimizer = build(layout)
    load_checkpoint(model, optimizer, ckpt)
    if drop_carry:  # negative control: what megatron's Adam-only loader would leave
        for inner in optimizer.chained_optimizers:
            for state in inner.optimizer.state.values():
                state["diff_carry"].zero_()  # ALTO's and E's own state alike
    losses = H.train_steps(model, optimizer, range(SAVE_AT, STEPS))
    return {"params": snapshot(model), "losses": losses, "steps": _steps(optimizer)}


def phase_reference(ckpt: Path) -> dict[str, Any]:
    layouts = {reference_layout(layout) for layout in PARITY_CASES.values()}
    results = {repr(layout): run_case(layout) for layout in sorted(layouts, key=repr)}
    results["ckpt_resumed_dp1"] = resumed(ckpt / "dense", CKPT_LAYOUT)
    return results


def phase_resume(ckpt: Path) -> dict[str, Any]:
    results = {
        f"ckpt_resumed_{name}": resumed(ckpt / name, layout)
        for name, layout in CKPT_LAYOUTS.items()
    }
    results["ckpt_resumed_dense_no_carry"] = resumed(ckpt / "dense", CKPT_LAYOUT, drop_carry=True)
    results["ckpt_resumed_e_no_carry"] = resumed(ckpt / "e", CKPT_LAYOUTS["e"], drop_carry=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("parity", "reference", "resume"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    args = parser.parse_args()
    faulthandler.enable()
    faulthandler.dump_traceback_later(float(os.environ.get("WORKER_TIMEOUT", "240")), exit=True)
    H.init_distributed()
    if args.phase == "parity":
        results = phase_parity(args.ckpt)
    elif args.phase == "reference":
        results = phase_reference(args.ckpt)
    else:
        results = phase_resume(args.ckpt)
    torch.save(results, args.out / f"{args.phase}_rank{torch.distributed.get_rank()}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
