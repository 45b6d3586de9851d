"""A `reimagine serve` over HTTPS with a throw-away CA, as the unmodified fal clients need (fal-protocol.md §11)."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.api.helpers import scene_png
from tests.conftest import REPO, ServeProcess

#: Origin allowed by the shared server: the CORS preflight test plays a browser app served from here.
BROWSER_ORIGIN = "http://app.example.test"


class TlsServe(ServeProcess):
    """`reimagine serve --tls-cert --tls-key`: the certificate is issued for 127.0.0.1 and localhost by `ca`."""

    def __init__(self, data_dir: Path, ca: trustme.CA, ca_pem: Path, *args: str, env: dict[str, str] | None = None):
        cert = ca.issue_cert("127.0.0.1", "localhost")
        tls_dir = data_dir.parent / (data_dir.name + "-tls")
        tls_dir.mkdir(exist_ok=True)
        cert_pem, key_pem = tls_dir / "cert.pem", tls_dir / "key.pem"
        cert_pem.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_pem))
        # The server fetches its own https file URLs (uploaded inputs): it trusts the CA like any client.
        super().__init__(
            data_dir,
            "--tls-cert", str(cert_pem), "--tls-key", str(key_pem), *args,
            env={"SSL_CERT_FILE": str(ca_pem), **(env or {})},
        )  # fmt: skip
        self.ca_pem = ca_pem
        self._ssl = ssl.create_default_context(cafile=str(ca_pem))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def http(self, **kwargs: object) -> httpx.Client:
        """An httpx client that trusts the test CA (not the fal client: for checks on the side)."""
        return httpx.Client(base_url=self.url, verify=self._ssl, timeout=30, **kwargs)  # type: ignore[arg-type]

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("serve exited:\n" + "".join(self.output))
            try:
                if httpx.get(self.url + "/health/ready", verify=self._ssl, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("serve not ready:\n" + "".join(self.output))


@dataclass
class ClientEnv:
    """What the client scenarios get: the server, the CA and the input images on disk."""

    server: TlsServe
    ca_pem: Path
    scene_png: Path
    work_dir: Path


@pytest.fixture(scope="session")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _start(tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path], *args: str) -> TlsServe:
    ca, path = ca_pem
    server = TlsServe(tmp_path_factory.mktemp("serve"), ca, path, *args)
    server.start()
    return server


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]) -> Iterator[TlsServe]:
    """Fake generate, one worker; loopback admitted by the fetcher (webhook receiver, image host)."""
    # The Python client goes multipart above 100 MiB, our default upload limit: its scenario needs a larger one.
    server = _start(
        tmp_path_factory,
        ca_pem,
        *("--allow-hosts", "127.0.0.1", "--cors-origins", BROWSER_ORIGIN, "--max-upload-bytes", str(256 * 1024 * 1024)),
    )
    yield server
    server.stop()


def tiny_available() -> bool:
    """The tiny pipeline exists once the pipeline engineer has committed it."""
    return (REPO / "src/reimagine/worker/pipeline.py").exists()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, ca_pem: tuple[trustme.CA, Path]) -> Iterator[TlsServe]:
    """`--model tiny`: the real pipeline and preprocessing on random tiny weights (`--generate ""` undoes the fake)."""
    if not tiny_available():
        pytest.skip("src/reimagine/worker/pipeline.py (the tiny model) is not in this checkout")
    server = _start(tmp_path_factory, ca_pem, "--generate", "", "--model", "tiny", "--allow-hosts", "127.0.0.1")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client_env(
    tls_server: TlsServe, ca_pem: tuple[trustme.CA, Path], tmp_path_factory: pytest.TempPathFactory
) -> ClientEnv:
    work_dir = tmp_path_factory.mktemp("clients")
    scene = work_dir / "scene.png"
    # Square: a structure image sets the output's ratio when the request leaves `aspect_ratio` out, so results
    # stay 1024x1024 whether a scenario sends the scene or not.
    scene.write_bytes(scene_png((240, 240)))
    return ClientEnv(server=tls_server, ca_pem=ca_pem[1], scene_png=scene, work_dir=work_dir)


def run_logged(command: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a client process from the repository root; stdout and stderr together, for the failure message."""
    return subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s
    )
