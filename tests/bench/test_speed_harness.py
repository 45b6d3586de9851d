"""`bench/speed.py`'s harness on CPU, without building models: sections run in the order given and isolated, the
deadline and the budget's SIGINT stop the run with every finished row already written, and the measuring helpers
refuse what must not be reported (issue 18)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "bench" / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _dynamo_flag_restored() -> Iterator[None]:
    import torch._dynamo.config as dynamo_config

    flag = dynamo_config.fail_on_recompile_limit_hit
    yield
    dynamo_config.fail_on_recompile_limit_hit = flag


def _bench(speed: ModuleType, tmp_path: Path, *extra: str) -> Any:
    args, only = speed.parse_args(["--tiny", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), *extra])
    return speed.Bench(args, only)


def test_sections_run_in_the_order_given_and_a_failure_does_not_stop_the_rest(
    speed: ModuleType, tmp_path: Path
) -> None:
    import torch._dynamo.config as dynamo_config

    bench = _bench(speed, tmp_path, "--only", "control,peak,t2i")
    calls: list[str] = []

    def fail() -> None:
        raise ValueError("boom")

    bench.section_control = lambda: calls.append("control")
    bench.section_peak = fail
    bench.section_t2i = lambda: calls.append("t2i")
    assert speed.run(bench, bench.only) == 1
    assert calls == ["control", "t2i"]
    sections = bench.results.data["sections"]
    assert list(sections) == ["control", "peak", "t2i"]
    assert sections["peak"].startswith("FAILED") and "ValueError: boom" in sections["peak"]
    assert "- peak: FAILED" in (tmp_path / "out" / "RESULTS.md").read_text()
    assert dynamo_config.fail_on_recompile_limit_hit  # a recompile-limit hit raises instead of running eager


def test_no_section_starts_after_the_deadline(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "peak,t2i", "--deadline", "0")
    bench.section_peak = bench.section_t2i = lambda: pytest.fail("started after the deadline")
    assert speed.run(bench, bench.only) == 0
    assert all("past the deadline" in status for status in bench.results.data["sections"].values())


def test_an_interrupt_keeps_what_was_measured_and_starts_nothing_more(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "peak,t2i,control")
    handler = signal.getsignal(signal.SIGINT)

    def measured_then_interrupted() -> None:
        bench.results.row("1024x1024 t2i eager", ratio=2.0)
        raise KeyboardInterrupt

    bench.section_peak = measured_then_interrupted
    bench.section_t2i = lambda: pytest.fail("started after the interrupt")
    assert speed.run(bench, bench.only) == 3
    assert signal.getsignal(signal.SIGINT) is handler
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "ratio_to_floor 1024x1024 t2i eager: 2.00x" in text
    assert "- peak: interrupted" in text and "- control: not started: interrupted" in text


def test_the_budget_interrupts_the_process_itself(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "peak")

    def wait_for_the_interrupt() -> None:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            time.sleep(0.01)
        pytest.fail("no SIGINT within 60 s")

    bench.section_peak = wait_for_the_interrupt
    try:
        speed.arm_budget(speed.Bench.elapsed() + 0.1)
        assert speed.run(bench, bench.only) == 3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    assert bench.results.data["sections"]["peak"].startswith("interrupted")


def test_every_row_is_written_to_the_output_folder_at_once(speed: ModuleType, tmp_path: Path) -> None:
    results = speed.Results(tmp_path, {"device": "cpu", "tiny": True})
    results.row("1024x1024 t2i fast", ratio=1.48, denoise_s=3.25, floor_s=2.2)
    assert "ratio_to_floor 1024x1024 t2i fast: 1.48x" in (tmp_path / "RESULTS.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["rows"]["1024x1024 t2i fast"]["ratio"] == 1.48
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_non_finite_latents_fail_the_row(speed: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    times = {"denoise": 1.0, "encode": 0.1, "decode": 0.1, "image": 1.2}
    monkeypatch.setattr(speed, "run_image", lambda *a: {"times": times, "latents": torch.tensor([1.0, math.nan])})
    args = SimpleNamespace(warmup=0, repeat=2)
    with pytest.raises(speed.RowFailed, match="not finite"):
        speed.measure(SimpleNamespace(device=torch.device("cpu")), (64, 64), "t2i", 2, args)


def test_step_inputs_are_random_not_zeros(speed: ModuleType) -> None:
    model: Any = nn.Linear(4, 4)
    model.config = SimpleNamespace(in_channels=16, joint_attention_dim=32)
    inputs = speed.random_step_inputs(model, (64, 48), batch=4)
    assert inputs["hidden_states"].shape == (4, 12, 16)
    assert inputs["hidden_states"].std() > 0.5 and inputs["encoder_hidden_states"].std() > 0.5
    assert inputs["img_ids"][-1].tolist() == [0.0, 2.0, 3.0]  # 64 wide, 48 high: the last latent is row 2, column 3


def test_the_floor_counts_the_controlnet_with_its_output_projections(
    speed: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speed, "SCALE", 1)  # full-size images
    flops = speed.count_flops(speed.FULL, (1024, 1024), 1)
    assert round(flops["transformer"] / 1e12, 2) == 25.30
    assert round(flops["controlnet"] / 1e12, 2) == 10.45  # bria-model.md §7.1; 9.8 left the projections out


def test_fp8_can_be_undone_to_the_same_weights(speed: ModuleType) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4)))
    saved = speed.linear_weights([model])
    first, inner = model[0], model[1][0]
    weight = first.weight
    first.weight = nn.Parameter(torch.zeros(4, 4))  # what quantisation does: new weights, sometimes new modules
    model[1][0] = nn.Identity()
    speed.restore_linear_weights(saved)
    assert model[0] is first and model[0].weight is weight and model[1][0] is inner


def test_the_peak_is_a_median_over_many_products_with_its_spread(speed: ModuleType) -> None:
    peak = speed.measure_peak(torch.device("cpu"))
    low, high = peak["peak_p10_p90"]
    assert low <= peak["peak_tflops"] <= high and peak["peak_products"] >= 10


def test_the_gpu_wheel_list_is_one_list_without_unused_packages() -> None:
    lines = (ROOT / "bench" / "gpu-wheels.txt").read_text().splitlines()
    names = [line.split("#")[0].split("==")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert len(names) == len(set(names)) and "importlib-metadata" not in names
    assert all("==" in line for line in lines if line.split("#")[0].strip())


@pytest.mark.timeout(240)
def test_the_gpu_script_dry_runs_on_cpu_into_out(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PYTHON": sys.executable, "HOME": str(tmp_path)}
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "speed_gpu.sh"), "run", "peak,cache", "200", "--work", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=230, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "speed"
    assert {"RESULTS.md", "results.json", "speed.png", "log.txt"} <= {p.name for p in out.iterdir()}
    assert "tiny CPU smoke run" in (out / "log.txt").read_text()
    *_, last, status = run.stdout.rstrip().splitlines()
    assert last.startswith("ratio_to_floor") and status == "[speed] exit 0"  # the ratios end the output's tail


def test_a_child_start_reports_every_stage(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "modes")
    spec = {"kind": "transformer", "options": bench.options_spec(), "data_dir": str(tmp_path / "data")}
    report = bench.run_child("a compile mode", spec, cap_s=200)
    assert report["stage"] == "done" and "stopped" not in report, report
    assert report["step_s"] > 0 and report["compile_s"] >= 0 and report["dropped"] == []
    assert bench.results.data["children"]["a compile mode"]["stage"] == "done"


def test_a_child_past_its_cap_is_stopped_and_the_run_goes_on(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "modes")
    spec = {"kind": "pipe", "options": bench.options_spec(), "data_dir": str(tmp_path / "data")}
    report = bench.run_child("too slow", spec, cap_s=0.5, expect_s=0)  # the imports alone take longer
    assert report["stopped"].startswith("stopped at the cap")
    with pytest.raises(ProcessLookupError):
        os.kill(report["pid"], 0)  # gone, with its process group
    with pytest.raises(speed.DeadlinePassed):  # too little budget left for a child: not started
        bench.args.budget = bench.elapsed() + 5
        bench.run_child("too late", spec, cap_s=100)


def test_on_a_gpu_a_part_the_budget_would_cut_is_not_started(speed: ModuleType, tmp_path: Path) -> None:
    bench = _bench(speed, tmp_path, "--only", "cold", "--budget", "100000")
    bench.need(80, "cold")  # plenty left
    bench.device = torch.device("cuda")  # the check applies on a GPU only (no CUDA call is made)
    bench.args.budget = bench.elapsed() + 60
    with pytest.raises(speed.DeadlinePassed, match="cold: not started, needs ~80s"):
        bench.need(80, "cold")
