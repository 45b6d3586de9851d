"""Usage rows per key, day and shard: the completing transactions of many workers no longer queue for one row.

Every finished job adds to its key's usage of the day in the transaction that finishes it. With one row per key and
day, PostgreSQL made concurrent completions of one key wait for each other's commit (the row stays locked until
then): four no-op workers lost 30 % of their jobs/s to it. A job now adds to one of 16 rows, picked by its id;
readers sum them.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COUNTS = ("images", "failed", "gpu_s", "input_bytes", "output_bytes")


def _usage_table(name: str, *, sharded: bool) -> None:
    columns = [
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
    ]
    if sharded:
        columns.append(sa.Column("shard", sa.Integer(), primary_key=True))
    op.create_table(
        name,
        *columns,
        sa.Column("images", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("gpu_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("input_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False, server_default="0"),
    )


def upgrade() -> None:
    _usage_table("usage_sharded", sharded=True)
    counts = ", ".join(_COUNTS)
    op.execute(f"INSERT INTO usage_sharded (key_id, day, shard, {counts}) SELECT key_id, day, 0, {counts} FROM usage")
    op.drop_table("usage")
    op.rename_table("usage_sharded", "usage")


def downgrade() -> None:
    _usage_table("usage_daily", sharded=False)
    sums = ", ".join(f"SUM({name})" for name in _COUNTS)
    op.execute(
        f"INSERT INTO usage_daily (key_id, day, {', '.join(_COUNTS)}) SELECT key_id, day, {sums} FROM usage"
        " GROUP BY key_id, day"
    )
    op.drop_table("usage")
    op.rename_table("usage_daily", "usage")
