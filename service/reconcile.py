"""What the scheduler should do with one launched job, given the database's and Ray's views.

Pure and I/O-free, so every case is a unit test. The scheduler reads a `JobView` (a few
columns, not the whole row), asks Ray for the job's state, calls `decide`, and applies
the decision with a compare-and-set update that succeeds only while the row still
matches the view (see `service.repo.transition`). A cancel that lands between the read
and the write makes the write miss, and the next pass decides again on fresh data:
a job stopped by its owner can never be recorded as "stopped outside the service".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from alto_client.models import JobStatus

from service.cluster import RayJobState

WAITING_FOR_RAY = "submitted to Ray; waiting for Ray to start it"
STOPPING = "cancellation requested; stopping the Ray job"


@dataclass(frozen=True)
class JobView:
    """The columns of a launched, unfinished job that the decision depends on."""

    seq: int
    ray_job_id: str
    status: str
    status_reason: str | None
    cancel_requested: bool
    started: bool  # has the job ever been RUNNING?


class Action(Enum):
    KEEP = "keep"  # nothing changed
    SET = "set"  # record a new status and reason
    STOP = "stop"  # ask Ray to stop the job, and record status and reason
    LAUNCH = "launch"  # Ray never heard of this unstarted job: submit it (again)


@dataclass(frozen=True)
class Decision:
    action: Action
    status: JobStatus | None = None
    reason: str | None = None


KEEP = Decision(Action.KEEP)


def decide(job: JobView, ray: RayJobState | None) -> Decision:
    """The next step for `job` when Ray reports `ray` (None: Ray has no such job)."""
    if ray is None:
        if job.cancel_requested:
            return _record(job, JobStatus.CANCELLED, "cancelled before Ray started it")
        if not job.started:
            return Decision(Action.LAUNCH)
        return _record(
            job,
            JobStatus.FAILED,
            f"Ray has no record of job {job.ray_job_id} any more (was the Ray cluster restarted?)",
        )
    if job.cancel_requested and ray.status in ("PENDING", "RUNNING"):
        status = JobStatus.RUNNING if ray.status == "RUNNING" else JobStatus(job.status)
        return Decision(Action.STOP, status, STOPPING)
    if ray.status == "PENDING":
        return _record(job, JobStatus.QUEUED, WAITING_FOR_RAY)
    if ray.status == "RUNNING":
        return _record(job, JobStatus.RUNNING, None)
    if ray.status == "SUCCEEDED":
        return _record(job, JobStatus.SUCCEEDED, None)
    if ray.status == "FAILED":
        return _record(job, JobStatus.FAILED, _reason(ray.message, "the Ray job failed"))
    if ray.status == "STOPPED":
        if job.cancel_requested:
            return _record(job, JobStatus.CANCELLED, "cancelled by its owner")
        return _record(
            job,
            JobStatus.FAILED,
            _reason(ray.message, "the Ray job was stopped outside the service"),
        )
    return KEEP  # a state newer Ray versions may add: wait for one we know


def _record(job: JobView, status: JobStatus, reason: str | None) -> Decision:
    if job.status == status.value and job.status_reason == reason:
        return KEEP
    return Decision(Action.SET, status, reason)


def _reason(message: str | None, default: str) -> str:
    message = (message or "").strip()
    return message[-2000:] if message else default
