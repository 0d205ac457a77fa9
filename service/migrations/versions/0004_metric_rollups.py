"""metric rollups

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00

- metric_rollups: every metric in buckets of 2**k steps, k = 4..16 (count, count/sum/
  min/max of finite values, the point at the bucket's largest step), written with the
  points from now on (`service.rollups`), and backfilled here from metric_points, one
  level at a time, so existing long runs read fast at once.
- ix_metric_median: a partial index on metric_points (job_seq, value) for
  train/tokens_per_s only, so a summary's median throughput is an index walk, not a
  sort of the whole series.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LEVELS = tuple(range(4, 17))  # service.db.tables.ROLLUP_LEVELS when this was written
MEDIAN_METRIC = "train/tokens_per_s"  # the one metric whose median a summary reads

_BACKFILL = (
    "INSERT INTO metric_rollups (job_seq, name, level, bucket, n, vn, vsum, vmin, vmax, "
    "last_step, last_value, last_time) "
    "SELECT g.job_seq, g.name, {level}, g.bucket, g.n, g.vn, g.vsum, g.vmin, g.vmax, "
    "g.last_step, m.value, m.time FROM ("
    " SELECT job_seq, name, step >> {level} AS bucket, COUNT(*) AS n,"
    " SUM(CASE WHEN {finite} THEN 1 ELSE 0 END) AS vn,"
    " COALESCE(SUM(CASE WHEN {finite} THEN value END), 0.0) AS vsum,"
    " MIN(CASE WHEN {finite} THEN value END) AS vmin,"
    " MAX(CASE WHEN {finite} THEN value END) AS vmax,"
    " MAX(step) AS last_step"
    " FROM metric_points GROUP BY job_seq, name, step >> {level}"
    ") g JOIN metric_points m"
    " ON m.job_seq = g.job_seq AND m.name = g.name AND m.step = g.last_step"
)
# finite: not NULL (NaN on SQLite), not NaN (PostgreSQL orders it above every number)
# and not infinite
_FINITE = f"value BETWEEN {-sys.float_info.max!r} AND {sys.float_info.max!r}"


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column(
            "job_seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("vn", sa.BigInteger(), nullable=False),
        sa.Column("vsum", sa.Float(), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=True),
        sa.Column("vmax", sa.Float(), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("last_time", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_seq"], ["jobs.seq"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_seq", "level", "name", "bucket"),
    )
    for level in LEVELS:
        op.execute(_BACKFILL.format(level=level, finite=_FINITE))
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.create_index(
            "ix_metric_median",
            ["job_seq", "value"],
            unique=False,
            sqlite_where=sa.text(f"name = '{MEDIAN_METRIC}'"),
            postgresql_where=sa.text(f"name = '{MEDIAN_METRIC}'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_median")
    op.drop_table("metric_rollups")
