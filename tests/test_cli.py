"""CLI flags come from the settings and the input schema: field names with `_` -> `-`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import reimagine
from reimagine.cli import _split, build_parser
from reimagine.config import Settings
from reimagine.schemas import ReimagineInput


def test_every_setting_is_a_serve_flag() -> None:
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_every_input_field_is_a_generate_flag() -> None:
    namespace = build_parser().parse_args(
        ["generate", "--prompt", "a house", "--aspect-ratio", "16:9", "--seed", "7", "--no-canny-preprocess",
         "--model", "tiny", "--allow-hosts", "127.0.0.1,10.0.0.0/8"]
    )  # fmt: skip
    inputs = ReimagineInput(**_split(namespace, "i_"))
    assert (inputs.aspect_ratio, inputs.seed, inputs.canny_preprocess) == ("16:9", 7, False)
    settings = Settings(**_split(namespace, "s_"))
    assert settings.model == "tiny" and settings.allow_hosts == ["127.0.0.1", "10.0.0.0/8"]


def test_flags_override_environment() -> None:
    import os

    os.environ["REIMAGINE_PORT"] = "9001"
    try:
        assert Settings().port == 9001
        namespace = build_parser().parse_args(["serve", "--port", "9002"])
        assert Settings(**_split(namespace, "s_")).port == 9002
    finally:
        del os.environ["REIMAGINE_PORT"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reimagine.cli", *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_version() -> None:
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"reimagine {reimagine.__version__}"


def test_worker_on_a_cuda_device_without_cuda_is_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch sees a CUDA device")
    done = _cli("worker", "--device", "cuda:0", "--model", "tiny", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --device cuda:0: torch ")
    assert "Traceback" not in done.stderr
