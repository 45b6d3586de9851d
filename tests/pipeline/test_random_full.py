"""The `random-full` preset: exact full-size architectures (counted on the meta device), runnable at tiny scale."""

from __future__ import annotations

import pytest
import torch

from reimagine.config import Settings
from reimagine.generation import Controls
from reimagine.prompt import load_tokenizer
from reimagine.worker import random_full
from reimagine.worker.pipeline import generate, load_pipeline
from tests.pipeline.helpers import RecordingHooks, make_inputs, photo


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_full_size_architectures_have_the_released_parameter_counts() -> None:
    components, controlnet = random_full.build_components(random_full.FULL, "meta", dtype=torch.bfloat16)
    assert _count(components["transformer"]) == 3_785_669_392  # = the released index's 15,142,677,568 fp32 bytes / 4
    assert _count(components["text_encoder"]) == 4_762_310_656  # T5-v1.1-XXL encoder
    assert _count(components["vae"]) == 83_653_863  # SDXL VAE
    assert _count(controlnet) == 1_650_992_256  # 4 double + 10 single blocks, 6 modes (layout assumed)
    depth = random_full.build_depth_estimator(random_full.FULL, "meta")
    assert _count(depth.model) == 24_785_089  # Depth-Anything-V2-Small
    assert components["transformer"].dtype == controlnet.dtype == torch.bfloat16
    assert components["vae"].dtype == torch.float32
    assert components["transformer"].device.type == "meta"


def test_random_full_runs_at_tiny_scale_and_says_its_images_are_noise() -> None:
    settings = Settings(model="random-full", device="cpu")
    pipe = load_pipeline(settings, architecture=random_full.TINY)
    assert _count(pipe.bria.transformer) < 100_000
    hooks = RecordingHooks()
    generated = generate(pipe, make_inputs(), Controls(depth=photo(), canny=photo(seed=1)), hooks, _size=(64, 64))
    assert generated.image.size == (64, 64)
    assert set(generated.maps) == {"depth", "canny"}  # the depth map came from the preset's own depth model
    assert (random_full.RANDOM_FULL_WARNING, "WARN") in hooks.logs
    # Same weights on every build: the same request gives the same image.
    again = load_pipeline(settings, architecture=random_full.TINY)
    repeat = generate(
        again, make_inputs(), Controls(depth=photo(), canny=photo(seed=1)), RecordingHooks(), _size=(64, 64)
    )
    assert repeat.image.tobytes() == generated.image.tobytes()


@pytest.mark.parametrize("model", ["tiny", "random-full"])
def test_random_presets_need_no_download(model: str) -> None:
    settings = Settings(model=model, offline=True)
    assert settings.is_random
    assert load_tokenizer(settings).encode("a cat").ids
