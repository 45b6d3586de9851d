"""`bench/speed.py --tiny` runs end to end on CPU and writes the result lines (never a timed assertion)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_speed_tiny_writes_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--steps", "2", "--short-steps", "1",
         "--out", str(tmp_path), "--work", str(tmp_path / "work"), "--only", "peak,t2i,control,fp8,cache,vae"],
        capture_output=True, text=True, timeout=290, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "truncated" not in run.stdout + run.stderr  # library warnings are silenced
    assert run.stdout.rstrip().splitlines()[-1].startswith("ratio_to_floor")  # the ratios end the output
    text = (tmp_path / "RESULTS.md").read_text()
    assert "CPU tiny smoke run" in text
    assert "measured matmul peak:" in text and "median of 10 products" in text
    for path in ("t2i eager", "t2i fast", "canny+depth eager", "canny+depth fast"):
        assert re.search(rf"^ratio_to_floor 1024x1024 {re.escape(path)}: \d+\.\d\dx$", text, re.M), path
    assert re.search(r"^ratio_to_floor 1024x1024 t2i fp8: (\d+\.\d\dx|n/a \(.+\))$", text, re.M)
    assert "ratio_to_floor 1024x1024 canny+depth step-cache: n/a (the served step cache is off" in text
    assert re.search(r"^\| 1024x1024 t2i one forward, fast vs eager \|.*\| \d\.\d\de[+-]\d\d \|", text, re.M)
    assert "(1 builds)" in text  # eager rows of every section first, then the fast path once: one build
    assert "1 steps, projected to 2" in text  # canny+depth ran short steps and says so
    assert re.search(r"^\| 1024x1024 vae decode eager \|", text, re.M)
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert (tmp_path / "results.json").exists()
