"""Alembic migrations of the job store (same schema on SQLite and PostgreSQL)."""
