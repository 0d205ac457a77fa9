"""studies

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:30:00

- studies: one row per study (its request and plan as accepted, its phase, and what the
  tuning phase chose).
- jobs.study_seq / study_role / batch_size / trial / params: where a job sits in its
  study (deleting a study deletes its jobs, like a comparison's).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("phase_reason", sa.Text(), nullable=True),
        sa.Column("chosen", sa.JSON(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_digest", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_study_idem"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_owner"), ["owner"], unique=False)
        batch_op.create_index("ix_studies_phase", ["phase"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "study_seq",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("study_role", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("batch_size", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("trial", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("params", sa.JSON(), nullable=True))
        batch_op.create_foreign_key(
            "fk_jobs_study_seq_studies", "studies", ["study_seq"], ["seq"], ondelete="CASCADE"
        )
        batch_op.create_index("ix_jobs_study", ["study_seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_study")
        batch_op.drop_constraint("fk_jobs_study_seq_studies", type_="foreignkey")
        batch_op.drop_column("params")
        batch_op.drop_column("trial")
        batch_op.drop_column("batch_size")
        batch_op.drop_column("study_role")
        batch_op.drop_column("study_seq")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_phase")
        batch_op.drop_index(batch_op.f("ix_studies_owner"))
    op.drop_table("studies")
