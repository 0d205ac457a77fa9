"""Admission queue and reconciliation loop: keeps the jobs table in step with Ray.

One background thread runs `run_once()` every `scheduler_interval_s`:
- reconcile: every job with a Ray submission id and no end state is compared with
  Ray's view and moved on (QUEUED -> RUNNING -> SUCCEEDED/FAILED/CANCELLED); a job
  Ray does not know yet is submitted again (submission ids are deterministic, so a
  crash between "decided" and "submitted" cannot start a job twice).
- studies: a study whose phase has ended moves on (`service.study_driver`).
- admit: waiting jobs are launched in submission order while the cluster's capacity,
  minus what this service's running jobs hold, has room for them.

All state lives in the database, so a restarted service simply carries on: running
Ray jobs are re-attached by their submission id. Every write is a compare-and-set
against what the pass read (`service.repo.transition`, `claim_launch`), so an owner's
cancel that lands mid-pass is never overwritten: the pass's write misses and the next
pass decides again (`service.reconcile.decide`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from alto_client.models import JobStatus
from alto_client.spec import JobSpec
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.auth import hash_token, new_token
from service.cluster import ClusterBackend, ClusterError, RayJobState
from service.db.session import session_scope
from service.db.tables import JobRow
from service.reconcile import WAITING_FOR_RAY, Action, Decision, JobView, decide
from service.repo import TERMINAL, WAITING, claim_launch, transition
from service.specs import SPEC_ENV, fits, launch_env, never_fits_reason
from service.study_driver import advance_studies

log = logging.getLogger(__name__)


def submission_id(job_id: str) -> str:
    """The Ray submission id of a job: derived from the job id, so retries are idempotent."""
    return f"alto-{job_id}"


@dataclass
class SchedulerStats:
    """Counters of the scheduler since start (exported at /metrics)."""

    passes: int = 0
    failed_passes: int = 0  # cut short: the cluster did not answer, or an unexpected error
    pass_seconds: float = 0.0
    stale_writes: int = 0  # compare-and-set writes that lost to a concurrent change
    unlaunchable_jobs: int = 0  # jobs failed alone because they could not be launched
    last_pass_ok: float | None = None  # time.monotonic() of the last pass that completed


class Scheduler:
    """Launches queued jobs on Ray and mirrors Ray's job states into the database."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        backend: ClusterBackend,
        entrypoint: str,
        public_url: Callable[[], str],
        interval_s: float = 1.0,
        job_env: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self._factory = factory
        self._backend = backend
        self._entrypoint = entrypoint
        self._public_url = public_url
        self._interval_s = interval_s
        self._job_settings_env = job_env
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.stats = SchedulerStats()
        self._state_pool: ThreadPoolExecutor | None = None

    # ---- thread control

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="alto-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop (running Ray jobs are left alone: they belong to the cluster)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._state_pool is not None:
            self._state_pool.shutdown(wait=False, cancel_futures=True)
            self._state_pool = None

    def wake(self) -> None:
        """Run the next pass now (after a submission or a cancel)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._wake.wait(self._interval_s)
            self._wake.clear()

    # ---- one pass

    def run_once(self) -> None:
        """Reconcile with Ray, then admit what fits. Safe to call from tests directly."""
        with self._lock:
            start = time.perf_counter()
            try:
                self._reconcile()
                advance_studies(self._factory)  # a phase that ended adds its next jobs
                self._admit()
                self.last_error = None
                self.stats.last_pass_ok = time.monotonic()
            except ClusterError as exc:
                self.last_error = str(exc)
                self.stats.failed_passes += 1
                log.warning("cluster unavailable: %s", exc)
            except Exception as exc:  # e.g. the database: the loop must try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.stats.failed_passes += 1
                log.exception("scheduler pass failed")
            finally:
                self.stats.passes += 1
                self.stats.pass_seconds += time.perf_counter() - start

    def healthy(self, now: float | None = None) -> str | None:
        """None when the scheduler is keeping up; else why not (for /readyz): its last
        pass failed, or no pass has completed for a while although the loop runs."""
        if self.last_error is not None:
            return f"last pass failed: {self.last_error}"
        if self._thread is None:
            return None  # driven by hand (tests), or not started: nothing is overdue
        if not self._thread.is_alive():
            return "the scheduler thread has stopped"
        last = self.stats.last_pass_ok
        now = time.monotonic() if now is None else now
        overdue = max(30.0, 10 * self._interval_s)
        if last is not None and now - last > overdue:
            return f"no pass has completed for {now - last:.0f} s"
        return None

    def _transition(self, s: Session, seq: int, **change: Any) -> bool:
        """`service.repo.transition`, counting the writes that missed (a concurrent change
        won; the next pass decides again on fresh data)."""
        applied = transition(s, seq, **change)
        if not applied:
            self.stats.stale_writes += 1
        return applied

    def _reconcile(self) -> None:
        """Follow every launched, unfinished job's Ray state. Reads six columns per job,
        not whole rows: with a thousand jobs running, loading specs every second would
        hold the GIL long enough to delay the API's answers."""
        with session_scope(self._factory) as s:
            views = [
                JobView(seq, ray_id, status, reason, cancel, started is not None)
                for seq, ray_id, status, reason, cancel, started in s.execute(
                    select(
                        JobRow.seq,
                        JobRow.ray_job_id,
                        JobRow.status,
                        JobRow.status_reason,
                        JobRow.cancel_requested,
                        JobRow.started_at,
                    )
                    .where(JobRow.ray_job_id.is_not(None), JobRow.status.not_in(TERMINAL))
                    .order_by(JobRow.seq)
                )
            ]
            s.commit()  # end the read: nothing is held while Ray answers
            states = self._ray_states([view.ray_job_id for view in views])
            for view, state in zip(views, states):
                decision = decide(view, state)
                if decision.action is not Action.KEEP:
                    self._apply(s, view, decision)
                    s.commit()  # one job at a time: a slow Ray call holds no write lock

    def _ray_states(self, ray_job_ids: Sequence[str]) -> list[RayJobState | None]:
        """Ray's view of each job, up to the backend's `state_concurrency` calls at once."""
        workers = int(getattr(self._backend, "state_concurrency", 1))
        if workers <= 1 or len(ray_job_ids) <= 1:
            return [self._backend.state(i) for i in ray_job_ids]
        if self._state_pool is None:
            self._state_pool = ThreadPoolExecutor(workers, thread_name_prefix="alto-ray-state")
        return list(self._state_pool.map(self._backend.state, ray_job_ids))

    def _apply(self, s: Session, view: JobView, decision: Decision) -> None:
        if decision.action is Action.LAUNCH:
            job_id, spec = s.execute(
                select(JobRow.id, JobRow.spec).where(JobRow.seq == view.seq)
            ).one()
            self._launch(s, view.seq, view.status, job_id, spec, resubmit=True)
            return
        if decision.action is Action.STOP:
            self._backend.stop(view.ray_job_id)
        assert decision.status is not None
        self._transition(
            s,
            view.seq,
            expect_status=view.status,
            expect_cancel=view.cancel_requested,
            status=decision.status,
            reason=decision.reason,
        )

    def _admit(self) -> None:
        with session_scope(self._factory) as s:
            waiting = s.execute(
                select(JobRow.seq, JobRow.id, JobRow.status, JobRow.status_reason, JobRow.resources)
                .where(
                    JobRow.status.in_(WAITING),
                    JobRow.ray_job_id.is_(None),
                    JobRow.cancel_requested.is_(False),
                )
                .order_by(JobRow.seq)
            ).all()
            if not waiting:
                return
            capacity = self._backend.capacity()
            if not capacity.nodes:
                # a cluster between restarts reports no nodes: wait rather than fail jobs
                raise ClusterError("the Ray cluster reports no alive nodes")
            free = dict(capacity.total)
            for held in s.scalars(
                select(JobRow.resources).where(
                    JobRow.ray_job_id.is_not(None), JobRow.status.not_in(TERMINAL)
                )
            ):
                for key, amount in held.items():
                    free[key] = free.get(key, 0.0) - amount
            for seq, job_id, status, reason, need in waiting:
                spec = s.scalar(select(JobRow.spec).where(JobRow.seq == seq))
                try:
                    never = never_fits_reason(JobSpec.model_validate(spec), capacity)
                except Exception as exc:  # a stored spec that no longer validates fails alone
                    self._fail_unlaunchable(s, seq, status, exc)
                    continue
                if never is not None:
                    self._fail_waiting(s, seq, status, f"can never run on this cluster: {never}")
                    continue
                if not fits(need, free):
                    waiting_reason = _waiting_reason(need, free)
                    if (status, reason) != (JobStatus.QUEUED.value, waiting_reason):
                        self._transition(
                            s,
                            seq,
                            expect_status=status,
                            expect_cancel=False,
                            status=JobStatus.QUEUED,
                            reason=waiting_reason,
                        )
                    break  # first come, first served: later jobs wait behind this one
                if self._launch(s, seq, status, job_id, spec, resubmit=False):
                    for key, amount in need.items():
                        free[key] = free.get(key, 0.0) - amount

    def _launch(
        self, s: Session, seq: int, status: str, job_id: str, spec: dict, *, resubmit: bool
    ) -> bool:
        """Submit a job to Ray with a fresh ingestion token (stored hashed). Returns False
        when the job was cancelled (or launched by someone else) since it was read, or
        could not be launched at all (then it is FAILED, with its reason)."""
        token = new_token()
        ray_id = submission_id(job_id)
        try:
            env = launch_env(spec, self._public_url(), job_id, token)
        except Exception as exc:  # too large, or not valid Unicode: this job fails alone
            self._fail_unlaunchable(s, seq, status, exc)
            return False
        env.update(self._job_env(s, seq))
        if not claim_launch(s, seq, ray_id, hash_token(token), resubmit=resubmit):
            s.rollback()
            self.stats.stale_writes += 1
            return False
        s.commit()  # the submission id is on record before Ray hears of it
        try:
            self._backend.submit(ray_id, f"{self._entrypoint} env:{SPEC_ENV}", env)
            reason = WAITING_FOR_RAY
        except ClusterError as exc:
            reason = f"submission to Ray failed, will retry: {exc}"
        # a cancel may have come in since the claim: then this misses, and the next pass
        # stops the Ray job
        self._transition(
            s,
            seq,
            expect_status=status,
            expect_cancel=False,
            status=JobStatus.QUEUED,
            reason=reason,
        )
        s.commit()
        return True

    def _fail_unlaunchable(self, s: Session, seq: int, status: str, exc: Exception) -> None:
        """Fail one job that cannot be launched (a stored spec that no longer validates or
        serializes), with its reason, so that the pass goes on with the other jobs."""
        s.rollback()
        log.warning("job %s cannot be launched: %s", seq, exc)
        self.stats.unlaunchable_jobs += 1
        reason = f"cannot be launched: {type(exc).__name__}: {str(exc)[:500]}"
        self._fail_waiting(s, seq, status, reason)

    def _fail_waiting(self, s: Session, seq: int, status: str, reason: str) -> None:
        """Move a waiting job (still `status`, no cancel asked) to FAILED with `reason`."""
        self._transition(
            s,
            seq,
            expect_status=status,
            expect_cancel=False,
            status=JobStatus.FAILED,
            reason=reason,
        )
        s.commit()

    def _job_env(self, s: Session, seq: int) -> dict[str, str]:
        """Environment the operator's settings give each job (data roots of its owner)."""
        if self._job_settings_env is None:
            return {}
        owner = s.scalar(select(JobRow.owner).where(JobRow.seq == seq))
        return self._job_settings_env(owner or "")


def _waiting_reason(need: dict[str, float], free: dict[str, float]) -> str:
    parts = ", ".join(f"{v:g} {k} (free {max(free.get(k, 0.0), 0.0):g})" for k, v in need.items())
    return f"waiting for resources: needs {parts}"
