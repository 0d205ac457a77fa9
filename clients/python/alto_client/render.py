"""Rich tables for jobs and comparisons (the CLI's and the demo's human output).

Only imported by the CLI, so the plain client does not need rich installed.
Numbers are formatted here, once, so the terminal table, the HTML report and
the docs all show the same figures.
"""

from __future__ import annotations

import math
from datetime import datetime

from rich.table import Table

from alto_client.metrics import TRAIN_LOSS, VAL_LOSS
from alto_client.models import ArmSummary, Comparison, ComparisonInfo, Job, JobStatus

STATUS_STYLE = {
    JobStatus.PENDING: "dim",
    JobStatus.QUEUED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "magenta",
}


def fmt_num(value: float | None, digits: int = 4) -> str:
    """A float to ``digits`` significant digits; ``-`` for a missing value."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def fmt_rate(value: float | None) -> str:
    """Throughput: ``9042``, ``12.1k``, ``3.4M`` (no exponents in a table of rates)."""
    if value is None or not math.isfinite(value):
        return fmt_num(value)
    for limit, div, suffix in ((1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= limit:
            return f"{value / div:.1f}{suffix}"
    return f"{value:.0f}"


def fmt_metric(name: str, value: float | None) -> str:
    """A metric's value in its natural unit: bytes, counts, rates, else 4 digits."""
    if value is None or not math.isfinite(value):
        return fmt_num(value)
    if name.endswith("_bytes"):
        return fmt_bytes(value)
    if name == "model/params":
        return f"{value:,.0f}"
    if name.endswith("tokens_per_s"):
        return fmt_rate(value)
    return fmt_num(value)


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "-"
    if std is None or std == 0:
        return fmt_num(mean, digits)
    return f"{fmt_num(mean, digits)} ± {fmt_num(std, 2)}"


def fmt_signed(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}g}{suffix}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status_text(status: JobStatus) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{status.value}[/]"


def speedup_text(arm: ArmSummary, baseline: str) -> str:
    """Steps to reach the baseline's final validation loss, as the table shows it."""
    if arm.name == baseline:
        return "baseline"
    if arm.reached_baseline is None:
        return "-"
    if not arm.reached_baseline:
        return "not reached"
    steps = fmt_num(arm.steps_to_baseline, 4)
    ratio = fmt_ratio(arm.step_speedup_vs_baseline)
    return f"{steps} steps ({ratio})"


def job_steps(job: Job) -> int | None:
    training = job.spec.get("training") if isinstance(job.spec, dict) else None
    steps = training.get("steps") if isinstance(training, dict) else None
    return steps if isinstance(steps, int) else None


def jobs_table(jobs: list[Job]) -> Table:
    """The jobs list; step/loss columns appear when the service sends latest metrics."""
    with_metrics = any(job.latest_metrics for job in jobs)
    table = Table(title=None, show_lines=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("name")
    table.add_column("status")
    if with_metrics:
        table.add_column("step", justify="right")
        table.add_column("loss", justify="right")
        table.add_column("val loss", justify="right")
    table.add_column("owner")
    table.add_column("created")
    for job in jobs:
        row = [job.id, job.name, status_text(job.status)]
        if with_metrics:
            loss = job.latest_metrics.get(TRAIN_LOSS)
            val = job.latest_metrics.get(VAL_LOSS)
            total = job_steps(job)
            step = "-" if not loss else f"{loss.step}/{total}" if total else str(loss.step)
            row += [
                step,
                fmt_num(loss.value if loss else None),
                fmt_num(val.value if val else None),
            ]
        row += [job.owner, fmt_time(job.created_at)]
        table.add_row(*row)
    return table


def comparisons_table(items: list[ComparisonInfo]) -> Table:
    """The comparisons list: what each compares and how its jobs stand."""
    table = Table(title=None, show_lines=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("name")
    table.add_column("status")
    table.add_column("arms (baseline first)")
    table.add_column("seeds", justify="right")
    table.add_column("jobs", justify="right")
    table.add_column("owner")
    table.add_column("created")
    for comp in items:
        arms = [comp.baseline] + [a for a in comp.arms if a != comp.baseline]
        table.add_row(
            comp.id,
            comp.name,
            status_text(comp.status),
            ", ".join(arms),
            str(len(comp.seeds)),
            str(comp.jobs),
            comp.owner,
            fmt_time(comp.created_at),
        )
    return table


def job_table(job: Job) -> Table:
    """One job, as key/value rows."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = [
        ("id", job.id),
        ("name", job.name),
        ("status", status_text(job.status)),
    ]
    if job.status_reason:
        rows.append(("reason", job.status_reason))
    optimizer = job.spec.get("optimizer", {}) if isinstance(job.spec, dict) else {}
    rows += [
        ("owner", job.owner),
        ("tags", ", ".join(job.tags) or "-"),
        ("optimizer", str(optimizer.get("name", "-")) if isinstance(optimizer, dict) else "-"),
        ("steps", str(job_steps(job) or "-")),
        ("created", fmt_time(job.created_at)),
        ("started", fmt_time(job.started_at)),
        ("finished", fmt_time(job.finished_at)),
        ("ray job", job.ray_job_id or "-"),
    ]
    if job.comparison_id:
        rows.append(("comparison", f"{job.comparison_id} (arm {job.arm}, seed {job.seed})"))
    for name in sorted(job.latest_metrics):
        point = job.latest_metrics[name]
        rows.append((name, f"{fmt_metric(name, point.value)} @ step {point.step}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


COMPARISON_COLUMNS = (
    "arm",
    "status",
    "final val loss",
    "best val loss",
    "Δ vs baseline",
    "to baseline loss",
    "tokens/s",
    "peak mem",
    "optim state",
)


def comparison_rows(comp: Comparison) -> list[list[str]]:
    """The summary table as plain strings (shared by the terminal and HTML reports)."""
    rows = []
    for arm in comp.arms:
        rows.append(
            [
                arm.name + (" (baseline)" if arm.name == comp.baseline else ""),
                arm.status.value,
                fmt_mean_std(arm.final_val_loss_mean, arm.final_val_loss_std),
                fmt_mean_std(arm.best_val_loss_mean, arm.best_val_loss_std),
                "-" if arm.name == comp.baseline else fmt_signed(arm.val_loss_delta_vs_baseline),
                speedup_text(arm, comp.baseline),
                f"{fmt_rate(arm.tokens_per_s_mean)} ({fmt_ratio(arm.tokens_per_s_ratio)})",
                f"{fmt_bytes(arm.peak_memory_bytes_mean)} "
                f"({fmt_signed(arm.peak_memory_overhead_pct, 3, '%')})",
                f"{fmt_bytes(arm.optimizer_state_bytes)} "
                f"({fmt_ratio(arm.optimizer_state_bytes_ratio)})",
            ]
        )
    return rows


def comparison_table(comp: Comparison) -> Table:
    seeds = ", ".join(str(s) for s in comp.seeds)
    table = Table(title=f"comparison {comp.id} · {comp.name} · seeds {seeds}")
    for i, column in enumerate(COMPARISON_COLUMNS):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for arm, row in zip(comp.arms, comparison_rows(comp)):
        row[1] = status_text(arm.status)
        table.add_row(*row)
    return table
