"""Database layer: ORM tables, engine/session creation and migrations."""
