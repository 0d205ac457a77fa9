"""Worker for the distributed megatron tests; launched by torchrun from test_megatron_distributed.py.

Phases (each is one process launch, so the import cost is paid once per phase):

* ``parity`` (2 processes): every DP=2 / TP=2 / EP=2 / PP=2 case for 6 steps, the
  slice-local negative control, the state-memory count, and the checkpoint save at
  step 3 plus the uninterrupted continuation to step 6.
* ``reference`` (1 process): the same models with DP=TP=EP=PP=1, and the DP=2
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

from alto.megatron import groups

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
    "alto_overlap_param_gather": H.Layout(overlap_param_gather=True),
    "e_overlap_param_gather": H.Layout(optimizer="e", overlap_param_gather=True),
    "alto_bf16_tp2_nodistopt": H.Layout(bf16=True, dist_opt=False, tp=2),
    "e_bf16_tp2_nodistopt": H.Layout(optimizer="e", bf16=True, dist_opt=False, tp=2),
    "adam_bf16_tp2_nodistopt": H.Layout(optimizer="adam", bf16=True, dist_opt=False, tp=2),
    # pipeline parallelism: 2 stages of one layer each, megatron's 1F1B schedule
    "alto_fp32_pp2": H.Layout(pp=2),
    "e_fp32_pp2": H.Layout(optimizer="e", pp=2),
    # tied embeddings: the last stage's output layer is a copy of the first stage's
    # embedding, their gradients summed by finalize_model_grads
    "alto_fp32_pp2_tied": H.Layout(pp=2, tied=True),
}

#: 4 processes: EP=2 with expert data parallelism 2 (and DP=4 for the dense part)
PARITY4_CASES: dict[str, H.Layout] = {
    "alto_moe_ep2_edp2": H.Layout(moe=True, ep=2),
    "e_moe_ep2_edp2": H.Layout(optimizer="e", moe=True, ep=2),
    # PP=2 x DP=2: each stage's DistributedOptimizer cuts its weights between 2 ranks
    "alto_fp32_pp2_dp2": H.Layout(pp=2),
    "e_fp32_pp2_dp2": H.Layout(optimizer="e", pp=2),
    # PP=2 x EP=2 (DP=2 for the dense part), MoE
    "alto_moe_pp2_ep2": H.Layout(moe=True, pp=2, ep=2),
}


def reference_layout(layout: H.Layout) -> H.Layout:
    """The single-process layout a parallel case must reproduce."""
    return dataclasses.replace(
        layout,
        tp=1,
        ep=1,
        pp=1,
        sp=False,
        dispatcher="allgather",
        bucket_size=None,
        overlap_param_gather=False,
    )


def optimizer_config(layout: H.Layout, **extra: Any) -> Any:
    from alto.megatron import AltoOptimizerConfig

    return AltoOptimizerConfig(
        optimizer=layout.optimizer,
        lr=1e-2,
        weight_decay=0.1,
        adam_eps=1e-4,
        clip_grad=1.0,
        bf16=layout.bf16,
        fp16=layout.fp16,
        use_distributed_optimizer=layout.dist_opt,
        overlap_param_gather=layout.overlap_param_gather,
        alto_eps=1e-4,
        alto_alpha=0.5,
        alto_beta1=0.01,
        e_alpha=-2.0,
        e_beta=0.9,
        **extra,
    )


def build(
    layout: H.Layout, *, megatron_factory: bool = False, overrides: dict | None = None, **extra: Any
) -> tuple[torch.nn.Module, Any]:
    from megatron.core.optimizer import get_megatron_optimizer as megatron_get

    from alto.megatron import get_megatron_optimizer

    H.set_layout(layout)
    model = H.wrap_ddp(H.build_model(layout), layout)
    factory = megatron_get if megatron_factory else get_megatron_optimizer
    return model, factory(optimizer_config(layout, **extra), [model], config_overrides=overrides)


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


#: the legacy ``torch`` format (Megatron-LM's ``--ckpt-format torch``): per-rank
#: torch.save of the state dicts plus the DistributedOptimizer's gathered parameter state
LEGACY = "torch"


def save_checkpoint(model: Any, optimizer: Any, path: Path, fmt: str = "dp_reshardable") -> None:
    from megatron.core import dist_checkpointing

    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    if fmt == LEGACY:
        state = {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, path / f"rank{torch.distributed.get_rank()}.pt")
        optimizer.save_parameter_state(str(path / "param_state.pt"))
        torch.distributed.barrier()
        return
    model_sd = model.module.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": fmt}
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, metadata=metadata),
    }
    dist_checkpointing.save(state, str(path))


def load_checkpoint(model: Any, optimizer: Any, path: Path, fmt: str = "dp_reshardable") -> None:
    from megatron.core import dist_checkpointing

    if fmt == LEGACY:
        state = torch.load(path / f"rank{torch.distributed.get_rank()}.pt", weights_only=False)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer.load_parameter_state(str(path / "param_state.pt"))
        return
    model_sd = model.module.sharded_state_dict()
    metadata = {"distrib_optim_sharding_type": fmt}
    template = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=metadata),
    }
    loaded = dist_checkpointing.load(template, str(path))
    model.module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])


CKPT_LAYOUT = H.Layout(bucket_size=None)
#: checkpoint round trips in fresh processes: name -> (layout, format); "dense" is also
#: loaded into DP=1
CKPT_LAYOUTS: dict[str, tuple[H.Layout, str]] = {
    "dense": (CKPT_LAYOUT, "dp_reshardable"),
    "bf16": (H.Layout(bf16=True, bucket_size=None), "dp_reshardable"),
    "moe_ep2": (H.Layout(moe=True, ep=2, bucket_size=None), "dp_reshardable"),
    "adam": (H.Layout(optimizer="adam", bucket_size=None), "dp_reshardable"),
    "bf16_mixed": (H.Layout(bf16=True, float16_module=False, bucket_size=None), "dp_reshardable"),
    "e": (H.Layout(optimizer="e", bucket_size=None), "dp_reshardable"),
    "e_bf16_moe_ep2": (
        H.Layout(optimizer="e", bf16=True, moe=True, ep=2, bucket_size=None),
        "dp_reshardable",
    ),
    # every other format megatron offers (0.16.1 dropped diff_carry in them; refused then)
    "fully_reshardable": (CKPT_LAYOUT, "fully_reshardable"),
    "dp_zero": (CKPT_LAYOUT, "dp_zero_gather_scatter"),
    "e_fully_reshardable": (H.Layout(optimizer="e", bucket_size=None), "fully_reshardable"),
    # trap: the legacy torch format, fp32 ("view of a leaf Variable") and bf16 (zero carry)
    "legacy_torch": (CKPT_LAYOUT, LEGACY),
    "legacy_torch_bf16": (H.Layout(bf16=True, bucket_size=None), LEGACY),
    "e_legacy_torch": (H.Layout(optimizer="e", bucket_size=None), LEGACY),
    # pipeline parallelism: each stage saves and loads its own layers and optimizer shard
    "pp2": (H.Layout(pp=2, bucket_size=None), "dp_reshardable"),
    # megatron's bucket-end padding overran the checkpoint tensor here (alto.megatron.distrib)
    "pp2_tied": (H.Layout(pp=2, tied=True, bucket_size=None), "dp_reshardable"),
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


def native_resources() -> dict[str, int]:
    """This rank's live process groups (the default one excepted) and OS threads."""
    with open("/proc/self/status") as status:
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    return {"groups": len(groups.live_groups()), "threads": threads}


