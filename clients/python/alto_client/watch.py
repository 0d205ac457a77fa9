"""Live progress bars for running jobs (``alto watch``, ``--watch``, ``alto demo``).

Progress comes from each job's ``latest_metrics`` (step, loss, validation loss,
tokens/s), which the service keeps current as the engine reports. Polling a
handful of jobs once a second is cheap, works through any proxy, and shows the
same numbers the jobs table shows; the SSE stream is for consumers that need
every point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from alto_client.client import Client
from alto_client.metrics import TRAIN_LOSS, TRAIN_TOKENS_PER_S, VAL_LOSS
from alto_client.models import Job, JobStatus
from alto_client.render import STATUS_STYLE, fmt_num, fmt_rate, job_steps


def _label(job: Job) -> str:
    if job.arm is not None:
        return f"{job.arm} seed {job.seed}"
    return job.name


def _fields(job: Job) -> dict[str, str]:
    loss = job.latest_metrics.get(TRAIN_LOSS)
    val = job.latest_metrics.get(VAL_LOSS)
    tps = job.latest_metrics.get(TRAIN_TOKENS_PER_S)
    style = STATUS_STYLE.get(job.status, "")
    return {
        "status": f"[{style}]{job.status.value:<9}[/]",
        "loss": fmt_num(loss.value if loss else None, 4),
        "val": fmt_num(val.value if val else None, 4),
        "tps": fmt_rate(tps.value if tps else None),
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<16}"),
        TextColumn("{task.fields[status]}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:>7}"),
        TextColumn("val {task.fields[val]:>7}"),
        TextColumn("tok/s {task.fields[tps]:>6}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=4,
        transient=False,
    )


def watch_jobs(
    client: Client,
    job_ids: Sequence[str],
    *,
    console: Console | None = None,
    interval: float = 1.0,
    timeout: float | None = None,
    on_poll: Callable[[list[Job]], None] | None = None,
) -> list[Job]:
    """Draw one progress bar per job until every job has ended; return the final jobs.

    ``timeout`` (seconds) stops watching early and returns the jobs as they are.
    """
    console = console or Console()
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs = [client.job(job_id) for job_id in job_ids]
    with _progress(console) as progress:
        tasks: dict[str, TaskID] = {}
        for job in jobs:
            total = job_steps(job)
            tasks[job.id] = progress.add_task(_label(job), total=total, **_fields(job))
        while True:
            for job in jobs:
                loss = job.latest_metrics.get(TRAIN_LOSS)
                step = loss.step if loss else 0
                total = job_steps(job)
                if job.status == JobStatus.SUCCEEDED and total:
                    step = total
                progress.update(tasks[job.id], completed=step, **_fields(job))
            if on_poll is not None:
                on_poll(jobs)
            if all(job.status.terminal for job in jobs):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            jobs = [job if job.status.terminal else client.job(job.id) for job in jobs]
    return jobs
