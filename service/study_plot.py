"""PNG rendering of a study: final validation loss against the batch size, the tuning
curves, the steps to the common target against perfect scaling, and the final runs'
validation curves at the largest batch size."""

from __future__ import annotations

import io

import numpy as np
from alto_client.metrics import VAL_LOSS
from alto_client.study import StudyRequest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from service.curves import seed_band
from service.study_analysis import StudyRun, StudySummary

_LINE_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)


def _batch_axis(ax: Axes, request: StudyRequest) -> None:
    """A log2 batch-size axis labelled with the study's batch sizes."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(request.batch_sizes, labels=[str(b) for b in request.batch_sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(request.batch_sizes) / 1.3, max(request.batch_sizes) * 1.3)
    ax.set_xlabel("global batch size")


def _colors(request: StudyRequest) -> dict[str, str]:
    return {arm.name: f"C{i}" for i, arm in enumerate(request.arms)}


def _final_loss_panel(ax: Axes, summary: StudySummary, request: StudyRequest) -> None:
    colors = _colors(request)
    drawn = False
    for arm in request.arms:
        xs, ys, lo, hi = [], [], [], []
        for batch in summary.batches:
            res = next((a for a in batch.arms if a.name == arm.name), None)
            if res is None or res.final_val_loss_mean is None:
                continue
            m = res.final_val_loss_mean
            ci = res.final_val_loss_ci or (m, m)
            xs.append(batch.batch_size)
            ys.append(m)
            lo.append(max(m - ci[0], 0.0))
            hi.append(max(ci[1] - m, 0.0))
        if xs:
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                color=colors[arm.name],
                marker="o",
                capsize=3,
                label=arm.name,
            )
            drawn = True
    ax.set_title("final validation loss (mean, 95% CI)")
    _batch_axis(ax, request)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    else:
        _no_data(ax)


def _tuning_panel(ax: Axes, summary: StudySummary, request: StudyRequest) -> None:
    colors = _colors(request)
    drawn = False
    for j, batch in enumerate(summary.batches):
        style = _LINE_STYLES[j % len(_LINE_STYLES)]
        for res in batch.arms:
            curve = np.array([np.nan if v is None else v for v in res.tuning_curve], dtype=float)
            if not np.isfinite(curve).any():
                continue
            ax.plot(
                np.arange(1, len(curve) + 1),
                curve,
                linestyle=style,
                color=colors.get(res.name, "black"),
                marker=".",
                drawstyle="steps-post",
                label=f"{res.name}, batch {batch.batch_size}",
            )
            drawn = True
    ax.set_title("tuning: best final validation loss so far")
    ax.set_xlabel("trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        _no_data(ax)


def _scaling_panel(ax: Axes, summary: StudySummary, request: StudyRequest) -> None:
    colors = _colors(request)
    drawn = False
    for i, arm in enumerate(request.arms):
        points = [p for p in summary.scaling if p.arm == arm.name and p.steps_to_target]
        if not points:
            continue
        xs = [p.batch_size for p in points]
        ys = [p.steps_to_target for p in points]
        ax.plot(xs, ys, color=colors[arm.name], label=arm.name)
        for p in points:
            # a hollow marker: not every seed reached the target
            ax.plot(
                p.batch_size,
                p.steps_to_target,
                marker=_MARKERS[i % len(_MARKERS)],
                color=colors[arm.name],
                markerfacecolor=colors[arm.name] if p.reached else "none",
                linestyle="none",
            )
        drawn = True
    base = [
        p for p in summary.scaling if p.arm == request.baseline and p.reached and p.steps_to_target
    ]
    if base:
        anchor = min(base, key=lambda p: p.batch_size)
        assert anchor.steps_to_target is not None
        xs = np.array(request.batch_sizes, dtype=float)
        ax.plot(
            xs,
            anchor.steps_to_target * anchor.batch_size / xs,
            color="gray",
            linestyle="--",
            linewidth=1,
            label="perfect scaling",
        )
    target = f" {summary.common_target:.3f}" if summary.common_target is not None else ""
    ax.set_title(f"steps to the common target{target}")
    ax.set_yscale("log")
    _batch_axis(ax, request)
    ax.set_ylabel("steps")
    ax.grid(alpha=0.3, which="both")
    if drawn:
        ax.legend()
    else:
        _no_data(ax)


def _curves_panel(ax: Axes, request: StudyRequest, runs: list[StudyRun]) -> None:
    colors = _colors(request)
    finals = [r for r in runs if r.role == "final" and r.run.get(VAL_LOSS).steps]
    drawn = False
    title = "final runs: validation loss"
    if finals:
        bs = max(r.batch_size for r in finals)
        title += f" at batch {bs}"
        for arm in request.arms:
            arm_runs = [r.run for r in finals if r.batch_size == bs and r.arm == arm.name]
            band = seed_band([run.get(VAL_LOSS) for run in arm_runs])
            if band is None:
                continue
            n = band.n_seeds
            color = colors[arm.name]
            label = f"{arm.name} ({n} seed{'s' if n > 1 else ''})"
            ax.plot(band.steps, band.mean, color=color, label=label)
            ax.fill_between(band.steps, band.lower, band.upper, color=color, alpha=0.2, linewidth=0)
            drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    else:
        _no_data(ax)


def render_study(
    name: str,
    summary: StudySummary,
    request: StudyRequest,
    runs: list[StudyRun],
    fmt: str = "png",
) -> bytes:
    """The study's figure as PNG (or `fmt`: svg, pdf) bytes (Agg canvas: no display,
    thread-safe use)."""
    fig = Figure(figsize=(12, 9), dpi=100)
    FigureCanvasAgg(fig)
    (ax_loss, ax_tune), (ax_scale, ax_curves) = fig.subplots(2, 2)
    _final_loss_panel(ax_loss, summary, request)
    _tuning_panel(ax_tune, summary, request)
    _scaling_panel(ax_scale, summary, request)
    _curves_panel(ax_curves, request, runs)
    fig.suptitle(f"{name}: {', '.join(a.name for a in request.arms)} (baseline {request.baseline})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()
