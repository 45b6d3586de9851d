"""Serving overhead with a no-op `generate`: sync-run and queue latency, jobs/s, status requests/s.

Starts a real `reimagine serve` (SQLite in a temp dir, one worker process running `tests.fakes:make_noop_generate`)
on loopback, drives it with httpx for a bounded number of requests, prints a table and writes bench/SERVING.md.

    .venv/bin/python bench/serving.py [--requests 300] [--concurrency 8] [--seconds 5] [--cog-python PATH]

`--cog-python` also measures the baseline the service issue names, cog 0.16's Python HTTP server serving a no-op
predictor, on the same machine and in the same run (both see the same load). cog is not a dependency of ours; give
it its own environment: `python3 -m venv /tmp/cog && /tmp/cog/bin/pip install cog==0.16.12`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
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


def cog_baseline(python: str, requests: int, port: int = 5055) -> list[float]:
    """Sequential no-op predictions against `python -m cog.server.http` (cog 0.16, the last Python server)."""
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
            latencies = []
            with httpx.Client(base_url=url, timeout=60) as client:
                for i in range(requests + 20):
                    started = time.perf_counter()
                    response = client.post("/predictions", json={"input": {"prompt": "noop"}})
                    if i >= 20:  # the first ones warm up
                        latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
            return latencies
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SERVING.md")
    parser.add_argument("--cog-python", default="", help="a Python with cog==0.16.x installed: measure cog too")
    args = parser.parse_args()
    cog = cog_baseline(args.cog_python, args.requests) if args.cog_python else None

    with tempfile.TemporaryDirectory() as tmp:
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
                sync = sync_runs(client, args.requests)
                inline = sync_runs(client, args.requests, INLINE)
                queued = queued_runs(client, args.requests)
                last_id = client.post(ENDPOINT, json=BODY).json()["request_id"]
                time.sleep(0.2)
            jobs_per_s = asyncio.run(concurrent_sync(serve.url, serve.headers(), args.requests, args.concurrency))
            inline_per_s = asyncio.run(
                concurrent_sync(serve.url, serve.headers(), args.requests, args.concurrency, INLINE)
            )
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
        f"one worker process, {args.requests} requests per row. Command: `.venv/bin/python bench/serving.py"
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
