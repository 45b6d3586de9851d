"""The unmodified Python `fal-client` (1.x) against `reimagine serve --tls-cert --tls-key`: one process per scenario.

Each scenario (tests/clients/py/scenarios.py) runs in its own interpreter because fal-client reads FAL_RUN_HOST and
FAL_QUEUE_RUN_HOST at import time; the environment is exactly what docs/clients.md tells users to set.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.clients.conftest import ClientEnv, TlsServe, run_logged
from tests.conftest import REPO

SCRIPT = REPO / "tests/clients/py/scenarios.py"


def client_environment(server: TlsServe, env: ClientEnv) -> dict[str, str]:
    host = f"127.0.0.1:{server.port}"
    assert server.key
    return {
        **{name: value for name, value in os.environ.items() if not name.startswith("FAL_")},
        "FAL_KEY": server.key,
        "FAL_RUN_HOST": f"{host}/run",
        "FAL_QUEUE_RUN_HOST": host,
        "SSL_CERT_FILE": str(env.ca_pem),
        "REIMAGINE_URL": server.url,
        "SCENE_PNG": str(env.scene_png),
        "WORK_DIR": str(env.work_dir),
    }


def run_scenario(name: str, server: TlsServe, env: ClientEnv, timeout_s: float = 90) -> None:
    done = run_logged([sys.executable, str(SCRIPT), name], client_environment(server, env), timeout_s)
    assert done.returncode == 0, f"fal-client scenario {name!r} failed:\n{done.stdout}"


@pytest.mark.parametrize(
    "scenario",
    [
        "run_inputs",
        "subscribe",
        "queue",
        "cancel",
        "upload",
        "multipart",
        "stream",
        "errors",
        "webhook",
        "async",
        "platform",
    ],
)
def test_python_client(scenario: str, client_env: ClientEnv) -> None:
    run_scenario(scenario, client_env.server, client_env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_python_client_tiny_model(tiny_server: TlsServe, client_env: ClientEnv) -> None:
    run_scenario("tiny", tiny_server, client_env, timeout_s=240)
