"""Scale-out processes as the deployment docs start them: PostgreSQL, `reimagine serve --workers 0` replicas and
`reimagine worker` processes (docs/deployment.md shows the same commands)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.pgserver import PgServer, pg_server

__all__ = ["pg_server"]

#: short leases so that a killed worker's job is taken back within seconds
LEASE_FLAGS = ("--heartbeat-s", "1", "--lease-s", "3")


def create_key(database_url: str) -> str:
    """`reimagine keys create --database-url ...`: the key is the last line of stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "reimagine.cli", "keys", "create", "--database-url", database_url],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip().splitlines()[-1]


class WorkerProcess:
    """`reimagine worker --database-url ... --data-dir ...` with the fake generate."""

    def __init__(self, database_url: str, data_dir: Path, *args: str) -> None:
        self.command = [
            sys.executable, "-m", "reimagine.cli", "worker",
            "--database-url", database_url, "--data-dir", str(data_dir),
            "--generate", "tests.fakes:make_generate", "--device", "cpu", *LEASE_FLAGS, *args,
        ]  # fmt: skip
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(
            self.command, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.create_database()
