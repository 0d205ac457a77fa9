"""Admission queue and reconciliation loop: keeps the jobs table in step with Ray.

One background thread runs `run_once()` every `scheduler_interval_s`:
- reconcile: every job with a Ray submission id and no end state is compared with
  Ray's view and moved on (QUEUED -> RUNNING -> SUCCEEDED/FAILED/CANCELLED); a job
  Ray does not know yet is submitted again (submission ids are deterministic, so a
  crash between "decided" and "submitted" cannot start a job twice).
- admit: waiting jobs are launched in submission order while the cluster's capacity,
  minus what this service's running jobs hold, has room for them.

All state lives in the database, so a restarted service simply carries on: running
Ray jobs are re-attached by their submission id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from alto_client.models import JobStatus
from alto_client.spec import JobSpec
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.auth import hash_token, new_token
from service.cluster import ClusterBackend, ClusterError
from service.db.session import session_scope
from service.db.tables import JobRow
from service.repo import TERMINAL, set_status
from service.specs import fits, never_fits_reason, with_report

log = logging.getLogger(__name__)

SPEC_ENV = "ALTO_JOB_SPEC"


def submission_id(job_id: str) -> str:
    """The Ray submission id of a job: derived from the job id, so retries are idempotent."""
    return f"alto-{job_id}"


class Scheduler:
    """Launches queued jobs on Ray and mirrors Ray's job states into the database."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        backend: ClusterBackend,
        entrypoint: str,
        public_url: Callable[[], str],
        interval_s: float = 1.0,
    ) -> None:
        self._factory = factory
        self._backend = backend
        self._entrypoint = entrypoint
        self._public_url = public_url
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

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

    def wake(self) -> None:
        """Run the next pass now (after a submission or a cancel)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the loop must survive anything and try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("scheduler pass failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    # ---- one pass

    def run_once(self) -> None:
        """Reconcile with Ray, then admit what fits. Safe to call from tests directly."""
        with self._lock:
            try:
                self._reconcile()
                self._admit()
                self.last_error = None
            except ClusterError as exc:
                self.last_error = str(exc)
                log.warning("cluster unavailable: %s", exc)

    def _reconcile(self) -> None:
        with session_scope(self._factory) as s:
            rows = s.scalars(
                select(JobRow)
                .where(JobRow.ray_job_id.is_not(None), JobRow.status.not_in(TERMINAL))
                .order_by(JobRow.seq)
            ).all()
            for row in rows:
                self._reconcile_one(s, row)

    def _reconcile_one(self, s: Session, row: JobRow) -> None:
        assert row.ray_job_id is not None
        state = self._backend.state(row.ray_job_id)
        if state is None:
            if row.cancel_requested:
                set_status(row, JobStatus.CANCELLED, "cancelled before Ray started it")
            elif row.started_at is None:
                self._launch(s, row)
            else:
                set_status(
                    row,
                    JobStatus.FAILED,
                    f"Ray has no record of job {row.ray_job_id} any more "
                    "(was the Ray cluster restarted?)",
                )
            return
        if row.cancel_requested and state.status in ("PENDING", "RUNNING"):
            self._backend.stop(row.ray_job_id)
            set_status(row, JobStatus(row.status), "cancellation requested; stopping the Ray job")
            return
        if state.status == "PENDING":
            set_status(row, JobStatus.QUEUED, "submitted to Ray; waiting for Ray to start it")
        elif state.status == "RUNNING":
            set_status(row, JobStatus.RUNNING, None)
        elif state.status == "SUCCEEDED":
            set_status(row, JobStatus.SUCCEEDED, None)
        elif state.status == "FAILED":
            set_status(row, JobStatus.FAILED, _reason(state.message, "the Ray job failed"))
        elif state.status == "STOPPED":
            if row.cancel_requested:
                set_status(row, JobStatus.CANCELLED, "cancelled by its owner")
            else:
                set_status(
                    row,
                    JobStatus.FAILED,
                    _reason(state.message, "the Ray job was stopped outside the service"),
                )

    def _admit(self) -> None:
        with session_scope(self._factory) as s:
            waiting = s.scalars(
                select(JobRow)
                .where(
                    JobRow.status.in_([JobStatus.PENDING.value, JobStatus.QUEUED.value]),
                    JobRow.ray_job_id.is_(None),
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
            for row in waiting:
                if row.cancel_requested:
                    set_status(row, JobStatus.CANCELLED, "cancelled while queued")
                    continue
                reason = never_fits_reason(JobSpec.model_validate(row.spec), capacity)
                if reason is not None:
                    set_status(row, JobStatus.FAILED, f"can never run on this cluster: {reason}")
                    continue
                if not fits(row.resources, free):
                    set_status(row, JobStatus.QUEUED, _waiting_reason(row.resources, free))
                    break  # first come, first served: later jobs wait behind this one
                self._launch(s, row)
                for key, amount in row.resources.items():
                    free[key] = free.get(key, 0.0) - amount

    def _launch(self, s: Session, row: JobRow) -> None:
        """Submit a job to Ray with a fresh ingestion token (stored hashed)."""
        token = new_token()
        row.ray_job_id = submission_id(row.id)
        row.ingest_token_hash = hash_token(token)
        s.commit()  # the submission id is on record before Ray hears of it
        spec_json = with_report(row.spec, self._public_url(), row.id, token)
        try:
            self._backend.submit(
                row.ray_job_id, f"{self._entrypoint} env:{SPEC_ENV}", {SPEC_ENV: spec_json}
            )
        except ClusterError as exc:
            set_status(row, JobStatus.QUEUED, f"submission to Ray failed, will retry: {exc}")
            return
        set_status(row, JobStatus.QUEUED, "submitted to Ray; waiting for Ray to start it")


def _reason(message: str | None, default: str) -> str:
    message = (message or "").strip()
    return message[-2000:] if message else default


def _waiting_reason(need: dict[str, float], free: dict[str, float]) -> str:
    parts = ", ".join(f"{v:g} {k} (free {max(free.get(k, 0.0), 0.0):g})" for k, v in need.items())
    return f"waiting for resources: needs {parts}"
