"""Serving overhead with a no-op `generate`: sync-run and queue latency, jobs/s, status requests/s.

Starts a real `reimagine serve` (SQLite in a temp dir, one worker process running `tests.fakes:make_noop_generate`)
on loopback, drives it with a load generator that costs almost nothing (bench/loadgen.py: keep-alive HTTP over a
plain socket), prints a table and writes bench/SERVING.md.

    .venv/bin/python bench/serving.py [--requests 3000] [--rounds 3] [--concurrency 8] [--seconds 3] [--cog-python PATH]

`--cog-python` also measures the baseline the service issue names, cog 0.16's Python HTTP server serving a no-op
predictor, on the same machine, with the same client and in alternating rounds (both see the same load). cog is not
a dependency of ours; give it its own environment: `python3 -m venv /tmp/cog && /tmp/cog/bin/pip install cog==0.16.12`.
"""

from __future__ import annotations

import argparse
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

from bench.loadgen import Connection, drive  # noqa: E402

from tests.conftest import ServeProcess, free_port  # noqa: E402

ENDPOINT = "/bria/reimagine/3.2"
BODY = {"prompt": "noop"}
#: The image comes back inline and no file is stored: the closest to a predictor returning its output directly.
INLINE = {"prompt": "noop", "sync_mode": True}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def big_input_uri(megabytes: float = 8.0) -> str:
    """A PNG data URI of about `megabytes` MB (random noise does not compress), the README walk-through's shape."""
    import base64
    import io

    from PIL import Image

    side = int((megabytes * 1e6 * 3 / 4 / 3) ** 0.5)
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def status_with_big_inputs(seconds: float, concurrency: int, jobs: int = 4) -> float:
    """Status requests/s on a queued job whose input holds an 8 MB data URI (`jobs` such jobs wait, no worker).

    What one client polling a large request costs the API: a status read that parsed the job's input paid for
    the whole JSON document on every poll (issue 12 item 2).
    """
    body = {"prompt": "noop", "depth_image_url": big_input_uri()}
    with tempfile.TemporaryDirectory() as tmp:
        serve = ServeProcess(Path(tmp), "--workers", "0", "--submit-rate-per-min", "0", "--log-level", "WARNING")
        serve.start()
        try:
            headers = serve.headers()
            with httpx.Client(base_url=serve.url, headers=headers, timeout=120) as client:
                ids = []
                for _ in range(jobs):
                    response = client.post(ENDPOINT, json=body)
                    assert response.status_code == 200, response.text[:500]
                    ids.append(response.json()["request_id"])
            # 202: still queued (there is no worker).
            status = drive(
                serve.url, "GET", f"/bria/reimagine/requests/{ids[-1]}/status", headers=headers, seconds=seconds,
                concurrency=concurrency, expect=202,
            )  # fmt: skip
            return status.rate
        finally:
            serve.stop()


def queued_runs(client: httpx.Client, n: int, ids: list[str]) -> list[float]:
    """Submit, then follow the status stream until COMPLETED: what a streaming client waits."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        request_id = client.post(ENDPOINT, json=BODY).json()["request_id"]
        ids.append(request_id)
        with client.stream("GET", f"/bria/reimagine/requests/{request_id}/status/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["status"] == "COMPLETED":
                    break
        latencies.append(time.perf_counter() - started)
    return latencies


def queue_throughput(url: str, headers: dict[str, str], n: int, concurrency: int) -> float:
    """Jobs/s through the queue: `n` submits over `concurrency` connections, until the last one has COMPLETED."""
    started = time.perf_counter()
    drive(url, "POST", ENDPOINT, BODY, headers=headers, requests=n - 1, concurrency=concurrency)
    poll = Connection(url, headers)
    status, body = poll.request("POST", ENDPOINT, BODY)
    assert status == 200, body
    # One priority, so jobs finish in submission order: the last submitted is the last to complete.
    last = json.loads(body)["request_id"]
    while poll.request("GET", f"/bria/reimagine/requests/{last}/status")[0] != 200:
        time.sleep(0.002)
    poll.close()
    return n / (time.perf_counter() - started)


_COG_PREDICTOR = """
from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, prompt: str = "noop") -> str:
        return "ok"
