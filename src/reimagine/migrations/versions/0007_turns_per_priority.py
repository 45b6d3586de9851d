"""A key's fair turns are counted per priority: its low-priority backlog no longer delays its normal requests.

The turn of a new job follows the key's last queued job; counted over every priority, a key with 10,000 low-priority
jobs waiting gave its next normal job a turn after all of them, behind every other key's normal jobs. `ix_jobs_key`
now has the priority before the turn, so a key's last turn at one priority is still one index entry.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_key", table_name="jobs")
    op.create_index("ix_jobs_key", "jobs", ["key_id", "status", "priority", "turn"])


def downgrade() -> None:
    op.drop_index("ix_jobs_key", table_name="jobs")
    op.create_index("ix_jobs_key", "jobs", ["key_id", "status", "turn"])
