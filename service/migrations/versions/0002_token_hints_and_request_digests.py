"""token hints and comparison request digests

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:00:00

- api_tokens.hint: the token's last characters, so `alto token list` can show which
  token is which without storing it (tokens are stored as SHA-256 digests).
- comparisons.request_digest: the SHA-256 of the request that created a comparison,
  so an Idempotency-Key reused with another body gets 409, as jobs do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hint", sa.String(length=16), nullable=True))
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.drop_column("request_digest")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("hint")
