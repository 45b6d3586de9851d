"""Shared test infrastructure: a real `reimagine serve` process on a free loopback port, and a job to enqueue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reimagine.queue.models import NewJob

REPO = Path(__file__).resolve().parent.parent


def new_job() -> NewJob:
    """A queued job as the API would submit it, for tests that drive the store or a worker directly."""
    return NewJob(
        id=str(uuid.uuid4()),
        key_id="k",
        endpoint="bria/reimagine/3.2",
        input={"prompt": "a cat"},
        priority=0,
        base_url="http://127.0.0.1:1",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServeProcess:
    """`python -m reimagine.cli serve` with the fake generate, as a user would start it."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.key: str | None = None
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout_s: float = 60) -> ServeProcess:
        command = [
            sys.executable, "-m", "reimagine.cli", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--generate", "tests.fakes:make_generate", "--workers", "1",
            "--heartbeat-s", "1", "--lease-s", "4", *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        previous = ""
        for line in self.proc.stdout:
            self.output.append(line)
            if previous.startswith("Created the first API key"):
                self.key = line.strip()
            previous = line

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited:\n" + "".join(self.output))
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("serve not ready:\n" + "".join(self.output))

    def headers(self) -> dict[str, str]:
        assert self.key, "no key was printed:\n" + "".join(self.output)
        return {"Authorization": f"Key {self.key}"}

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), "--allow-hosts", "127.0.0.1").start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as http:
        yield http
