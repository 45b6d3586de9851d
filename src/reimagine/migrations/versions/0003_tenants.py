"""Many teams on one server: fair turns, per-key limits, scopes, expiry, usage, idempotency, file lifecycles.

- `jobs.turn`: the job's place in a fair round between keys (start-time fair queueing). A new job gets one turn
  after its key's last queued job, and never earlier than the head of the queue, so a key that queues 10,000 jobs
  takes every other turn, not the next 10,000. The claim reads the first queued job from an index in
  (priority, turn, seq) order: still one index step, whatever the queue's length.
- `jobs.no_retry` (`X-Fal-No-Retry`), `jobs.store_io` (`X-Fal-Store-IO`), `jobs.file_ttl_s`
  (`X-Fal-Object-Lifecycle-Preference`): per-request platform options.
- `jobs.input_bytes`, `jobs.gpu_s`, `jobs.output_bytes`: what the request cost, for `usage`.
- `files.expires_at`: when a file stops being served; `files.key_id`: the owner of an upload.
- `api_keys.scope`, `expires_at`, `max_concurrent`.
- `usage`: per key and UTC day, images, GPU seconds, input and output bytes.
- `idempotency_keys`: `Idempotency-Key` -> the job it created and a hash of the body, for 24 hours.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("turn", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("no_retry", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("store_io", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("file_ttl_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("input_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("gpu_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("output_bytes", sa.BigInteger(), nullable=True))
    # Jobs queued before the upgrade keep their order: their turn is their sequence number.
    op.execute("UPDATE jobs SET turn = seq WHERE status = 'QUEUED'")
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", sa.text("priority DESC"), "turn", "seq"])
    # A key's own jobs: its last queued turn, its running count, its listing (newest first), its queue length.
    op.create_index("ix_jobs_key", "jobs", ["key_id", "status", "turn"])
    op.create_index("ix_jobs_key_seq", "jobs", ["key_id", "seq"])

    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
    op.create_index("ix_files_expires_at", "files", ["expires_at"])

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="admin"))
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))

    op.create_table(
        "usage",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("images", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("gpu_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("input_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False, server_default="0"),
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("idem_key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_idempotency_created_at", "idempotency_keys", ["created_at"])
    op.create_index("ix_idempotency_job", "idempotency_keys", ["job_id"])


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("usage")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("max_concurrent", "expires_at", "scope"):
            batch.drop_column(column)
    op.drop_index("ix_files_expires_at", table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("key_id")
        batch.drop_column("expires_at")
    op.drop_index("ix_jobs_key_seq", table_name="jobs")
    op.drop_index("ix_jobs_key", table_name="jobs")
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", sa.text("priority DESC"), "seq"])
    with op.batch_alter_table("jobs") as batch:
        for column in ("output_bytes", "gpu_s", "input_bytes", "file_ttl_s", "store_io", "no_retry", "turn"):
            batch.drop_column(column)
