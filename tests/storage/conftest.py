"""An S3-compatible server for the storage tests: moto's, on loopback, started by the tests themselves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

#: the standard AWS environment boto3 reads; moto accepts any credentials
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def create_bucket(self) -> str:
        name = "reimagine-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_ENV.items():
            patch.setenv(name, value)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield S3Server(f"http://127.0.0.1:{port}")
        finally:
            server.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Every `Storage` backend, empty."""
    if request.param == "local":
        from reimagine.storage.local import LocalStorage

        return LocalStorage(tmp_path / "files")
    from reimagine.storage.s3 import S3Storage

    server: S3Server = request.getfixturevalue("s3_server")
    return S3Storage(server.create_bucket(), prefix="reimagine/", endpoint_url=server.endpoint_url)
