"""Rich tables for jobs and comparisons (the CLI's and the demo's human output).

Only imported by the CLI, so the plain client does not need rich installed.
Numbers are formatted here, once, so the terminal table, the HTML report and
the docs all show the same figures.
"""

from __future__ import annotations

import math
from datetime import datetime

from rich.table import Table
from rich.text import Text

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


WIDE = 120
"""Terminal width from which listings show every column; narrower ones (80 columns, a
pipe or a CI log) keep the columns a reader needs whole and drop the rest."""


def is_wide(width: int | None) -> bool:
    """Whether a table of this width shows every column (None: as wide as it takes)."""
    return width is None or width >= WIDE


def _fit(
    headers: list[str], rows: list[list[str]], width: int | None, flexible: int
) -> list[int | None]:
    """Column widths for a table without borders (one space of padding each side): every
    column as wide as its widest cell, except column `flexible`, which gets what is left
    of `width` (None: no limit; 0: no room, leave the column out)."""
    natural = [max([len(h)] + [len(_plain(r[i])) for r in rows]) for i, h in enumerate(headers)]
    out: list[int | None] = list(natural)
    if width is None:
        out[flexible] = None
        return out
    rest = width - sum(n + 2 for i, n in enumerate(natural) if i != flexible) - 2
    out[flexible] = min(natural[flexible], rest) if rest >= 8 else 0
    return out


def _plain(cell: str) -> str:
    """A cell's text without rich markup (what takes room on the screen)."""
    return Text.from_markup(cell).plain


def _table(
    headers: list[str], rows: list[list[str]], widths: list[int | None], right: set[int]
) -> Table:
    table = Table(title=None, show_lines=False, box=None)
    keep = [i for i, w in enumerate(widths) if w != 0]
    for i in keep:
        table.add_column(
            headers[i],
            justify="right" if i in right else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=widths[i],
            style="bold" if i == 0 else None,
        )
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def jobs_table(jobs: list[Job], width: int | None = None) -> Table:
    """The jobs list; step/loss columns appear when the service sends latest metrics.
    Below `WIDE` columns the owner and creation time go, and the name takes what is left,
    so ids, statuses and numbers are never cut."""
    wide = is_wide(width)
    with_metrics = any(job.latest_metrics for job in jobs)
    headers = ["id", "name", "status"]
    if with_metrics:
        headers += ["step", "loss", "val loss"]
    if wide:
        headers += ["owner", "created"]
    rows = []
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
        if wide:
            row += [job.owner, fmt_time(job.created_at)]
        rows.append(row)
    right = {3, 4, 5} if with_metrics else set()
    return _table(headers, rows, _fit(headers, rows, None if wide else width, 1), right)


def comparisons_table(items: list[ComparisonInfo], width: int | None = None) -> Table:
    """The comparisons list: what each compares and how its jobs stand (below `WIDE`
    columns: id, status, jobs, and the arms in what room is left)."""
    wide = is_wide(width)
    headers = ["id", "status", "jobs", "arms (baseline first)"]
    if wide:
        headers += ["name", "seeds", "owner", "created"]
    rows = []
    for comp in items:
        arms = [comp.baseline] + [a for a in comp.arms if a != comp.baseline]
        row = [comp.id, status_text(comp.status), str(comp.jobs), ", ".join(arms)]
        if wide:
            row += [comp.name, str(len(comp.seeds)), comp.owner, fmt_time(comp.created_at)]
        rows.append(row)
    right = {2, 5}
    return _table(headers, rows, _fit(headers, rows, None if wide else width, 3), right)


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


def comparison_table(comp: Comparison, width: int | None = None) -> Table:
    """The summary: one row per arm when the terminal is `WIDE`; else stacked, one row
    per measure and one column per arm, which fits 80 columns for up to three arms."""
    seeds = ", ".join(str(s) for s in comp.seeds)
    title = f"comparison {comp.id} · {comp.name} · seeds {seeds}"
    rows = comparison_rows(comp)
    if is_wide(width):
        table = Table(title=title)
        for i, column in enumerate(COMPARISON_COLUMNS):
            table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for arm, row in zip(comp.arms, rows):
            row[1] = status_text(arm.status)
            table.add_row(*row)
        return table
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(row[0], justify="right", overflow="fold")
    for i, measure in enumerate(COMPARISON_COLUMNS[1:], start=1):
        cells = [status_text(arm.status) if i == 1 else row[i] for arm, row in zip(comp.arms, rows)]
        table.add_row(measure, *cells)
    return table
