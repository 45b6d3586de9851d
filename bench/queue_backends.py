"""Queue backends compared: jobs/s and submit→COMPLETED overhead with a no-op model, SQLite vs PostgreSQL.

Real processes on loopback, started the way docs/deployment.md starts them:
- `sqlite`: `reimagine serve --workers 2` (embedded workers, SQLite WAL in a temp dir);
- `postgresql`: the same, with `--database-url postgresql://...` (a throwaway server from tests/pgserver.py);
- `postgresql, 2 x worker`: `reimagine serve --workers 0` plus two `reimagine worker` processes (NOTIFY wake-ups).

Overhead: sequential submit, then the status stream until COMPLETED (what a streaming client waits). Throughput:
`--jobs` submitted by 8 threads, timed until the store counts them all finished. Bounded; prints a table and
writes bench/QUEUE_BACKENDS.md.

    .venv/bin/python bench/queue_backends.py [--jobs 200] [--sequential 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reimagine.queue import open_store  # noqa: E402
from tests.conftest import ServeProcess  # noqa: E402
from tests.pgserver import PgServer, pg_bin_dir  # noqa: E402
from tests.scaleout.conftest import WorkerProcess, create_key  # noqa: E402

ENDPOINT = "/bria/reimagine/3.2"
BODY = {"prompt": "noop"}
NOOP = ("--generate", "tests.fakes:make_noop_generate", "--submit-rate-per-min", "0")


@dataclass
class Row:
    setup: str
    jobs_per_s: float
    p50_ms: float
    p95_ms: float
    mean_ms: float


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overhead(client: httpx.Client, n: int) -> list[float]:
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


def throughput(client: httpx.Client, database_url: str, n: int) -> float:
    store = open_store(database_url)
    try:
        before = _finished(store.count_by_status())
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: client.post(ENDPOINT, json=BODY).status_code, range(n)))
        assert codes == [200] * n, codes
        deadline = time.monotonic() + 300
        while _finished(store.count_by_status()) < before + n:
            assert time.monotonic() < deadline, store.count_by_status()
            time.sleep(0.01)
        return n / (time.perf_counter() - started)
    finally:
        store.close()


def _finished(counts: dict[str, int]) -> int:
    return sum(counts.get(status, 0) for status in ("SUCCEEDED", "FAILED", "CANCELED"))


def measure(setup: str, url: str, key: str, database_url: str, args: argparse.Namespace) -> Row:
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {key}"}, timeout=60) as client:
        overhead(client, 5)  # warm-up: imports, connection pools, tokenizer
        latencies = overhead(client, args.sequential)
        rate = throughput(client, database_url, args.jobs)
    ms = [x * 1000 for x in latencies]
    return Row(setup, rate, statistics.median(ms), _pct(ms, 0.95), statistics.fmean(ms))


def run_sqlite(args: argparse.Namespace, root: Path) -> Row:
    api = ServeProcess(root / "sqlite", *NOOP, "--workers", "2").start()
    try:
        assert api.key is not None
        return measure("SQLite, serve --workers 2", api.url, api.key, f"sqlite:///{root / 'sqlite/reimagine.db'}", args)
    finally:
        api.stop()


def run_postgres(args: argparse.Namespace, root: Path, pg: PgServer, remote_workers: int) -> Row:
    database_url = pg.create_database()
    key = create_key(database_url)
    data = root / f"pg{remote_workers}"
    embedded = "0" if remote_workers else "2"
    api = ServeProcess(data, *NOOP, "--workers", embedded, "--database-url", database_url)
    workers = [WorkerProcess(database_url, data, *NOOP[:2]) for _ in range(remote_workers)]
    try:
        api.start()
        for worker in workers:
            worker.start()
        setup = (
            f"PostgreSQL, serve --workers 0 + {remote_workers} x worker"
            if remote_workers
            else ("PostgreSQL, serve --workers 2")
        )
        return measure(setup, api.url, key, database_url, args)
    finally:
        for worker in workers:
            worker.stop()
        api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted for the throughput figure")
    parser.add_argument("--sequential", type=int, default=50, help="sequential submit→COMPLETED round trips")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "QUEUE_BACKENDS.md")
    args = parser.parse_args()
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        sys.exit("PostgreSQL server binaries not found (scripts/test-deps.sh installs them)")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="reimagine-bench-") as tmp:
        root = Path(tmp)
        pg = PgServer(bin_dir).start()
        try:
            runs: list[Callable[[], Row]] = [
                lambda: run_sqlite(args, root),
                lambda: run_postgres(args, root, pg, 0),
                lambda: run_postgres(args, root, pg, 2),
            ]
            for run in runs:
                rows.append(run())
                print(rows[-1], flush=True)
        finally:
            pg.stop()
    table = [
        "| setup | jobs/s | submit→COMPLETED p50 (ms) | p95 (ms) | mean (ms) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r.setup} | {r.jobs_per_s:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.mean_ms:.1f} |" for r in rows),
    ]
    print("\n".join(table))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load}"
    # A hand-written "## Reading" section below the table survives a rerun.
    previous = args.out.read_text() if args.out.exists() else ""
    reading = previous[previous.find("\n## Reading") :] if "\n## Reading" in previous else ""
    args.out.write_text(
        "# Queue backends: SQLite vs PostgreSQL\n\n"
        f"`bench/queue_backends.py --jobs {args.jobs} --sequential {args.sequential}`, "
        f"{datetime.now(UTC).date().isoformat()}, {machine}.\n\n"
        "No-op model (`tests.fakes:make_noop_generate`), real processes on loopback, a throwaway PostgreSQL with\n"
        "fsync off (tests/pgserver.py): the figures are the queue's own overhead, not disk durability.\n"
        "jobs/s: jobs submitted by 8 threads, timed until all finished. submit→COMPLETED: one job at a time,\n"
        "submit then the status stream until COMPLETED. The load average is given because the figures move with\n"
        "it: on a 2-CPU machine shared with other test runs, repeated runs differed by up to 2x (jobs/s).\n\n"
        + "\n".join(table)
        + "\n"
        + reading
    )


if __name__ == "__main__":
    main()
