"""Operator switches of the whole queue: `queue_state` rows, one per switch (`paused` for now).

`reimagine queue pause` writes `('paused', '1')`: workers finish what they hold and claim nothing new, submits
still queue. `reimagine queue resume` deletes the row.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queue_state")
