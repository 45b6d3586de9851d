"""`reimagine keys`: create prints the key alone as the last stdout line; list shows no secrets; revoke works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from reimagine.queue import open_store


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reimagine.cli", *args], capture_output=True, text=True, check=False)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = _cli("keys", "create", "--name", "ci", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    key_id, _, secret = key.partition(":")
    assert key_id and len(secret) > 30
    store = open_store(f"sqlite:///{tmp_path / 'reimagine.db'}")
    assert store.keys.verify(key) == key_id

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
