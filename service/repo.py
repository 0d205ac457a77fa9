"""Database operations on jobs and metrics shared by the API and the scheduler."""

from __future__ import annotations

import math
from collections.abc import Iterable

from alto_client.models import Job, JobStatus, LatestMetric
from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from service.db.tables import JobRow, MetricRow, utcnow

TERMINAL = {s.value for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)}


def set_status(row: JobRow, status: JobStatus, reason: str | None) -> bool:
    """Move a job to `status`; terminal states are final. Returns True when anything changed."""
    if row.status in TERMINAL:
        return False
    if row.status == status.value and row.status_reason == reason:
        return False
    now = utcnow()
    row.status = status.value
    row.status_reason = reason
    row.updated_at = now
    if status == JobStatus.RUNNING and row.started_at is None:
        row.started_at = now
    if status.value in TERMINAL:
        row.finished_at = now
    return True


_LATEST_SQL = text(
    "SELECT m.name, m.step, m.value, m.time FROM metric_points m "
    "JOIN (SELECT name, MAX(step) AS step FROM metric_points WHERE job_seq = :seq "
    "GROUP BY name) t ON m.name = t.name AND m.step = t.step "
    "WHERE m.job_seq = :seq"
)


def latest_metrics(s: Session, job_seq: int) -> dict[str, LatestMetric]:
    """The newest point of every metric of a job, in one query over the unique index.

    Plain SQL on purpose: it runs on every status poll, and building the equivalent
    SQLAlchemy expression each time cost more than the query itself.
    """
    return {
        name: LatestMetric(step=step, value=finite_or_none(value), time=t)
        for name, step, value, t in s.execute(_LATEST_SQL, {"seq": job_seq})
    }


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: non-finite values travel as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


def to_wire(row: JobRow, latest: dict[str, LatestMetric] | None = None) -> Job:
    """The REST representation of a job row."""
    return Job(
        id=row.id,
        name=row.name,
        owner=row.owner,
        tags=sorted(t.tag for t in row.tags),
        status=JobStatus(row.status),
        status_reason=row.status_reason,
        spec=row.spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        ray_job_id=row.ray_job_id,
        comparison_id=row.comparison.id if row.comparison_seq is not None else None,
        arm=row.arm,
        seed=row.seed,
        latest_metrics=latest or {},
    )


def insert_points(s: Session, job_seq: int, points: Iterable[tuple[int, str, float, float]]) -> int:
    """Insert (step, name, value, time) points, skipping ones already stored.

    Returns the number of new rows. On PostgreSQL the batch is COPYed into a temporary
    table and merged with one INSERT ... ON CONFLICT DO NOTHING (several times faster
    than row-wise parameters); elsewhere a multi-row INSERT with RETURNING counts what
    was new. NaN is stored as NULL on SQLite, which cannot hold NaN.
    """
    if s.get_bind().dialect.name == "postgresql":
        return _insert_points_postgres(s, job_seq, points)
    rows = [
        {
            "job_seq": job_seq,
            "step": step,
            "name": name,
            "value": None if math.isnan(value) else value,
            "time": t,
        }
        for step, name, value, t in points
    ]
    if not rows:
        return 0
    stmt = (
        sqlite.insert(MetricRow.__table__)
        .on_conflict_do_nothing(index_elements=["job_seq", "name", "step"])
        .returning(MetricRow.__table__.c.id)
    )
    # RETURNING yields only the rows really inserted (executemany's rowcount is not
    # reliable across drivers); SQLAlchemy batches this into multi-row INSERTs
    result = s.connection().execute(stmt, rows)
    return len(result.all())


_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS alto_metric_stage "
    "(step bigint, name text, value double precision, time double precision) "
    "ON COMMIT DELETE ROWS"
)
_PG_MERGE = (
    "INSERT INTO metric_points (job_seq, step, name, value, time) "
    "SELECT %s, step, name, value, time FROM alto_metric_stage "
    "ON CONFLICT (job_seq, name, step) DO NOTHING"
)


def _insert_points_postgres(
    s: Session, job_seq: int, points: Iterable[tuple[int, str, float, float]]
) -> int:
    conn = s.connection().connection.driver_connection  # the psycopg connection
    assert conn is not None
    with conn.cursor() as cur:
        cur.execute(_PG_STAGE)
        n = 0
        with cur.copy("COPY alto_metric_stage (step, name, value, time) FROM STDIN") as copy:
            for point in points:
                copy.write_row(point)
                n += 1
        if n == 0:
            return 0
        cur.execute(_PG_MERGE, (job_seq,))
        inserted = cur.rowcount
        cur.execute("TRUNCATE alto_metric_stage")
    return max(inserted, 0)
