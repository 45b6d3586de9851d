"""`bench/serving.py` runs end to end at a small size and writes its table (never a timed assertion)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_serving_bench_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "SERVING.md"
    out.write_text("# old table\n\n## Reading (hand-written)\n\nkept across reruns\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--requests", "40", "--rounds", "1", "--seconds",
         "0.3", "--concurrency", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    for row in (
        r"sync run latency p50 / p99 \(ms\)\s+\| [\d.]+ / [\d.]+",
        r"jobs/s, sync runs, 2 connections\s+\| \d+",
        r"jobs/s, queue submits, 2 connections \(until the last COMPLETED\)\s+\| \d+",
        r"status requests/s, 2 connections\s+\| \d+",
        r"status requests/s, 2 connections, 8 MB data-URI inputs queued\s+\| \d+",
        r"server CPU per job, API / worker process .*\| [\d.]+ / [\d.]+",
    ):
        assert re.search(row, text), row
    assert text.rstrip().endswith("kept across reruns")
