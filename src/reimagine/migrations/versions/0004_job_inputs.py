"""A job's input moves to a table of its own, `job_inputs`, so that a status read never reads it.

An input may hold data URIs of up to 48 MB. In SQLite a row's columns are read in order, and a column stored after
a large one is reached only by walking that one's overflow pages: with an 8 MB input, reading a job's status took
about 10 ms (the status columns follow `input`), against 0.1 ms without it. PostgreSQL keeps large values out of
line (TOAST) and did not pay this, but one layout serves both. Only the claim (a worker needs the input), the full
`get` and the listing read `job_inputs`.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_inputs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("input", sa.Text(), nullable=False),
    )
    op.execute("INSERT INTO job_inputs (job_id, input) SELECT id, input FROM jobs")
    # Plain DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch copy of the table would reflect its indexes and lose
    # the DESC of `ix_jobs_queue`.
    op.execute("ALTER TABLE jobs DROP COLUMN input")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs ADD COLUMN input TEXT NOT NULL DEFAULT '{}'")
    op.execute(
        "UPDATE jobs SET input = (SELECT input FROM job_inputs WHERE job_inputs.job_id = jobs.id)"
        " WHERE id IN (SELECT job_id FROM job_inputs)"
    )
    op.drop_table("job_inputs")
