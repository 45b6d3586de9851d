"""The issue-19 rows of `bench/speed.py` run end to end at tiny size on CPU (no timed assertion): each change is
its own row, and the GPU-only ones say why they are n/a."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_issue19_sections_write_their_rows(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "speed.py"), "--tiny", "--steps", "2", "--out", str(tmp_path),
         "--work", str(tmp_path / "work"), "--only", "nosync,graphs,control1,fp8scale,pair"],
        capture_output=True, text=True, timeout=230, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for path in ("no listener", "preview every step", "sync + preview every step", "2 requests in one batch"):
        assert "step_ms" in rows[f"1024x1024 t2i fast, {path}"], path
    control = rows["1024x1024 canny+depth fast, one ControlNet forward per condition"]
    assert "step_ms" in control and control["rel_err"] < 1e-4  # fp32 on CPU: the same function
    assert "step_ms" in rows["1024x1024 canny+depth fast"]
    for row in ("t2i fast + CUDA graphs", "canny+depth fast + CUDA graphs", "t2i one forward fp8 per-row"):
        assert "skipped_reason" in rows[f"1024x1024 {row}"], row
