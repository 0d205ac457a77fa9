"""Optimizer step time and state memory: ALTO against AdamW, measured in one run.

    python bench/optim_step.py                  # GPT-2-small shapes on CPU (+ medium on CUDA)
    python bench/optim_step.py --reps 3 --model tiny
    python bench/optim_step.py --json out.json

Prints, per optimizer, the median step time, its ratio to AdamW (foreach; on CUDA
also fused) from the same run, and optimizer-state bytes per parameter. An
optimizer step is memory-bound, so the byte count explains the ratio: AdamW reads
theta, g, m, v and writes theta, m, v (28 B/param in fp32); ALTO also reads and
writes c and needs the per-tensor norms (48 B/param at the least). The
"published loop" row is a per-parameter Python loop computing ALTO the way the
authors' code does (a and g_{k-1} kept separately, bias-corrected copies of m and v
stored, one .item() per tensor for the trust ratio); ALTO must beat it widely.

The fused helper's Triton path (``alto.fused``) is timed on CUDA when importable.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from alto import ALTO, E

# (vocab, context, width, layers) of the GPT-2 family.
MODELS = {
    "tiny": (1000, 128, 64, 2),
    "gpt2-small": (50257, 1024, 768, 12),
    "gpt2-medium": (50257, 1024, 1024, 24),
}


def gpt2_shapes(name: str) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2 model (tied embeddings), in module order."""
    vocab, ctx, d, layers = MODELS[name]
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]  # ln_1, attention
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # ln_2, MLP
    shapes += [(d,), (d,)]  # ln_f
    return shapes


class PublishedLoop(torch.optim.Optimizer):
    """ALTO computed as the published code does: a baseline, not for use.

    Per tensor: explicit g_{k-1} and a, bias-corrected m and v stored as extra
    buffers, and the trust ratio read to the host with .item() (one sync per tensor).
    """

    def __init__(self, params, lr=1e-3, betas=(0.99, 0.9, 0.99), alpha=-5.0, eps=1e-6, wd=1e-4):
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, eps=eps, wd=wd))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["k"] = 0
                    for key in ("m", "v", "g_prev", "a"):
                        st[key] = torch.zeros_like(p)
                st["k"] += 1
                st["a"].mul_(b1).add_(g - st["g_prev"], alpha=1 - b1)
                g_tilde = g.add(st["a"], alpha=group["alpha"])
                st["m"].mul_(b2).add_(g_tilde, alpha=1 - b2)
                st["v"].mul_(b3).addcmul_(g_tilde, g_tilde, value=1 - b3)
                st["m_hat"] = st["m"] / (1 - b2 ** st["k"])
                st["v_hat"] = st["v"] / (1 - b3 ** st["k"])
                update = st["m_hat"] / (st["v_hat"].sqrt() + group["eps"])
                lr = group["lr"]
                if group["wd"] != 0:
                    update.add_(p, alpha=group["wd"])
                    w, r = p.norm(), update.norm()
                    ratio = torch.where((w > 0) & (r > 0), w / r, torch.ones_like(w))
                    lr *= ratio.item()
                p.add_(update, alpha=-lr)
                st["g_prev"] = g.clone()


def make_params(shapes, device, dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=gen) * 0.02).to(device=device, dtype=dtype)
        p.requires_grad_(True)
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device=device, dtype=dtype)
        params.append(p)
    return params


def state_bytes(opt: torch.optim.Optimizer) -> int:
    inner = getattr(opt, "base", None)
    total = 0
    for o in (opt, inner) if inner is not None else (opt,):
        for st in o.state.values():
            total += sum(
                v.numel() * v.element_size()
                for v in st.values()
                if torch.is_tensor(v) and v.dim() > 0
            )
    return total


def time_steps(opt, device: torch.device, reps: int, warmup: int) -> list[float]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        opt.step()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        opt.step()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _fused_available() -> bool:
    """alto.fused is built by another package and needs triton: time it only if it loads."""
    if importlib.util.find_spec("alto.fused") is None:
        return False
    try:
        import alto.fused as fused
    except ImportError:
        return False
    return bool(getattr(fused, "is_available", lambda: True)())


def candidates(device: torch.device, with_reference: bool) -> dict[str, Callable]:
    """Optimizers to time against the baselines (see ``baselines``)."""
    cuda = device.type == "cuda"
    # Each row is named by the implementation that runs it (opt.implementation,
    # checked when the row is built): the default is "blocked" on the CPU.
    c: dict[str, Callable] = {}
    if not cuda:
        c["alto_blocked"] = lambda g: ALTO(g, lr=1e-3)
    c["alto_foreach"] = lambda g: ALTO(g, lr=1e-3, foreach=True)
    c["alto_single"] = lambda g: ALTO(g, lr=1e-3, foreach=False)
    if cuda and _fused_available():
        c["alto_fused"] = lambda g: ALTO(g, lr=1e-3, fused=True)
    base = "fused" if cuda else "foreach"
    c[f"E(adamw_{base})"] = lambda g: E(
        torch.optim.AdamW(g, lr=1e-3, **{base: True}), alpha=-5.0, beta=0.99
    )
    if with_reference:
        c["published_loop"] = lambda g: PublishedLoop(g, lr=1e-3)
    return c


