"""`reimagine generate` and `reimagine models pull`, called as the CLI calls them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from reimagine.config import Settings
from reimagine.errors import InputError, ModelMissing
from reimagine.generation import Controls
from reimagine.schemas import ReimagineInput
from reimagine.worker.oneshot import _read_image, pull_models, run_generate, weight_patterns
from reimagine.worker.pipeline import ReimaginePipeline, generate, load_pipeline
from tests.pipeline.helpers import RecordingHooks, make_inputs, photo, pixels


def test_run_generate_end_to_end_twenty_steps_16_9_with_a_canny_file(tmp_path: Path) -> None:
    canny = tmp_path / "structure.jpg"
    photo(320, 180).save(canny)
    inputs = ReimagineInput(prompt="a house", aspect_ratio="16:9", num_inference_steps=20, prompt_enhancer=False)
    output = run_generate(Settings(model="tiny"), inputs, None, str(canny), tmp_path / "out" / "image.png")
    assert output == tmp_path / "out" / "image.png"
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size == (1344, 768)


def test_images_come_from_paths_and_data_uris(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo(40, 30).save(buffer, format="PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert _read_image(data_uri, "canny_image").size == (40, 30)
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    assert _read_image(str(tmp_path / "a.png"), "depth_image").mode == "RGB"
    with pytest.raises(InputError) as caught:
        _read_image(str(tmp_path / "missing.png"), "depth_image")
    assert caught.value.field == "depth_image"


def test_pull_models_has_nothing_to_do_for_tiny_or_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pull_models(Settings(model="tiny"))
    pull_models(Settings(model=str(tmp_path), controlnet=str(tmp_path), depth_model=str(tmp_path)))
    assert "nothing to download" in capsys.readouterr().err


def test_pull_models_refuses_offline() -> None:
    with pytest.raises(ModelMissing, match="offline"):
        pull_models(Settings(offline=True))


@pytest.mark.parametrize(
    ("files", "wanted", "unwanted"),
    [
        (
            ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "controlnet_bria.py"],
            ["config.json", "diffusion_pytorch_model.safetensors"],
            ["diffusion_pytorch_model.bin", "controlnet_bria.py"],
        ),
        (
            ["config.json", "diffusion_pytorch_model.bin", "README.md", "controlnet_bria.py"],
            ["config.json", "diffusion_pytorch_model.bin"],
            ["README.md", "controlnet_bria.py"],
        ),
        (
            [
                "config.json",
                "pytorch_model.bin.index.json",
                "pytorch_model-00001-of-00002.bin",
                "preprocessor_config.json",
            ],
            [
                "config.json",
                "pytorch_model.bin.index.json",
                "pytorch_model-00001-of-00002.bin",
                "preprocessor_config.json",
            ],
            [],
        ),
    ],
)
def test_pull_fetches_safetensors_when_present_else_bin(
    files: list[str], wanted: list[str], unwanted: list[str]
) -> None:
    from huggingface_hub.utils import filter_repo_objects

    pulled = set(filter_repo_objects(files, allow_patterns=weight_patterns(files)))
    assert pulled == set(wanted) and not pulled & set(unwanted)


def test_a_controlnet_with_only_bin_weights_loads_offline(pipe: ReimaginePipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "model")
    controlnet = tmp_path / "model" / "controlnet"
    for path in controlnet.iterdir():
        path.unlink()
    pipe.controlnet.nets[0].save_pretrained(controlnet, safe_serialization=False)
    assert sorted(path.name for path in controlnet.iterdir()) == ["config.json", "diffusion_pytorch_model.bin"]

    reloaded = load_pipeline(Settings(model=str(tmp_path / "model"), offline=True))
    inputs, controls = make_inputs(seed=4), Controls(canny=photo())
    expected = generate(pipe, inputs, controls, RecordingHooks(), _size=(128, 96)).image
    assert (
        pixels(generate(reloaded, inputs, controls, RecordingHooks(), _size=(128, 96)).image) == pixels(expected)
    ).all()
