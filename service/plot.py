"""PNG rendering of a comparison: loss curves per arm (mean with a band over seeds) and
the peak-memory overhead of each arm against the baseline.

The bands are `service.curves`' (`arm_bands`), the arrays the dashboard draws from
`GET /v1/comparisons/{id}/curves`: this module only draws them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.curves import Band


def comparison_figure(
    title: str,
    bands: Mapping[str, Mapping[str, Band]],
    summaries: list[ArmSummary],
    baseline: str,
) -> Figure:
    """The comparison's figure (Agg canvas: no display, thread-safe use); `bands` is
    `service.curves.arm_bands` of the comparison's runs, in arm order."""
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_train, ax_val, ax_mem = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 2, 1]})
    for ax, metric, label in (
        (ax_train, TRAIN_LOSS, "training loss"),
        (ax_val, VAL_LOSS, "validation loss"),
    ):
        drawn = False
        for i, (arm, arm_bands) in enumerate(bands.items()):
            band = arm_bands.get(metric)
            if band is None:
                continue
            color = f"C{i}"
            n = band.n_seeds
            ax.plot(
                band.steps, band.mean, color=color, label=f"{arm} ({n} seed{'s' if n > 1 else ''})"
            )
            ax.fill_between(band.steps, band.lower, band.upper, color=color, alpha=0.2, linewidth=0)
            drawn = True
        ax.set_title(f"{label} (mean ± std over seeds)")
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
    return fig


def render_comparison(
    title: str,
    bands: Mapping[str, Mapping[str, Band]],
    summaries: list[ArmSummary],
    baseline: str,
) -> bytes:
    """The comparison's figure as PNG bytes."""
    buf = io.BytesIO()
    comparison_figure(title, bands, summaries, baseline).savefig(buf, format="png")
    return buf.getvalue()
