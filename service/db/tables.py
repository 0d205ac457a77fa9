"""ORM tables of the service.

Jobs carry both an integer `seq` (insertion order: cheap cursor pagination and foreign
keys for the large metric table) and a public string `id`. Metric points have their own
autoincrement id so live streams can ask "everything after id N", and a unique
(job, name, step) key that makes ingestion idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MEDIAN_METRIC = "train/tokens_per_s"  # alto_client.metrics.TRAIN_TOKENS_PER_S

# SQLite only auto-increments INTEGER PRIMARY KEY columns; BigInteger elsewhere.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Timezone-aware now; every timestamp the service stores is UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base of all service tables."""


class ApiToken(Base):
    """A bearer API token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    owner: Mapped[str] = mapped_column(String(200), nullable=False)
    admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # the token's last characters, to tell tokens apart in listings (NULL before 0002)
    hint: Mapped[str | None] = mapped_column(String(16), nullable=True)


class ComparisonRow(Base):
    """A comparison: the arms (in order), the seeds and the baseline arm's name."""

    __tablename__ = "comparisons"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    owner: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    baseline: Mapped[str] = mapped_column(String(64), nullable=False)
    arms: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    seeds: Mapped[list[int]] = mapped_column(JSON, nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    # SHA-256 of the creating request, to refuse a reused Idempotency-Key with another body
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    jobs: Mapped[list[JobRow]] = relationship(back_populates="comparison", order_by="JobRow.seq")

    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_comparison_idem"),)


class StudyRow(Base):
    """A study: its request and plan as accepted, the phase it is in, and what the
    tuning phase chose (the summary is computed from its jobs' metrics)."""

    __tablename__ = "studies"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    owner: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # tuning -> final -> done; cancelled from either of the first two
    phase: Mapped[str] = mapped_column(String(16), nullable=False)
    phase_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # "batch/arm" -> {"trial": i, "params": {...}}, written with the final jobs
    chosen: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)

    jobs: Mapped[list[JobRow]] = relationship(back_populates="study", order_by="JobRow.seq")

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_study_idem"),
        Index("ix_studies_phase", "phase"),
    )


class JobRow(Base):
    """A job: its spec, status, Ray submission id and ingestion-token hash."""

    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    owner: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    resources: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ray_job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    ingest_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    comparison_seq: Mapped[int | None] = mapped_column(
        ForeignKey("comparisons.seq", ondelete="CASCADE"), nullable=True
    )
    arm: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # a study's job: its phase ("trial" or "final"), batch size, trial and trial point
    study_seq: Mapped[int | None] = mapped_column(
        ForeignKey("studies.seq", ondelete="CASCADE"), nullable=True
    )
    study_role: Mapped[str | None] = mapped_column(String(8), nullable=True)
    batch_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    params: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)

    comparison: Mapped[ComparisonRow | None] = relationship(back_populates="jobs")
    study: Mapped[StudyRow | None] = relationship(back_populates="jobs")
    tags: Mapped[list[JobTag]] = relationship(back_populates="job", cascade="all, delete-orphan")

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_job_idem"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_owner_seq", "owner", "seq"),
        Index("ix_jobs_comparison", "comparison_seq"),
        Index("ix_jobs_study", "study_seq"),
    )


class JobTag(Base):
    """One tag of a job (a table of its own so tag filters use an index)."""

    __tablename__ = "job_tags"

    job_seq: Mapped[int] = mapped_column(
        ForeignKey("jobs.seq", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)

    job: Mapped[JobRow] = relationship(back_populates="tags")

    __table_args__ = (Index("ix_job_tags_tag", "tag"),)


class MetricRow(Base):
    """One metric point; (job, name, step) is unique, so re-posting a point is a no-op.

    A NULL value stands for NaN; infinities are stored as such.
    """

    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    step: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # NULL stands for NaN: SQLite cannot store NaN (it reads back as NULL anyway)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    time: Mapped[float] = mapped_column(Float, nullable=False)

    __table_args__ = (
        # PostgreSQL: the key carries value and time, so reading a series is an
        # index-only scan (its rows are scattered over the table by interleaved ingest)
        UniqueConstraint(
            "job_seq",
            "name",
            "step",
            name="uq_metric_job_name_step",
            postgresql_include=["value", "time"],
        ),
        Index("ix_metric_job_id", "job_seq", "id"),
        # a comparison's median throughput walks this to its middle instead of sorting
        # the whole series (a partial index: only the one metric pays for it at ingest)
        Index(
            "ix_metric_median",
            "job_seq",
            "value",
            sqlite_where=text(f"name = '{MEDIAN_METRIC}'"),
            postgresql_where=text(f"name = '{MEDIAN_METRIC}'"),
        ),
    )


ROLLUP_LEVELS = tuple(range(4, 17))
"""Each metric is also kept in buckets of 2**k steps for these k (16 to 65,536 steps)."""


class MetricRollupRow(Base):
    """One bucket of a metric at one resolution: the points with step >> level == bucket.

    Written with the raw points (`service.repo.insert_points`), from the points really
    inserted, so re-posted points are not counted twice. `n` counts every point; `vn`,
    `vsum`, `vmin` and `vmax` only finite values (NULL when there are none); `last_*`
    is the point at the bucket's largest step, as stored (NULL for NaN, infinities kept).
    """

    __tablename__ = "metric_rollups"

    # key order (job, level, name, bucket): a level's metric names and a metric's
    # buckets are both one range of the primary key
    # (the primary key: __table_args__ below)
    job_seq: Mapped[int] = mapped_column(ForeignKey("jobs.seq", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    bucket: Mapped[int] = mapped_column(BigInteger)
    n: Mapped[int] = mapped_column(BigInteger, nullable=False)
    vn: Mapped[int] = mapped_column(BigInteger, nullable=False)
    vsum: Mapped[float] = mapped_column(Float, nullable=False)
    vmin: Mapped[float | None] = mapped_column(Float, nullable=True)
    vmax: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_step: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_time: Mapped[float] = mapped_column(Float, nullable=False)

    # PostgreSQL: the primary key carries every other column, so a history's read of a
    # series' buckets is an index-only scan over contiguous leaf pages (migration 0005)
    __table_args__ = (
        PrimaryKeyConstraint(
            "job_seq",
            "level",
            "name",
            "bucket",
            postgresql_include=[
                "n",
                "vn",
                "vsum",
                "vmin",
                "vmax",
                "last_step",
                "last_value",
                "last_time",
            ],
        ),
    )
