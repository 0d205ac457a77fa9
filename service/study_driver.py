"""Moving studies through their phases: tuning -> final -> done (or cancelled).

The scheduler calls `advance_studies` on every pass. A study's state is its row and its
jobs, so a restarted service picks up where it was: a tuning phase whose trials have
all ended selects its winners and creates the final runs in the same transaction that
moves the phase on (a compare-and-set on the phase, so two passes, or two services,
cannot both do it); a final phase whose runs have all ended is done. A failed or
diverged trial is a result, not an error: selection skips it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from alto_client.metrics import (
    MEM_PEAK_ALLOCATED_BYTES,
    MEM_PEAK_RSS_BYTES,
    OPTIM_STATE_BYTES,
    TRAIN_LOSS,
    TRAIN_TOKENS_PER_S,
    VAL_LOSS,
    VAL_LOSS_SEM,
)
from alto_client.models import JobStatus
from alto_client.study import StudyRequest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.compare import RunData, Series
from service.db.session import session_scope
from service.db.tables import JobRow, StudyRow
from service.repo import (
    TERMINAL,
    CancelOutcome,
    active_studies,
    compared_points,
    request_cancel,
    set_study_phase,
)
from service.study_analysis import StudyRun, select_best
from service.study_plan import PlannedJob, final_jobs
from service.submit import new_job_row

log = logging.getLogger(__name__)

TUNING, FINAL, DONE, CANCELLED = "tuning", "final", "done", "cancelled"


def study_request(row: StudyRow) -> StudyRequest:
    """The request a study was accepted with (validated again: it is stored JSON)."""
    return StudyRequest.model_validate(row.request)


def study_runs(s: Session, row: StudyRow, *, curves: bool = False) -> list[StudyRun]:
    """Every job of the study with the metrics its summary reads (`curves` adds the
    training-loss curves the plot draws)."""
    runs: list[StudyRun] = []
    by_seq: dict[int, RunData] = {}
    for job in row.jobs:
        data = RunData(job_id=job.id, seed=int(job.seed or 0), status=JobStatus(job.status))
        by_seq[job.seq] = data
        runs.append(
            StudyRun(
                job_id=job.id,
                role="final" if job.study_role == "final" else "trial",
                arm=job.arm or "?",
                batch_size=int(job.batch_size or 0),
                trial=job.trial,
                seed=int(job.seed or 0),
                params=dict(job.params or {}),
                status=JobStatus(job.status),
                run=data,
            )
        )
    if not by_seq:
        return runs
    points = compared_points(
        s,
        list(by_seq),
        curves=(VAL_LOSS,),
        first=(TRAIN_LOSS,),
        coarse=(TRAIN_LOSS,) if curves else (),  # the plot's curves, from rollups
        last=(OPTIM_STATE_BYTES, VAL_LOSS_SEM, TRAIN_LOSS),  # exact: divergence checks it
        medians=(TRAIN_TOKENS_PER_S,),
        peaks=(MEM_PEAK_ALLOCATED_BYTES, MEM_PEAK_RSS_BYTES),
    )
    for job_seq, name, step, value, t in sorted(points, key=lambda p: (p[0], p[1], p[2])):
        series = by_seq[job_seq].series.setdefault(name, Series())
        if series.steps and series.steps[-1] == step:
            continue  # an exact first or last point read twice, or again as a bucket
        series.steps.append(step)
        series.values.append(math.nan if value is None else value)
        series.times.append(t)
    return runs


def _start_final_phase(s: Session, row: StudyRow) -> None:
    request = study_request(row)
    best = select_best(request, study_runs(s, row))
    chosen = {key: (run.trial or 0, run.params) for key, run in best.items() if run is not None}
    planned = final_jobs(request, chosen)
    stored: dict[str, Any] = {
        f"{b}/{arm}": {"trial": trial, "params": params}
        for (b, arm), (trial, params) in chosen.items()
    }
    missing = [f"batch {b} {arm}" for (b, arm), run in best.items() if run is None]
    reason = f"tuning done: {len(planned)} final runs" + (
        f"; no usable trial for {', '.join(missing)}" if missing else ""
    )
    if not planned:
        if set_study_phase(s, row.seq, expect=TUNING, phase=DONE, reason=reason, chosen=stored):
            s.commit()
        else:
            s.rollback()
        return
    if not set_study_phase(s, row.seq, expect=TUNING, phase=FINAL, reason=reason, chosen=stored):
        s.rollback()  # someone else moved it on (a cancel, or another pass)
        return
    for job in planned:
        s.add(study_job_row(job, row))
    s.commit()


def study_job_row(job: PlannedJob, study: StudyRow) -> JobRow:
    """A PENDING job row of `study` for one planned job, placed in the study."""
    job_row = new_job_row(job.spec, study.owner, study=study, arm=job.arm)
    job_row.study_role = job.role
    job_row.batch_size = job.batch_size
    job_row.trial = job.trial
    job_row.params = job.params
    return job_row


def advance_study(s: Session, seq: int) -> None:
    """Move one study on if its current phase has ended."""
    row = s.get(StudyRow, seq)
    if row is None:
        return
    # the caller's list of ready studies may be stale: another pass (or service) may
    # have moved this one from tuning to final since, adding final runs not yet run
    unfinished = s.scalar(
        select(func.count())
        .select_from(JobRow)
        .where(JobRow.study_seq == seq, JobRow.status.not_in(TERMINAL))
    )
    if unfinished:
        return
    if row.phase == TUNING:
        _start_final_phase(s, row)
    elif row.phase == FINAL and set_study_phase(
        s, seq, expect=FINAL, phase=DONE, reason="final runs done"
    ):
        s.commit()


def advance_studies(factory: sessionmaker[Session]) -> int:
    """One scheduler pass over the studies in a running phase; returns how many moved.

    A study that cannot move on (its stored request no longer validates, a bug) is
    stopped alone, with the reason, and the pass goes on with the others."""
    moved = 0
    with session_scope(factory) as s:
        ready = [(seq, phase) for seq, phase, unfinished in active_studies(s) if unfinished == 0]
        s.commit()
        for seq, phase in ready:
            try:
                advance_study(s, seq)
                moved += 1
            except Exception as exc:  # one study's problem must not stall the others
                s.rollback()
                log.exception("study %s could not leave its %s phase", seq, phase)
                if set_study_phase(
                    s,
                    seq,
                    expect=phase,
                    phase=DONE,
                    reason=f"stopped: the {phase} phase could not end: {type(exc).__name__}: {exc}",
                ):
                    s.commit()
    return moved


def cancel_study(s: Session, row: StudyRow) -> list[str]:
    """Cancel a study and every unfinished job of it; returns the Ray submission ids of
    the jobs that were running (the caller stops them; the scheduler follows up)."""
    set_study_phase(
        s, row.seq, expect=(TUNING, FINAL), phase=CANCELLED, reason="cancelled by its owner"
    )
    stopping = []
    for seq, ray_id in s.execute(
        select(JobRow.seq, JobRow.ray_job_id).where(
            JobRow.study_seq == row.seq, JobRow.status.not_in(TERMINAL)
        )
    ).all():
        if request_cancel(s, seq) is CancelOutcome.STOPPING and ray_id is not None:
            stopping.append(ray_id)
    s.commit()
    return stopping


def study_status(phase: str, statuses: list[JobStatus]) -> JobStatus:
    """One status for a study: CANCELLED when cancelled; when done, SUCCEEDED if some
    final run succeeded (failed trials are results, not failures) else FAILED; while
    running, RUNNING once any job runs or has ended, else how its jobs wait."""
    if phase == CANCELLED:
        return JobStatus.CANCELLED
    if phase == DONE:
        return JobStatus.SUCCEEDED if JobStatus.SUCCEEDED in statuses else JobStatus.FAILED
    if any(st is JobStatus.RUNNING or st.terminal for st in statuses):
        return JobStatus.RUNNING
    return JobStatus.QUEUED if JobStatus.QUEUED in statuses else JobStatus.PENDING
