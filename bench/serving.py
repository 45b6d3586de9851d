"""Serving overhead with a no-op `generate`: sync-run and queue latency, jobs/s, status requests/s.

Starts a real `reimagine serve` (SQLite in a temp dir, one worker process running `tests.fakes:make_noop_generate`)
on loopback, drives it with httpx for a bounded number of requests, prints a table and writes bench/SERVING.md.

    .venv/bin/python bench/serving.py [--requests 600] [--rounds 3] [--concurrency 8] [--seconds 5] [--cog-python PATH]

`--cog-python` also measures the baseline the service issue names, cog 0.16's Python HTTP server serving a no-op
predictor, on the same machine and in the same run (both see the same load). cog is not a dependency of ours; give
it its own environment: `python3 -m venv /tmp/cog && /tmp/cog/bin/pip install cog==0.16.12`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import ServeProcess  # noqa: E402

ENDPOINT = "/bria/reimagine/3.2"
BODY = {"prompt": "noop"}
#: The image comes back inline and no file is stored: the closest to a predictor returning its output directly.
INLINE = {"prompt": "noop", "sync_mode": True}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sync_runs(client: httpx.Client, n: int, body: dict[str, object] = BODY) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post("/run" + ENDPOINT, json=body)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return latencies


def queued_runs(client: httpx.Client, n: int) -> list[float]:
    """Submit, then follow the status stream until COMPLETED: what a streaming client waits."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        request_id = client.post(ENDPOINT, json=BODY).json()["request_id"]
        with client.stream("GET", f"/bria/reimagine/requests/{request_id}/status/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["status"] == "COMPLETED":
                    break
        latencies.append(time.perf_counter() - started)
    return latencies


async def concurrent_sync(
    url: str, headers: dict[str, str], n: int, concurrency: int, body: dict[str, object] = BODY
) -> float:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        remaining = n

        async def one() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/run" + ENDPOINT, json=body)
                assert response.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return n / (time.perf_counter() - started)


async def status_rate(url: str, headers: dict[str, str], request_id: str, seconds: float, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        count = 0
        deadline = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                response = await client.get(f"/bria/reimagine/requests/{request_id}/status")
                assert response.status_code == 200
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


_COG_PREDICTOR = """
from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, prompt: str = "noop") -> str:
        return "ok"
"""


@contextlib.contextmanager
def cog_server(python: str, port: int = 5055) -> Iterator[str]:
    """`python -m cog.server.http` (cog 0.16, its last Python server) with a no-op predictor; yields its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "predict.py").write_text(_COG_PREDICTOR)
        Path(tmp, "cog.yaml").write_text('build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n')
        env = {**os.environ, "PORT": str(port)}
        proc = subprocess.Popen(
            [python, "-m", "cog.server.http"], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health-check").json().get("status") == "READY":
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("cog did not become ready")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def cog_predictions(client: httpx.Client, n: int) -> list[float]:
    """Sequential no-op predictions (cog runs one at a time: a second concurrent one is refused with 409)."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post("/predictions", json={"input": {"prompt": "noop"}})
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SERVING.md")
    parser.add_argument("--cog-python", default="", help="a Python with cog==0.16.x installed: measure cog too")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring everything once, interleaved")
    args = parser.parse_args()
    n = max(1, args.requests // args.rounds)

    # cog and reimagine run side by side, measured in alternating rounds, so a change in the machine's load (these
    # are shared 2-vCPU machines) hits both alike; throughputs are the median round, latencies pooled.
    cog: list[float] | None = [] if args.cog_python else None
    sync: list[float] = []
    inline: list[float] = []
    queued: list[float] = []
    jobs_rates: list[float] = []
    inline_rates: list[float] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        cog_client = (
            stack.enter_context(httpx.Client(base_url=stack.enter_context(cog_server(args.cog_python)), timeout=60))
            if cog is not None
            else None
        )
        serve = ServeProcess(
            Path(tmp),
            "--generate",
            "tests.fakes:make_noop_generate",
            "--submit-rate-per-min",
            "0",
            "--max-queue-depth",
            "100000",
            "--log-level",
            "WARNING",
        )
        serve.start()
        try:
            with httpx.Client(base_url=serve.url, headers=serve.headers(), timeout=60) as client:
                sync_runs(client, 20)  # warm-up
                if cog_client is not None:
                    cog_predictions(cog_client, 20)
                for _ in range(args.rounds):
                    if cog is not None and cog_client is not None:
                        cog += cog_predictions(cog_client, n)
                    sync += sync_runs(client, n)
                    inline += sync_runs(client, n, INLINE)
                    queued += queued_runs(client, n)
                    jobs_rates.append(asyncio.run(concurrent_sync(serve.url, serve.headers(), n, args.concurrency)))
                    inline_rates.append(
                        asyncio.run(concurrent_sync(serve.url, serve.headers(), n, args.concurrency, INLINE))
                    )
                last_id = client.post(ENDPOINT, json=BODY).json()["request_id"]
                time.sleep(0.2)
            jobs_per_s = statistics.median(jobs_rates)
            inline_per_s = statistics.median(inline_rates)
            status_per_s = asyncio.run(status_rate(serve.url, serve.headers(), last_id, args.seconds, args.concurrency))
        finally:
            serve.stop()
        db = sqlite3.connect(Path(tmp) / "reimagine.db")
        server_side = [row[0] for row in db.execute(
            "SELECT completed_at - created_at FROM jobs WHERE status = 'SUCCEEDED' ORDER BY seq"
        )][20:]  # fmt: skip

    rows = [
        ("sync run latency p50 / p99 (ms)", f"{_pct(sync, 0.5) * 1e3:.2f} / {_pct(sync, 0.99) * 1e3:.2f}"),
        ("sync runs/s, sequential", f"{1 / statistics.mean(sync):.0f}"),
        (
            "sync run, sync_mode (inline image) p50 / p99 (ms)",
            f"{_pct(inline, 0.5) * 1e3:.2f} / {_pct(inline, 0.99) * 1e3:.2f}",
        ),
        ("sync runs/s, sync_mode, sequential", f"{1 / statistics.mean(inline):.0f}"),
        (
            "queue submit->COMPLETED via SSE p50 / p99 (ms)",
            f"{_pct(queued, 0.5) * 1e3:.2f} / {_pct(queued, 0.99) * 1e3:.2f}",
        ),
        (
            "server-side created->completed p50 / p99 (ms)",
            f"{_pct(server_side, 0.5) * 1e3:.2f} / {_pct(server_side, 0.99) * 1e3:.2f}",
        ),
        (f"jobs/s, sync runs, {args.concurrency} concurrent clients", f"{jobs_per_s:.0f}"),
        (f"jobs/s, sync runs, sync_mode, {args.concurrency} concurrent clients", f"{inline_per_s:.0f}"),
        (f"status requests/s, {args.concurrency} concurrent clients", f"{status_per_s:.0f}"),
    ]
    if cog is not None:
        rows += [
            ("cog 0.16 no-op prediction p50 / p99 (ms)", f"{_pct(cog, 0.5) * 1e3:.2f} / {_pct(cog, 0.99) * 1e3:.2f}"),
            ("cog 0.16 predictions/s, sequential", f"{1 / statistics.mean(cog):.0f}"),
        ]
    width = max(len(name) for name, _ in rows)
    table = "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)
    header = f"| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|"
    print(header + "\n" + table)
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    # A hand-written "## Reading" section below the table survives a rerun.
    previous = args.out.read_text() if args.out.exists() else ""
    reading = previous[previous.find("\n## Reading") :] if "\n## Reading" in previous else ""
    args.out.write_text(
        "# Serving overhead (no-op generate)\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}, Python {platform.python_version()}, SQLite store, "
        f"one worker process, {args.requests} requests per row in {args.rounds} interleaved rounds (throughputs: the "
        "median round). Command: `.venv/bin/python bench/serving.py"
        + (" --cog-python <venv with cog 0.16.12>/bin/python" if cog is not None else "")
        + "`.\n\n"
        + header
        + "\n"
        + table
        + "\n"
        + reading
    )


if __name__ == "__main__":
    main()
