"""PNG rendering of a comparison: loss curves per arm (mean with a band over seeds) and
the peak-memory overhead of each arm against the baseline.

The bands are `service.curves`' (`arm_bands`), the arrays the dashboard draws from
`GET /v1/comparisons/{id}/curves`: this module only draws them.

Drawing is most of a plot request's cost (matplotlib builds and lays out every axis,
tick and label in Python), so:

- the figure is drawn once: fixed margins instead of `tight_layout` (a second full
  draw), legends at a fixed corner (`loc="best"` tests every line vertex against every
  candidate box), and a fast PNG compression level;
- `render_comparison` reuses built figures (a small pool; one request uses one at a
  time): their axes, tick objects, labels and the renderer's text-size cache survive,
  and only the data artists are replaced. A reused figure draws the same pixels as a
  fresh one (tests/service/test_render_cache.py);
- the curves are already at most `service.curves.DEFAULT_MAX_POINTS` points, about one
  a pixel, kept at each bucket's extremes (`service.downsample`).

The server also caches the PNG per data version (`service.render_cache`).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping

from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.curves import Band

MARGINS = {"left": 0.05, "right": 0.985, "bottom": 0.11, "top": 0.82, "wspace": 0.24}
# zlib level 1: a few ms instead of about 20 for a 1200 x 450 figure, 10% more bytes
PNG_OPTIONS = {"compress_level": 1}
LOSS_PANELS = ((TRAIN_LOSS, "training loss"), (VAL_LOSS, "validation loss"))
POOL_SIZE = 4  # idle figures kept (about 2 MB each)


class _Canvas:
    """A built figure: three panels with their fixed titles, labels and grids."""

    def __init__(self) -> None:
        fig = Figure(figsize=(12, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        self.fig = fig
        self.loss_axes: list[Axes] = []
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 2, 1]})
        # about what tight_layout chose for this figure, fixed
        fig.subplots_adjust(**MARGINS)
        for ax, (_, label) in zip(axes[:2], LOSS_PANELS):
            ax.set_title(f"{label} (mean ± std over seeds)")
            ax.set_xlabel("step")
            ax.set_ylabel("loss (nats/token)")
            ax.grid(alpha=0.3)
            self.loss_axes.append(ax)
        self.ax_mem: Axes = axes[2]
        self.ax_mem.grid(axis="y", alpha=0.3)
        self.suptitle = fig.suptitle("")

    def clear_data(self) -> None:
        """Remove what `draw` added; axes, ticks and labels stay."""
        for ax in (*self.loss_axes, self.ax_mem):
            for container in list(ax.containers):
                container.remove()
            for artist in (*ax.lines, *ax.collections, *ax.patches, *ax.texts):
                artist.remove()
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
            ax.relim()
            ax.autoscale(True)

    def draw(
        self,
        title: str,
        bands: Mapping[str, Mapping[str, Band]],
        summaries: list[ArmSummary],
        baseline: str,
    ) -> None:
        for ax, (metric, _) in zip(self.loss_axes, LOSS_PANELS):
            drawn = False
            for i, (arm, arm_bands) in enumerate(bands.items()):
                band = arm_bands.get(metric)
                if band is None:
                    continue
                color = f"C{i}"
                n = band.n_seeds
                label = f"{arm} ({n} seed{'s' if n > 1 else ''})"
                ax.plot(band.steps, band.mean, color=color, label=label)
                ax.fill_between(
                    band.steps, band.lower, band.upper, color=color, alpha=0.2, linewidth=0
                )
                drawn = True
            if drawn:
                ax.legend(loc="upper right")  # loss curves fall: their upper right is free
            else:
                ax.set_xlim(0.0, 1.0)
                ax.set_ylim(0.0, 1.0)
                ax.text(0.5, 0.5, "no points yet", ha="center", va="center", transform=ax.transAxes)
        ax = self.ax_mem
        names = [s.name for s in summaries]
        overhead = [s.peak_memory_overhead_pct or 0.0 for s in summaries]
        # numeric positions, not categories: a reused axis would keep old arm names
        positions = list(range(len(names)))
        ax.bar(positions, overhead, color=[f"C{i}" for i in positions])
        ax.set_xticks(positions, labels=names)
        ax.set_xlim(-0.5 - 0.1 * len(names), len(names) - 0.5 + 0.1 * len(names))
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"peak memory\nvs {baseline} (%)")
        self.suptitle.set_text(title)


def comparison_figure(
    title: str,
    bands: Mapping[str, Mapping[str, Band]],
    summaries: list[ArmSummary],
    baseline: str,
) -> Figure:
    """The comparison's figure, freshly built (Agg canvas: no display, thread-safe use);
    `bands` is `service.curves.arm_bands` of the comparison's runs, in arm order."""
    canvas = _Canvas()
    canvas.draw(title, bands, summaries, baseline)
    return canvas.fig


_POOL: list[_Canvas] = []
_POOL_LOCK = threading.Lock()


def render_comparison(
    title: str,
    bands: Mapping[str, Mapping[str, Band]],
    summaries: list[ArmSummary],
    baseline: str,
) -> bytes:
    """The comparison's figure as PNG bytes, drawn on a pooled figure."""
    with _POOL_LOCK:
        canvas = _POOL.pop() if _POOL else None
    if canvas is None:
        canvas = _Canvas()
    canvas.draw(title, bands, summaries, baseline)
    buf = io.BytesIO()
    canvas.fig.savefig(buf, format="png", pil_kwargs=PNG_OPTIONS)
    canvas.clear_data()  # (a figure that failed mid-draw is dropped, not pooled)
    with _POOL_LOCK:
        if len(_POOL) < POOL_SIZE:
            _POOL.append(canvas)
    return buf.getvalue()
