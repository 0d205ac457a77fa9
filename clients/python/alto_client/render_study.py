"""Rich tables for studies: the plan before anything runs, and the summary per batch size.

Numbers go through `alto_client.render`'s formatters, so a study reads like a comparison.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from alto_client.render import (
    _fit,
    _table,
    fmt_duration,
    fmt_num,
    fmt_ratio,
    fmt_time,
    is_wide,
    status_text,
)
from alto_client.study import Study, StudyArmResult, StudyInfo, StudyPlan


def _int(n: int | float) -> str:
    return f"{n:,.0f}"


def _params(params: dict[str, float] | None) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(params.items()))


def _ci(ci: tuple[float, float] | None, digits: int = 4) -> str:
    if ci is None:
        return "-"
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def plan_table(plan: StudyPlan) -> Group:
    """Jobs, steps and tokens per batch size and in all, the trial points, the estimate."""
    headers = [
        "batch",
        "steps",
        "tokens/job",
        "warmup",
        "eval every",
        "eval batches",
        "trials",
        "finals",
    ]
    rows = [
        [
            str(b.batch_size),
            _int(b.steps),
            _int(b.tokens_per_job),
            str(b.warmup_steps),
            str(b.eval_interval),
            str(b.eval_batches),
            str(b.tuning_jobs),
            str(b.final_jobs),
        ]
        for b in plan.batches
    ]
    table = _table(headers, rows, [None] * len(headers), set(range(len(headers))))
    unit = "GPU" if plan.resource == "gpu" else "core"
    lines = [
        Text.from_markup(
            f"[bold]{plan.jobs}[/] jobs ({plan.tuning_jobs} tuning, {plan.final_jobs} final), "
            f"{_int(plan.steps)} steps, {_int(plan.tokens)} tokens"
        ),
        Text(
            f"estimate: {plan.resource_hours:.3g} {unit}-hours"
            + (
                f", at least {fmt_duration(plan.cluster_hours * 3600)} on this cluster"
                if plan.cluster_hours is not None
                else ""
            )
            + f" ({plan.estimate_basis})"
        ),
    ]
    for arm, points in plan.trials.items():
        shown = "; ".join(_params(p) for p in points[:8])
        more = f" (+{len(points) - 8} more)" if len(points) > 8 else ""
        lines.append(Text(f"{arm} trials: {shown}{more}"))
    return Group(table, *lines)


def _arm_row(arm: StudyArmResult, baseline: str) -> list[str]:
    is_base = arm.name == baseline
    chosen = _params(arm.chosen)
    if arm.on_edge:
        chosen += f" [yellow](edge: {', '.join(arm.on_edge)})[/]"
    if arm.steps_to_target is None:
        reach = "not reached" if arm.reached_target == 0 else "-"
    else:
        reach = f"{arm.steps_to_target:.0f} ({fmt_ratio(arm.speedup)})"
    return [
        arm.name + (" (baseline)" if is_base else ""),
        chosen,
        fmt_num(arm.final_val_loss_mean),
        _ci(arm.final_val_loss_ci),
        "-" if is_base else _signed(arm.delta_vs_baseline),
        "-" if is_base else _ci(arm.delta_ci, 3),
        "-" if is_base else (arm.verdict or "-"),
        reach,
        fmt_ratio(arm.tokens_per_s_ratio),
        fmt_ratio(arm.peak_memory_ratio),
        fmt_ratio(arm.optimizer_state_ratio),
    ]


SUMMARY_COLUMNS = [
    "arm",
    "chosen",
    "final val",
    "95% CI",
    "Δ vs base",
    "Δ 95% CI",
    "verdict",
    "steps to target",
    "tok/s",
    "peak mem",
    "optim state",
]


def _batch_table(title: str, rows: list[list[str]], wide: bool) -> Table:
    """One row per arm when the terminal is wide; else stacked, one row per measure and
    one column per arm (fits 80 columns for two or three arms)."""
    table = Table(title=title, title_justify="left")
    if wide:
        for i, column in enumerate(SUMMARY_COLUMNS):
            table.add_column(column, justify="left" if i < 2 or i == 6 else "right")
        for row in rows:
            table.add_row(*row)
        return table
    table.add_column("", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(row[0], justify="right", overflow="fold")
    for i, measure in enumerate(SUMMARY_COLUMNS[1:], start=1):
        table.add_row(measure, *(row[i] for row in rows))
    return table


def study_tables(study: Study, width: int | None = None) -> Group:
    """One table per batch size (every arm against the tuned baseline), then the scaling
    points and the findings in plain sentences."""
    parts: list[Table | Text] = [
        Text.from_markup(
            f"study [bold]{study.id}[/] · {study.name} · phase {study.phase} · "
            f"{status_text(study.status)} · jobs "
            + ", ".join(f"{k.lower()} {v}" for k, v in sorted(study.jobs.items()))
        )
    ]
    for batch in study.batches:
        title = (
            f"batch {batch.batch_size} · {batch.steps} steps · target "
            f"{fmt_num(batch.target)} (tuned {study.baseline})"
            + (f" · eval noise ±{batch.eval_noise:.2g}" if batch.eval_noise is not None else "")
        )
        rows = [_arm_row(arm, study.baseline) for arm in batch.arms]
        parts.append(_batch_table(title, rows, is_wide(width)))
    if study.scaling:
        by_arm: dict[str, list[str]] = {}
        for p in study.scaling:
            cell = f"b{p.batch_size}: " + (
                f"{p.steps_to_target:.0f}" if p.reached and p.steps_to_target else "not reached"
            )
            by_arm.setdefault(p.arm, []).append(cell)
        parts.append(Text(f"steps to the common target {fmt_num(study.common_target)}:"))
        for arm, cells in by_arm.items():
            parts.append(Text(f"  {arm}: " + ", ".join(cells)))
    for finding in study.findings:
        parts.append(Text(f"· {finding}"))
    return Group(*parts)


def studies_table(items: list[StudyInfo], width: int | None = None) -> Table:
    """The studies list (below `WIDE` columns: id, phase, status, jobs, and the arms in
    what room is left)."""
    wide = is_wide(width)
    headers = ["id", "phase", "status", "jobs", "arms (baseline first)"]
    if wide:
        headers += ["batches", "name", "owner", "created"]
    rows = []
    for st in items:
        arms = [st.baseline] + [a for a in st.arms if a != st.baseline]
        row = [st.id, st.phase, status_text(st.status), str(st.jobs), ", ".join(arms)]
        if wide:
            row += [
                ",".join(str(b) for b in st.batch_sizes),
                st.name,
                st.owner,
                fmt_time(st.created_at),
            ]
        rows.append(row)
    return _table(headers, rows, _fit(headers, rows, None if wide else width, 4), {3})
