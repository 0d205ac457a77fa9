"""Alembic environment: runs online against the engine handed over by service.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.db.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Migrate through the given engine, or one made from sqlalchemy.url (alembic CLI)."""
    engine = config.attributes.get("engine") or create_engine(
        config.get_main_option("sqlalchemy.url")
    )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
