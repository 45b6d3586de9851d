"""`reimagine keys`: create prints the key alone as the last stdout line; list shows no secrets; revoke works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reimagine.queue import open_store
from reimagine.queue.models import NewJob, Outcome
from tests.pgserver import PgServer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reimagine.cli", *args], capture_output=True, text=True, check=False)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = _cli("keys", "create", "--name", "ci", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    key_id, _, secret = key.partition(":")
    assert key_id and len(secret) > 30
    store = open_store(f"sqlite:///{tmp_path / 'reimagine.db'}")
    grant = store.keys.verify(key)
    assert grant is not None and grant.id == key_id

    listed = _cli("keys", "list", "--data-dir", str(tmp_path))
    assert key_id in listed.stdout and "ci" in listed.stdout and secret not in listed.stdout

    assert _cli("keys", "revoke", key_id, "--data-dir", str(tmp_path)).returncode == 0
    assert store.keys.verify(key) is None
    assert _cli("keys", "revoke", key_id, "--data-dir", str(tmp_path)).returncode == 1


def test_read_only_commands_refuse_a_missing_data_dir(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    for args in (["keys", "list"], ["keys", "revoke", "abc"]):
        done = _cli(*args, "--data-dir", str(typo))
        assert done.returncode == 2 and "no database at" in done.stderr and "--data-dir" in done.stderr
        assert "Traceback" not in done.stderr
    assert not typo.exists(), "a typo must not create an empty store"


def test_keys_create_with_scope_expiry_and_limit_and_usage_report(tmp_path: Path) -> None:
    data = ("--data-dir", str(tmp_path))
    created = _cli("keys", "create", "--name", "dash", "--scope", "read", "--expires-in-days", "1", *data)
    assert created.returncode == 0, created.stderr
    limited = _cli("keys", "create", "--name", "batch", "--max-concurrent", "2", *data)
    assert limited.returncode == 0, limited.stderr
    assert _cli("keys", "create", "--max-concurrent", "0", *data).returncode == 2
    rows = {line.split("\t")[1]: line.split("\t") for line in _cli("keys", "list", *data).stdout.splitlines()[1:]}
    assert rows["dash"][2:4] == ["active", "read"] and rows["dash"][4] != "-" and rows["dash"][5] == "-"
    assert rows["batch"][2:4] == ["active", "admin"] and rows["batch"][5] == "2"

    store = open_store(f"sqlite:///{tmp_path / 'reimagine.db'}")
    key_id = limited.stdout.strip().splitlines()[-1].partition(":")[0]
    job = store.enqueue(NewJob(id="j1", key_id=key_id, endpoint="e", input={}, input_bytes=10))[0]
    claimed = store.claim("w", 30)
    assert claimed is not None
    store.complete(job.id, claimed.fence, Outcome.succeeded({}, 0.1, gpu_s=2.0, output_bytes=300))
    store.close()
    report = _cli("usage", "--key", "batch", *data)
    assert report.returncode == 0, report.stderr
    lines = [line.split("\t") for line in report.stdout.splitlines()]
    assert lines[0][:4] == ["day", "key", "name", "images"]
    assert lines[1][2:] == ["batch", "1", "0", "2.0", "10", "300"]
    assert lines[-1][0] == "total" and lines[-1][3] == "1"
    assert _cli("usage", "--key", "dash", *data).stdout.splitlines()[1:] == []


def test_read_only_commands_refuse_a_missing_postgresql_database(pg_server: PgServer) -> None:
    missing = pg_server.url("no_such_database")
    done = _cli("keys", "list", "--database-url", missing)
    assert done.returncode == 2 and "cannot open the database" in done.stderr and "no_such_database" in done.stderr
    assert "Traceback" not in done.stderr
