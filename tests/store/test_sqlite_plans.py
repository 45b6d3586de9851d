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

from reimagine.queue import open_store, reads, submit, transitions


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
    plan = _plan(conn, transitions.CLAIM_PICK.format(skip=""))
    assert "ix_jobs_queue" in plan and "TEMP B-TREE" not in plan, plan
    # Passing over a key at its concurrency limit still walks the index in claim order.
    plan = _plan(conn, transitions.CLAIM_PICK.format(skip=" AND key_id NOT IN (:k0)"), k0="a")
    assert "ix_jobs_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_fair_turns_and_per_key_counts_read_one_index_entry_each(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, submit._HEAD_TURN, priority=0)
    assert "ix_jobs_queue (status=? AND priority=?)" in plan and "TEMP B-TREE" not in plan, plan
    plan = _plan(conn, submit._KEY_LAST_TURN, key_id="a", priority=0)
    assert "ix_jobs_key (key_id=? AND status=? AND priority=?)" in plan, plan
    plan = _plan(conn, submit._KEY_QUEUED, key_id="a")
    assert "ix_jobs_key (key_id=? AND status=?)" in plan, plan
    plan = _plan(conn, transitions._SATURATED)
    assert "ix_jobs_key (key_id=? AND status=?)" in plan, plan


def test_a_keys_listing_reads_its_own_jobs_newest_first(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, reads._LIST.format(where=" AND seq < :before"), key_id="a", limit=20, before=10)
    assert "ix_jobs_key_seq (key_id=? AND seq<?)" in plan and "TEMP B-TREE" not in plan, plan


def test_expired_start_deadlines_are_found_by_a_range_of_the_index(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, transitions._EXPIRED_STARTS, now=1.0)
    assert "ix_jobs_start_deadline (status=? AND start_deadline_at<?)" in plan, plan


def test_a_queue_position_reads_only_the_jobs_ahead(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, reads.POSITION, p=0, t=1, s=1)
    assert "COVERING INDEX ix_jobs_queue (status=? AND priority>?)" in plan, plan