def phase_parity(ckpt: Path) -> dict[str, Any]:
    own = torch.distributed.new_group(list(range(torch.distributed.get_world_size())))
    cases = iter(PARITY_CASES.items())
    name, layout = next(cases)
    results: dict[str, Any] = {name: run_case(layout)}
    results["resources_after_first_layout"] = native_resources()
    results.update({name: run_case(layout) for name, layout in cases})
    results["alto_fp32_dp2_slice_local"] = run_case(H.Layout(), slice_local=True)
    results["alto_fp32_tp2_slice_local"] = run_case(H.Layout(tp=2), slice_local=True)
    results["adam_fp32_dp2_megatron_factory"] = run_case(
        H.Layout(optimizer="adam"), megatron_factory=True
    )
    model, optimizer = build(CKPT_LAYOUT)
    try:
        optimizer.sharded_state_dict(
            model.module.sharded_state_dict(),
            metadata={"distrib_optim_sharding_type": "fully_sharded_model_space"},
        )
        results["fs_model_space_refused"] = ""
    except ValueError as error:
        results["fs_model_space_refused"] = str(error)
    results["fp16_skip_alto"] = fp16_skipped_step("alto")
    results["fp16_skip_e"] = fp16_skipped_step("e")
    results["group_overrides"] = group_overrides()
    for name, (layout, fmt) in CKPT_LAYOUTS.items():
        model, optimizer = build(layout)
        first = H.train_steps(model, optimizer, range(SAVE_AT))
        save_checkpoint(model, optimizer, ckpt / name, fmt)
        rest = H.train_steps(model, optimizer, range(SAVE_AT, STEPS))
        results[f"ckpt_uninterrupted_{name}"] = {
            "params": snapshot(model),
            "losses": first + rest,
            "steps": _steps(optimizer),
        }
    del model, optimizer
    H.set_layout(CKPT_LAYOUT)  # releases the last case, as every layout change does
    results["resources_after_last_layout"] = native_resources()
    results["layouts_walked"] = H.layouts_set
    results["own_group_survived"] = own in groups.live_groups()
    return results


