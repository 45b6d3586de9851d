"""Structure images prepared as Bria does: fitted to the output size first (centre-crop, Lanczos), then the map.

The output size follows the structure image when the request leaves `aspect_ratio` out; a set ratio crops it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from reimagine.generation import Controls
from reimagine.worker.pipeline import ReimaginePipeline, generate
from tests.pipeline.helpers import RecordingHooks, make_inputs, pixels


def _scene(width: int, height: int) -> Image.Image:
    """Flat shapes on a flat background, drawn in a 1000-unit frame scaled to the size: the same picture at any size."""
    image = Image.new("RGB", (width, height), (90, 120, 160))
    draw = ImageDraw.Draw(image)
    s = width / 1000
    draw.ellipse([300 * s, 200 * s, 600 * s, 500 * s], fill=(230, 200, 40))
    draw.rectangle([80 * s, 400 * s, 350 * s, 700 * s], fill=(30, 30, 30))
    draw.polygon([(700 * s, 650 * s), (950 * s, 650 * s), (820 * s, 120 * s)], fill=(200, 60, 60))
    return image


def _circle(width: int, height: int, radius: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (20, 20, 20))
    cx, cy = width // 2, height // 2
    ImageDraw.Draw(image).ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=(235, 235, 235))
    return image


def _bright(image: Image.Image) -> np.ndarray:
    return pixels(image.convert("L")) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _roundness(mask: np.ndarray) -> float:
    """Width over height of the bounding box of the bright pixels."""
    rows, cols = np.nonzero(mask)
    return float((cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1))


# One step without CFG: these tests are about the maps and the size, not the denoiser.
_FAST = {"num_inference_steps": 1, "guidance_scale": 1.0}


@pytest.mark.parametrize("condition", ["canny", "depth"])
def test_large_and_small_uploads_give_the_same_map(pipe: ReimaginePipeline, condition: str) -> None:
    large = _scene(4000, 3000)
    small = large.resize((1000, 750), Image.Resampling.LANCZOS)
    inputs = make_inputs(**_FAST)
    maps = [
        generate(pipe, inputs, Controls(**{condition: upload}), RecordingHooks()).maps[condition]
        for upload in (large, small)
    ]
    assert maps[0].size == maps[1].size == (1152, 896)  # 4:3, the nearest of the nine sizes
    assert _iou(_bright(maps[0]), _bright(maps[1])) >= 0.9
    if condition == "canny":
        for canny in maps:
            array = pixels(canny)
            assert canny.mode == "RGB" and set(np.unique(array)) == {0, 255}
            assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_without_aspect_ratio_the_structure_image_picks_the_size(pipe: ReimaginePipeline) -> None:
    hooks = RecordingHooks()
    generated = generate(pipe, make_inputs(**_FAST), Controls(canny=_circle(1600, 900, 300)), hooks)
    assert generated.image.size == generated.maps["canny"].size == (1344, 768)
    assert abs(_roundness(_bright(generated.maps["canny"])) - 1) <= 0.02
    assert any("aspect_ratio not set: 16:9 (1344x768)" in message for message, _ in hooks.logs)


@pytest.mark.parametrize("preprocess", [True, False])
def test_a_set_aspect_ratio_crops_the_structure_image_instead_of_stretching(
    pipe: ReimaginePipeline, preprocess: bool
) -> None:
    inputs = make_inputs(aspect_ratio="1:1", canny_preprocess=preprocess, **_FAST)
    generated = generate(pipe, inputs, Controls(canny=_circle(1600, 900, 300)), RecordingHooks())
    assert generated.image.size == generated.maps["canny"].size == (1024, 1024)
    assert abs(_roundness(_bright(generated.maps["canny"])) - 1) <= 0.02


def test_the_first_taking_part_structure_image_picks_the_size(pipe: ReimaginePipeline) -> None:
    portrait, landscape = _circle(900, 1600, 200), _circle(1600, 900, 200)
    both = generate(pipe, make_inputs(**_FAST), Controls(depth=portrait, canny=landscape), RecordingHooks())
    assert both.image.size == both.maps["depth"].size == both.maps["canny"].size == (768, 1344)
    assert abs(_roundness(_bright(both.maps["canny"])) - 1) <= 0.02
    no_depth = make_inputs(depth_scale=0.0, **_FAST)
    assert generate(pipe, no_depth, Controls(depth=portrait, canny=landscape), RecordingHooks()).image.size == (
        1344,
        768,
    )
