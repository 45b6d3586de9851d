"""SQLite's query plans for the statements every job runs: none may read or sort the whole queue.

Their cost must not grow with the number of waiting jobs (a deep queue is exactly when the workers are busiest).
The first schema's index ordered priority ascending, so each claim sorted every queued job, and start deadlines
were found by reading every queued row; migration 0002 fixed both, and this keeps them fixed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from reimagine.queue import open_store, reads, transitions


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    open_store(f"sqlite:///{tmp_path / 'plans.db'}").close()
    connection = sqlite3.connect(tmp_path / "plans.db")
    yield connection
    connection.close()


def _plan(conn: sqlite3.Connection, statement: str | sa.TextClause, **params: object) -> str:
    text = statement.text if isinstance(statement, sa.TextClause) else statement
    return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + text, params))


def test_the_claim_takes_the_first_queued_job_from_the_index_without_sorting(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, transitions.CLAIM_PICK)
    assert "ix_jobs_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_expired_start_deadlines_are_found_by_a_range_of_the_index(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, transitions._EXPIRED_STARTS, now=1.0)
    assert "ix_jobs_start_deadline (status=? AND start_deadline_at<?)" in plan, plan


def test_a_queue_position_reads_only_the_jobs_ahead(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, reads.POSITION, p=0, s=1)
    assert "COVERING INDEX ix_jobs_queue (status=? AND priority>?)" in plan, plan