def baselines(device: torch.device) -> dict[str, Callable]:
    b: dict[str, Callable] = {
        "adamw_foreach": lambda g: torch.optim.AdamW(g, lr=1e-3, foreach=True),
    }
    if device.type == "cuda":
        b["adamw_fused"] = lambda g: torch.optim.AdamW(g, lr=1e-3, fused=True)
    return b


def run(
    model: str,
    device: torch.device,
    reps: int,
    warmup: int,
    with_reference: bool,
    only: list[str] | None = None,
) -> dict:
    """Time each candidate interleaved, step by step, with fresh baseline optimizers.

    On a shared machine the load drifts; alternating baseline and candidate steps
    over the same parameters puts both under the same conditions, so each ratio is
    taken within its own pair (median over median). Parameters and gradients are
    shared by the optimizers of a pair (timing does not depend on their values).
    """
    shapes = gpt2_shapes(model)
    params = make_params(shapes, device, torch.float32)
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": 1e-4},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    n = sum(p.numel() for p in params)
    base_makers = baselines(device)
    results: dict[str, dict] = {}
    base_times: dict[str, list[float]] = {b: [] for b in base_makers}
    chosen = candidates(device, with_reference)
    if only:
        unknown = sorted(set(only) - set(chosen))
        if unknown:
            raise SystemExit(f"--only: unknown {unknown}; choose from {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in only}
    for name, make in chosen.items():
        opts = {b: mk([dict(g) for g in groups]) for b, mk in base_makers.items()}
        opts[name] = make([dict(g) for g in groups])
        implementation = getattr(opts[name], "implementation", None)
        if name.startswith("alto_"):
            assert implementation == name.removeprefix("alto_"), (name, implementation)
        times: dict[str, list[float]] = {k: [] for k in opts}
        for opt in opts.values():
            time_steps(opt, device, 0, warmup)
        for _ in range(reps):
            for k, opt in opts.items():
                times[k] += time_steps(opt, device, 1, 0)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {
            "median_ms": med[name],
            "baseline_ms_same_window": {b: med[b] for b in base_makers},
            "ratios": {b: med[name] / med[b] for b in base_makers},
            "state_bytes_per_param": state_bytes(opts[name]) / n,
            "implementation": implementation,
        }
        for b in base_makers:
            base_times[b] += times[b]
            results.setdefault(b, {"state_bytes_per_param": state_bytes(opts[b]) / n})
        ratio_text = ", ".join(f"{v:.2f}x {b}" for b, v in results[name]["ratios"].items())
        runs = f" [{implementation}]" if implementation else ""
        print(f"  {name:<18} median {med[name]:9.1f} ms ({ratio_text}){runs}", flush=True)
        del opts
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for b in base_makers:
        results[b]["median_ms"] = statistics.median(base_times[b])
        results[b]["baseline_ms_same_window"] = {c: results[b]["median_ms"] for c in base_makers}
        results[b]["ratios"] = {
            c: statistics.median(base_times[b]) / statistics.median(base_times[c])
            for c in base_makers
        }
    ordered = {b: results[b] for b in base_makers}
    ordered.update({k: v for k, v in results.items() if k not in base_makers})
    return {"model": model, "device": str(device), "params": n, "results": ordered}


def sum_params(shapes) -> int:
    total = 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        total += n
    return total


def print_table(report: dict) -> None:
    """Ratios are taken within each candidate's own timing window (see ``run``)."""
    res = report["results"]
    bases = list(next(iter(res.values()))["ratios"])
    print(
        f"\n{report['model']} shapes, {report['params'] / 1e6:.1f}M fp32 params, {report['device']}"
    )
    cols = " | ".join(f"{b} ms (same window) | x {b}" for b in bases)
    print(f"| optimizer | median ms | {cols} | state B/param |")
    print("|" + "---|" * (3 + 2 * len(bases)))
    for name, r in res.items():
        vals = " | ".join(
            f"{r['baseline_ms_same_window'][b]:.1f} | {r['ratios'][b]:.2f}" for b in bases
        )
        print(f"| {name} | {r['median_ms']:.1f} | {vals} | {r['state_bytes_per_param']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed steps per optimizer (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (state init)")
    ap.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help="shapes (default: gpt2-small on CPU, gpt2-medium on CUDA)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-reference", action="store_true", help="skip the published loop")
    ap.add_argument("--only", default=None, help="comma-separated candidates to time")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        ap.error(f"--reps must be >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = ["cuda"] if args.device == "cuda" else ["cpu", "cuda"]
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    reports = []
    for dev in devices:
        model = args.model or ("gpt2-medium" if dev == "cuda" else "gpt2-small")
        print(f"timing {model} on {dev}: {args.warmup} warm-up + {args.reps} timed steps each")
        only = args.only.split(",") if args.only else None
        reports.append(
            run(model, torch.device(dev), args.reps, args.warmup, not args.no_reference, only)
        )
        print_table(reports[-1])
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
