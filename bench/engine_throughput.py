"""ALTO vs AdamW in the engine: the same spec trained twice, only the optimizer differs.

Prints each run's tokens/s, peak memory, optimizer-state bytes and the optimizer's
share of step time, then the ratios ALTO / AdamW (targets: throughput >= 0.95x on
the CPU demo spec, >= 0.98x on a GPU with the fused step).

    python bench/engine_throughput.py [SPEC] [--steps N] [--alto-lr LR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from alto_client import metrics as M
from alto_client.spec import JobSpec

from engine.launch import ensure_ray, launch
from engine.progress import read_state
from engine.reporting import METRICS_FILE

REPO = Path(__file__).resolve().parents[1]


def _mean_after_warmup(series: list[tuple[int, float]], skip: int) -> float:
    values = [v for s, v in series if s > skip] or [v for _, v in series]
    return sum(values) / len(values)


def measure(spec: JobSpec, run_dir: Path, skip: int) -> dict[str, float]:
    result = launch(spec, run_dir, start_ray=False)
    if not result.ok:
        raise SystemExit(f"{spec.optimizer.name} run failed: {result.error}")
    state = read_state(run_dir / METRICS_FILE)
    step_time = _mean_after_warmup(state.series[M.TRAIN_STEP_TIME_S], skip)
    optim_time = _mean_after_warmup(state.series[M.OPTIM_STEP_TIME_S], skip)
    peak = state.last.get(M.MEM_PEAK_ALLOCATED_BYTES) or state.last[M.MEM_PEAK_RSS_BYTES]
    return {
        "tokens_per_s": spec.tokens_per_step / step_time,
        "step_time_s": step_time,
        "optim_time_s": optim_time,
        "fwd_bwd_time_s": step_time - optim_time,
        "optim_share": optim_time / step_time,
        "peak_memory_bytes": peak,
        "optim_state_bytes": state.last[M.OPTIM_STATE_BYTES],
        "final_train_loss": state.last[M.TRAIN_LOSS],
        "final_val_loss": state.last.get(M.VAL_LOSS, float("nan")),
        "wall_s": result.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(REPO / "configs" / "tiny-moe-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of means")
    parser.add_argument("--alto-lr", type=float, default=None, help="ALTO's lr (default: spec's)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-engine")
    args = parser.parse_args(argv)

    base = JobSpec.load(args.spec)
    t = base.training
    overrides = {
        "training.steps": args.steps,
        "training.warmup_steps": min(t.warmup_steps, args.steps - 1),
        "training.eval_interval": 0,
        "training.checkpoint_interval": 0,
    }
    base = base.with_overrides(overrides)
    alto_opt = base.optimizer.model_dump() if base.optimizer.name == "alto" else {"name": "alto"}
    if args.alto_lr is not None:
        alto_opt["lr"] = args.alto_lr
    specs = {
        "alto": base.with_overrides({"optimizer": alto_opt}),
        "adamw": base.with_overrides({"optimizer": {"name": "adamw"}}),
    }
    r = base.resources
    ensure_ray(max(float(os.cpu_count() or 1), r.workers * r.cpus_per_worker + 1))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {
        name: measure(spec, (args.out / f"{stamp}-{name}").resolve(), args.skip)
        for name, spec in specs.items()
    }
    alto, adamw = results["alto"], results["adamw"]
    print(
        f"spec {args.spec}: {args.steps} steps, {base.tokens_per_step} tokens/step, "
        f"{base.resources.workers} {base.resources.device} worker(s)"
    )
    print(f"{'':22}{'alto':>14}{'adamw':>14}{'alto/adamw':>12}")
    rows = [
        ("tokens/s", "tokens_per_s", "{:,.0f}"),
        ("step time (s)", "step_time_s", "{:.4f}"),
        ("optimizer step (s)", "optim_time_s", "{:.4f}"),
        ("rest of step (s)", "fwd_bwd_time_s", "{:.4f}"),
        ("optimizer share", "optim_share", "{:.1%}"),
        ("peak memory (MiB)", "peak_memory_bytes", "{:,.1f}"),
        ("optim state (MiB)", "optim_state_bytes", "{:,.2f}"),
        ("final train loss", "final_train_loss", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        a, b = alto[key], adamw[key]
        if key.endswith("bytes"):
            a, b = a / 2**20, b / 2**20
        print(f"{label:22}{fmt.format(a):>14}{fmt.format(b):>14}{a / b:>12.3f}")
    ratio = alto["tokens_per_s"] / adamw["tokens_per_s"]
    target = 0.98 if base.resources.device == "gpu" else 0.95
    verdict = "meets" if ratio >= target else "MISSES"
    print(f"throughput ratio ALTO/AdamW = {ratio:.3f} ({verdict} the {target:.2f}x target)")
    (args.out / f"{stamp}-summary.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