def _state_tensors(optimizer: Any) -> list[torch.Tensor]:
    out = []
    for inner in optimizer.chained_optimizers:
        for states in _states(inner.optimizer):
            for state in states.values():
                out += [v.detach().clone() for v in state.values() if torch.is_tensor(v)]
        for group in inner.optimizer.param_groups:
            out += [p.detach().clone() for p in group["params"]]
    return out


def fp16_skipped_step(optimizer_name: str) -> dict[str, Any]:
    """fp16 with dynamic loss scaling: 2 good steps, then a step whose scaled gradients
    overflow (the loss scale forced to 2**40) must leave every optimizer state tensor,
    main parameter and model parameter bitwise unchanged; the next step (at the old
    scale again) applies and changes the state."""
    layout = H.Layout(fp16=True, optimizer=optimizer_name, bucket_size=None)
    model, optimizer = build(layout, initial_loss_scale=2.0**8)
    good = [H.one_step(model, optimizer, s)[0] for s in range(2)]
    state, params = _state_tensors(optimizer), [p.detach().clone() for p in model.parameters()]
    for inner in optimizer.chained_optimizers:
        inner.grad_scaler._scale = torch.tensor([2.0**40])
    skipped_ok, _ = H.one_step(model, optimizer, 2)
    state_after = _state_tensors(optimizer)
    params_after = [p.detach().clone() for p in model.parameters()]
    for inner in optimizer.chained_optimizers:  # back to a scale that does not overflow
        inner.grad_scaler._scale = torch.tensor([2.0**8])
    next_ok = H.one_step(model, optimizer, 3)[0]
    return {
        "good": good,
        "skipped": not skipped_ok,
        "state_count": len(state),
        "state_equal": len(state) == len(state_after)
        and all(torch.equal(a, b) for a, b in zip(state, state_after)),
        "params_equal": all(torch.equal(a, b) for a, b in zip(params, params_after)),
        "next_ok": next_ok,
        "state_changed_by_next": any(
            not torch.equal(a, b) for a, b in zip(state_after, _state_tensors(optimizer))
        ),
    }


def group_overrides() -> dict[str, Any]:
    """Per-group config_overrides of ALTO's betas / eps / alpha reach ALTO's groups."""
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate

    vectors = ParamKey(predicate=ParamPredicate(name="vectors", fn=lambda p: p.ndim == 1))
    override = {"betas": (0.5, 0.8, 0.95), "eps": 1e-3, "alpha": 0.25, "wd_mult": 0.0}
    model, optimizer = build(H.Layout(), overrides={vectors: override})
    groups = [
        (tuple(g["betas"]), g["eps"], g["alpha"], len(g["params"]))
        for inner in optimizer.chained_optimizers
        for g in inner.optimizer.param_groups
    ]
    losses = H.train_steps(model, optimizer, range(2))
    return {"groups": groups, "losses": losses}


