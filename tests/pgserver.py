"""A throwaway PostgreSQL server started from the installed binaries, for tests of the PostgreSQL backend.

There is no Docker here, so the tests run `initdb` and `pg_ctl` themselves in a temp dir. initdb refuses to run as
root, so as root the cluster is owned by and run as the `postgres` system user (`runuser -u postgres --`). The
server listens on a free loopback port and on a unix socket inside its own directory, so it never collides with
a system PostgreSQL. CI installs the binaries (scripts/test-deps.sh); elsewhere the tests skip without them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


def pg_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """One PostgreSQL cluster in a temp dir; `url(db)` is a database on it (created on demand)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="reimagine-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.is_root = os.geteuid() == 0
        self.user = "postgres" if self.is_root else os.environ.get("USER", "postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.is_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, cwd=self.root)

    def start(self) -> PgServer:
        if self.is_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its URL."""
        name = name or "t" + uuid.uuid4().hex[:12]
        deadline = time.monotonic() + 10
        while True:
            done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name, check=False)
            if done.returncode == 0:
                return self.url(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {done.stderr}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL server binaries not installed (scripts/test-deps.sh installs them)")
        # As root (CI) the binaries can be installed, so their absence is a broken set-up, not a reason to skip.
        pytest.fail("PostgreSQL server binaries not installed: run scripts/test-deps.sh")
    server = PgServer(bin_dir).start()
    yield server
    server.stop()
