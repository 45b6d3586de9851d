"""Indexes that keep claiming a job and expiring start deadlines independent of the queue's length.

The claim takes the highest priority first, then the oldest: `ORDER BY priority DESC, seq`. The first index had
both columns ascending, so the database sorted every queued job on each claim. Start deadlines were found by
reading every queued row. Both now read only the rows they return.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", sa.text("priority DESC"), "seq"])
    op.create_index("ix_jobs_start_deadline", "jobs", ["status", "start_deadline_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_start_deadline", table_name="jobs")
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", "priority", "seq"])
