"""covering keys for metric reads (PostgreSQL)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 19:00:00

On PostgreSQL the unique key of metric_points (job_seq, name, step) now carries value
and time (INCLUDE), and the primary key of metric_rollups (job_seq, level, name,
bucket) every other column, so a history's and a summary's reads of one series are
index-only scans over contiguous leaf pages instead of one heap page a row: the rows
of a series are scattered over the table by interleaved ingest. No new index: the
constraints' own indexes are rebuilt wider (under an exclusive lock on each table for
the rebuild). SQLite has no INCLUDE and is left as it is.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_POINTS_KEY = "job_seq, name, step"
_ROLLUPS_KEY = "job_seq, level, name, bucket"
POINTS_INCLUDE = ("value", "time")
ROLLUPS_INCLUDE = ("n", "vn", "vsum", "vmin", "vmax", "last_step", "last_value", "last_time")


def _rebuild(points_include: str, rollups_include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE metric_points DROP CONSTRAINT uq_metric_job_name_step, "
        f"ADD CONSTRAINT uq_metric_job_name_step UNIQUE ({_POINTS_KEY}){points_include}"
    )
    op.execute(
        "ALTER TABLE metric_rollups DROP CONSTRAINT metric_rollups_pkey, "
        f"ADD CONSTRAINT metric_rollups_pkey PRIMARY KEY ({_ROLLUPS_KEY}){rollups_include}"
    )


def upgrade() -> None:
    _rebuild(f" INCLUDE ({', '.join(POINTS_INCLUDE)})", f" INCLUDE ({', '.join(ROLLUPS_INCLUDE)})")


def downgrade() -> None:
    _rebuild("", "")