def resumed(
    ckpt: Path, layout: H.Layout, fmt: str = "dp_reshardable", *, drop_carry: bool = False
) -> dict[str, Any]:
    model, optimizer = build(layout)
    load_checkpoint(model, optimizer, ckpt, fmt)
    if drop_carry:  # negative control: what megatron's Adam-only loader would leave
        for inner in optimizer.chained_optimizers:
            for state in inner.optimizer.state.values():
                state["diff_carry"].zero_()  # ALTO's and E's own state alike
    losses = H.train_steps(model, optimizer, range(SAVE_AT, STEPS))
    return {"params": snapshot(model), "losses": losses, "steps": _steps(optimizer)}


MEGATRON_LM_ARGS = [
    "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
    "--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "1",
    "--global-batch-size", "1", "--train-iters", "3",
    "--optimizer", "alto", "--alto-alpha", "0.5", "--alto-beta1", "0.01", "--alto-eps", "1e-4",
    "--lr", "1e-2", "--weight-decay", "0.1", "--clip-grad", "1.0",
    "--use-distributed-optimizer", "--bf16",
]  # fmt: skip


def megatron_lm_builder() -> dict[str, Any]:
    """Megatron-LM's own argument parser and config builder, then its factory call, with
    alto.megatron.megatron_lm installed: ALTO inside the DistributedOptimizer."""
    import megatron.training.arguments as arguments
    import megatron.training.training as training

    from alto.megatron import megatron_lm

    megatron_lm.install()
    saved, sys.argv = sys.argv, ["pretrain_gpt.py", *MEGATRON_LM_ARGS]
    try:
        args = arguments.parse_args(None)
        arguments.validate_args(args, {})
    finally:
        sys.argv = saved
    config, overrides = training.get_megatron_optimizer_config(args)
    layout = H.Layout(bf16=True, bucket_size=None)
    H.set_layout(layout)
    model = H.wrap_ddp(H.build_model(layout), layout)
    optimizer = training.get_megatron_optimizer(config, [model], config_overrides=overrides)
    losses = H.train_steps(model, optimizer, range(2))
    inner = optimizer.chained_optimizers[0]
    return {
        "config": type(config).__name__,
        "wrapper": type(inner).__name__,
        "inner": type(inner.optimizer).__name__,
        "hyper": (config.alto_alpha, config.alto_beta1, config.alto_eps, config.lr, config.bf16),
        "reducer": inner.optimizer.norm_reducer is not None,
        "state_keys": sorted(next(iter(inner.optimizer.state.values()))),
        "losses": losses,
    }


def phase_parity4(ckpt: Path) -> dict[str, Any]:
    return {name: run_case(layout) for name, layout in PARITY4_CASES.items()}


def phase_reference(ckpt: Path) -> dict[str, Any]:
    cases = [*PARITY_CASES.values(), *PARITY4_CASES.values()]
    layouts = {reference_layout(layout) for layout in cases}
    results = {repr(layout): run_case(layout) for layout in sorted(layouts, key=repr)}
    results["ckpt_resumed_dp1"] = resumed(ckpt / "dense", CKPT_LAYOUT)
    results["megatron_lm_builder"] = megatron_lm_builder()
    return results


def phase_resume(ckpt: Path) -> dict[str, Any]:
    results = {
        f"ckpt_resumed_{name}": resumed(ckpt / name, layout, fmt)
        for name, (layout, fmt) in CKPT_LAYOUTS.items()
    }
    results["ckpt_resumed_dense_no_carry"] = resumed(ckpt / "dense", CKPT_LAYOUT, drop_carry=True)
    results["ckpt_resumed_e_no_carry"] = resumed(ckpt / "e", CKPT_LAYOUTS["e"][0], drop_carry=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("parity", "parity4", "reference", "resume"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ckpt", type=Path, required=True)
    args = parser.parse_args()
    faulthandler.enable()
    faulthandler.dump_traceback_later(float(os.environ.get("WORKER_TIMEOUT", "240")), exit=True)
    H.init_distributed()
    if args.phase == "parity":
        results = phase_parity(args.ckpt)
    elif args.phase == "parity4":
        results = phase_parity4(args.ckpt)
    elif args.phase == "reference":
        results = phase_reference(args.ckpt)
    else:
        results = phase_resume(args.ckpt)
    torch.save(results, args.out / f"{args.phase}_rank{torch.distributed.get_rank()}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
