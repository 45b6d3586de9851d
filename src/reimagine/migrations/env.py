"""Alembic environment: the connection comes from `Database.migrate` (queue/db.py), never from the environment."""

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through reimagine.queue.db.Database.migrate(), which passes a connection")
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