"""


@contextlib.contextmanager
def cog_server(python: str) -> Iterator[str]:
    """`python -m cog.server.http` (cog 0.16, its last Python server) with a no-op predictor; yields its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "predict.py").write_text(_COG_PREDICTOR)
        Path(tmp, "cog.yaml").write_text('build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n')
        port = free_port()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per row, over all rounds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the status-polling run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "SERVING.md")
    parser.add_argument("--cog-python", default="", help="a Python with cog==0.16.x installed: measure cog too")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring everything once, interleaved")
    parser.add_argument(
        "--big-input-only", action="store_true", help="print only status requests/s with 8 MB inputs queued"
    )
    args = parser.parse_args()
    if args.big_input_only:
        print(f"{status_with_big_inputs(args.seconds, args.concurrency):.0f}")
        return
    n = max(1, args.requests // args.rounds)
    k = args.concurrency

    # cog and reimagine run side by side, measured in alternating rounds, so a change in the machine's load (these
    # are shared 2-vCPU machines) hits both alike; throughputs are the median round, latencies pooled.
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}

    def record(name: str, run_rate: float, run_latencies: list[float] | None = None) -> None:
        rates.setdefault(name, []).append(run_rate)
        latencies.setdefault(name, []).extend(run_latencies or [])

    cpu_api: list[float] = []
    streamed: list[str] = []
    cpu_worker: list[float] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        cog_url = stack.enter_context(cog_server(args.cog_python)) if args.cog_python else None
        serve = ServeProcess(
            Path(tmp),
            "--generate",
            "tests.fakes:make_noop_generate",
            "--submit-rate-per-min",
            "0",
            "--max-queue-depth",
            "1000000",
            "--log-level",
            "WARNING",
        )
        serve.start()
        try:
            url, headers = serve.url, serve.headers()
            assert serve.proc is not None
            worker_pid = httpx.get(url + "/health/ready").json()["workers"]["pids"][0]
            run = "/run" + ENDPOINT
            drive(url, "POST", run, BODY, headers=headers, requests=50)  # warm-up
            if cog_url is not None:
                drive(cog_url, "POST", "/predictions", {"input": {"prompt": "noop"}}, requests=50)
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for _ in range(args.rounds):
                    if cog_url is not None:
                        cog = drive(cog_url, "POST", "/predictions", {"input": {"prompt": "noop"}}, requests=n)
                        record("cog", cog.rate, cog.latencies)
                    sync = drive(url, "POST", run, BODY, headers=headers, requests=n)
                    record("sync", sync.rate, sync.latencies)
                    inline = drive(url, "POST", run, INLINE, headers=headers, requests=n)
                    record("inline", inline.rate, inline.latencies)
                    latencies.setdefault("queued", []).extend(queued_runs(client, max(1, n // 10), streamed))
                    before = _cpu_s(serve.proc.pid), _cpu_s(worker_pid)
                    many = drive(url, "POST", run, BODY, headers=headers, requests=n, concurrency=k)
                    cpu_api.append((_cpu_s(serve.proc.pid) - before[0]) / n)
                    cpu_worker.append((_cpu_s(worker_pid) - before[1]) / n)
                    record("many", many.rate)
                    record(
                        "many_inline", drive(url, "POST", run, INLINE, headers=headers, requests=n, concurrency=k).rate
                    )
                    record("queue", queue_throughput(url, headers, n, k))
                last_id = client.post(ENDPOINT, json=BODY).json()["request_id"]
                time.sleep(0.2)
            status = drive(
                url, "GET", f"/bria/reimagine/requests/{last_id}/status", headers=headers, seconds=args.seconds,
                concurrency=k,
            )  # fmt: skip
        finally:
            serve.stop()
        big_status = status_with_big_inputs(args.seconds, k)
        db = sqlite3.connect(Path(tmp) / "reimagine.db")
        # The jobs followed through the status stream, one at a time: the service's own time, without queueing.
        server_side = [row[0] for row in db.execute(
            f"SELECT completed_at - created_at FROM jobs WHERE id IN ({', '.join('?' * len(streamed))})", streamed
        )]  # fmt: skip

    def lat(name: str) -> str:
        values = latencies[name]
        return f"{_pct(values, 0.5) * 1e3:.2f} / {_pct(values, 0.99) * 1e3:.2f}"

    def rate(name: str) -> str:
        return f"{statistics.median(rates[name]):.0f}"

    rows = [
        ("sync run latency p50 / p99 (ms)", lat("sync")),
        ("sync runs/s, one connection", rate("sync")),
        ("sync run, sync_mode (inline image) p50 / p99 (ms)", lat("inline")),
        ("sync runs/s, sync_mode, one connection", rate("inline")),
        ("queue submit->COMPLETED via SSE p50 / p99 (ms)", lat("queued")),
        (
            "server-side created->completed of those p50 / p99 (ms)",
            f"{_pct(server_side, 0.5) * 1e3:.2f} / {_pct(server_side, 0.99) * 1e3:.2f}",
        ),
        (f"jobs/s, sync runs, {k} connections", rate("many")),
        (f"jobs/s, sync runs, sync_mode, {k} connections", rate("many_inline")),
        (f"jobs/s, queue submits, {k} connections (until the last COMPLETED)", rate("queue")),
        (f"status requests/s, {k} connections", f"{status.rate:.0f}"),
        (f"status requests/s, {k} connections, 8 MB data-URI inputs queued", f"{big_status:.0f}"),
        (
            f"server CPU per job, API / worker process (ms; sync runs, {k} connections)",
            f"{statistics.median(cpu_api) * 1e3:.2f} / {statistics.median(cpu_worker) * 1e3:.2f}",
        ),
    ]
    if "cog" in rates:
        cog_rate = statistics.median(rates["cog"])
        rows += [
            ("cog 0.16 no-op prediction p50 / p99 (ms)", lat("cog")),
            ("cog 0.16 predictions/s, one connection", f"{cog_rate:.0f}"),
            (
                f"reimagine jobs/s ({k} connections) / cog predictions/s",
                f"{statistics.median(rates['many']) / cog_rate:.2f}x",
            ),
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
        "median round), client: bench/loadgen.py. Command: `.venv/bin/python bench/serving.py"
        + (" --cog-python <venv with cog 0.16.12>/bin/python" if "cog" in rates else "")
        + "`.\n\n"
        + header
        + "\n"
        + table
        + "\n"
        + reading
    )


if __name__ == "__main__":
    main()
