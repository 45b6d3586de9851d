"""`bench/speed.py --tiny` runs end to end on CPU and writes the result lines (never a timed assertion)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_speed_tiny_writes_results(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--steps", "1", "--out", str(tmp_path),
         "--work", str(tmp_path / "work"),
         "--only", "peak,t2i,control,fp8"],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "CPU tiny smoke run" in text
    assert "measured matmul peak:" in text
    for path in ("t2i eager", "t2i lossless", "canny+depth eager", "canny+depth lossless"):
        assert re.search(rf"^ratio_to_floor 1024x1024 {re.escape(path)}: \d+\.\d\dx$", text, re.M), path
    assert re.search(r"^ratio_to_floor 1024x1024 t2i fp8: (\d+\.\d\dx|n/a \(.+\))$", text, re.M)
    assert (tmp_path / "speed.png").stat().st_size > 0
    assert (tmp_path / "results.json").exists()
