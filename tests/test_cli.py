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


def _help(*command: str) -> str:
    done = _cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # argparse wraps lines anywhere


def test_help_shows_flags_and_defaults_as_typed() -> None:
    for command in ("serve", "worker", "generate"):
        text = _help(command)
        for leak in (" S_", " I_", "PosixPath", "<AspectRatio", "<Priority"):
            assert leak not in text, (command, leak)
    assert "--port PORT" in _help("serve") and "(default: reimagine-data)" in _help("serve")
    assert "(default: 1:1)" in _help("generate")


def test_worker_help_lists_only_what_a_worker_reads() -> None:
    text = _help("worker")
    assert "--device" in text and "--database-url" in text and "--lease-s" in text
    for api_only in ("--port", "--sync-timeout-s", "--max-queue-depth", "--webhook-timeout-s", "--cors-origins"):
        assert api_only not in text


def test_an_unknown_flag_shows_the_commands_usage() -> None:
    done = _cli("generate", "--bogus")
    assert done.returncode == 2
    assert "usage: reimagine generate" in done.stderr and "unrecognized arguments: --bogus" in done.stderr


def test_generate_names_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    done = _cli(
        "generate", "--prompt", "x", "--model", "tiny", "--canny-image", str(text_file), "-o", str(tmp_path / "o.png")
    )
    assert done.returncode == 2
    assert "notes.txt" in done.stderr and "is not an image" in done.stderr and "BytesIO" not in done.stderr


def test_log_lines_carry_no_ansi_and_hub_lines_come_once() -> None:
    script = (
        "import logging\n"
        "from reimagine.config import Settings\n"
        "from reimagine.logs import configure_logging\n"
        "configure_logging(Settings(), role='serve')\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
        "colored = {'color_message': '\\x1b[1mUvicorn\\x1b[0m'}\n"
        "logging.getLogger('uvicorn.error').info('Uvicorn running', extra=colored)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stderr.count("Retrying in 1s") == 1
    assert "Uvicorn running" in done.stderr and "\x1b" not in done.stderr
