"""PNG rendering of a comparison: loss curves per arm (mean with a band over seeds) and
the peak-memory overhead of each arm against the baseline."""

from __future__ import annotations

import io
import math

import numpy as np
from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.compare import RunData


def _band(runs: list[RunData], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps common to every seed, with the mean and std of the metric there."""
    per_run: list[dict[int, float]] = []
    for run in runs:
        s = run.get(name)
        points = {st: v for st, v in zip(s.steps, s.values) if v is not None and math.isfinite(v)}
        if points:
            per_run.append(points)
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    if not common:
        return None
    data = np.array([[p[st] for st in common] for p in per_run])
    return np.array(common), data.mean(axis=0), data.std(axis=0)


def render_comparison(
    title: str, arms: dict[str, list[RunData]], summaries: list[ArmSummary], baseline: str
) -> bytes:
    """The comparison's figure as PNG bytes (Agg canvas: no display, thread-safe use)."""
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_train, ax_val, ax_mem = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 2, 1]})
    for ax, metric, label in (
        (ax_train, TRAIN_LOSS, "training loss"),
        (ax_val, VAL_LOSS, "validation loss"),
    ):
        drawn = False
        for i, (arm, runs) in enumerate(arms.items()):
            band = _band(runs, metric)
            if band is None:
                continue
            steps, mean, std = band
            color = f"C{i}"
            n = len(runs)
            ax.plot(steps, mean, color=color, label=f"{arm} ({n} seed{'s' if n > 1 else ''})")
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            drawn = True
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no points yet", ha="center", va="center", transform=ax.transAxes)
    names = [s.name for s in summaries]
    overhead = [s.peak_memory_overhead_pct or 0.0 for s in summaries]
    ax_mem.bar(names, overhead, color=[f"C{i}" for i in range(len(names))])
    ax_mem.axhline(0.0, color="black", linewidth=0.8)
    ax_mem.set_title(f"peak memory\nvs {baseline} (%)")
    ax_mem.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
