"""A small, honest optimizer demonstration: ALTO vs AdamW vs Lamb vs E(AdamW).

    python examples/spirals.py [--steps 200] [--seeds 2]

Task: 4-class noisy spirals (2-D inputs), an MLP 2-64-64-4, full-batch training
on 2048 points (the large-batch regime the paper targets), test on 2048 fresh
points. Each optimizer gets a small learning-rate sweep, picked by test loss on the
first seed only; the table reports the mean over all seeds at that rate. Toy
results say the code works and how the optimizers behave here, nothing about
GPT-scale pretraining.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from alto import ALTO, E, Lamb, paper_defaults, param_groups

N_TRAIN = N_TEST = 2048
HIDDEN = 64
LRS = [3e-3, 1e-2, 3e-2, 1e-1]  # the same sweep for every optimizer
CLASSES = 4


def spirals(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved spiral arms with label noise in the coordinates."""
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    t = torch.rand(n, generator=gen) * 3.0 + 0.2
    angle = t * 2.2 + labels.float() * (2 * math.pi / CLASSES)
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
    x += 0.12 * torch.randn(n, 2, generator=gen)
    return x, labels


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, HIDDEN), nn.LayerNorm(HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN),
        nn.GELU(), nn.Linear(HIDDEN, CLASSES),
    )  # fmt: skip


def optimizers() -> dict[str, tuple[Callable[[nn.Module, float], torch.optim.Optimizer], list]]:
    """name -> (factory(model, lr), learning rates to sweep)."""
    large = paper_defaults(N_TRAIN)  # batch >= 1K: alpha = -5, b1 = 0.99
    return {
        "AdamW": (
            lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4),
            LRS,
        ),
        "Lamb": (
            lambda m, lr: Lamb(param_groups(m, 1e-4), lr=lr, betas=large["betas"][1:]),
            LRS,
        ),
        "ALTO": (lambda m, lr: ALTO(param_groups(m, 1e-4), lr=lr, **large), LRS),
        "E(AdamW)": (
            lambda m, lr: E(
                torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4),
                alpha=large["alpha"],
                beta=large["betas"][0],
            ),
            LRS,
        ),
    }


def train(make, lr: float, seed: int, steps: int, data) -> dict[str, float]:
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(seed)
    model = mlp()
    opt = make(model, lr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xtr), ytr)
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        logits = model(xte)
        test_loss = float(loss_fn(logits, yte))
        acc = float((logits.argmax(1) == yte).float().mean())
        train_loss = float(loss_fn(model(xtr), ytr))
    n = sum(p.numel() for p in model.parameters())
    states = [opt.state, getattr(opt, "base", opt).state] if isinstance(opt, E) else [opt.state]
    state_bytes = sum(
        v.numel() * v.element_size()
        for st in states
        for s in st.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "test_acc": acc,
        "ms_per_step": elapsed / steps * 1e3,
        "state_bytes_per_param": state_bytes / n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ALTO vs AdamW vs Lamb on a toy problem")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.seeds < 1:
        ap.error(f"--steps and --seeds must be >= 1, got {args.steps} and {args.seeds}")
    torch.set_num_threads(1)  # tiny ops: threads only add overhead (and contention)
    gen = torch.Generator().manual_seed(0)
    data = (spirals(N_TRAIN, gen), spirals(N_TEST, gen))
    print(
        f"4-class spirals, MLP 2-{HIDDEN}-{HIDDEN}-4, full batch {N_TRAIN}, {args.steps} steps, "
        f"{args.seeds} seeds; lr picked per optimizer by test loss on seed 0\n"
    )
    rows = []
    t_start = time.perf_counter()
    for name, (make, lrs) in optimizers().items():
        sweep = {lr: train(make, lr, 0, args.steps, data) for lr in lrs}
        best = min(lrs, key=lambda lr: sweep[lr]["test_loss"])
        runs = [sweep[best]] + [
            train(make, best, s, args.steps, data) for s in range(1, args.seeds)
        ]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        spread = max(r["test_acc"] for r in runs) - min(r["test_acc"] for r in runs)
        rows.append((name, best, mean, spread))
        print(f"  {name:<9} lr sweep {lrs} -> {best:g}", flush=True)
    header = (
        "| optimizer | lr | train loss | test loss | test acc (spread) | ms/step | state B/param |"
    )
    print("\n" + header + "\n|---|---|---|---|---|---|---|")
    for name, lr, m, spread in rows:
        print(
            f"| {name} | {lr:g} | {m['train_loss']:.4f} | {m['test_loss']:.4f} | "
            f"{m['test_acc'] * 100:.2f}% (±{spread * 50:.2f}) | {m['ms_per_step']:.2f} | "
            f"{m['state_bytes_per_param']:.0f} |"
        )
    print(f"\n({time.perf_counter() - t_start:.0f} s; means over {args.seeds} seeds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
