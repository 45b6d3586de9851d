"""The wire schema: fal's fields, defaults and ranges; the aspect-ratio table; job states."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from pydantic import ValidationError

from reimagine.generation import Controls, aspect_ratio_for
from reimagine.jobs import FAL_STATUS, TERMINAL, JobStatus, Priority, can_transition
from reimagine.schemas import (
    DEFAULT_NEGATIVE_PROMPT,
    SIZES,
    AspectRatio,
    ReimagineInput,
    StrictReimagineInput,
    nearest_aspect_ratio,
    size_for,
)


def test_defaults_match_fal() -> None:
    inputs = ReimagineInput(prompt="a house")
    assert inputs.num_inference_steps == 30
    assert inputs.seed == 5555
    assert inputs.aspect_ratio == "1:1"
    assert inputs.guidance_scale == 5.0
    assert inputs.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert inputs.truncate_prompt and inputs.prompt_enhancer and not inputs.sync_mode
    assert inputs.depth_image_url == inputs.canny_image_url == ""
    assert inputs.depth_scale == inputs.canny_scale == 0.5
    assert inputs.depth_preprocess and inputs.canny_preprocess


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_inference_steps", 19),
        ("num_inference_steps", 51),
        ("seed", -1),
        ("seed", 2_147_483_648),
        ("guidance_scale", 20.5),
        ("depth_scale", 1.01),
        ("canny_scale", -0.1),
        ("aspect_ratio", "7:3"),
        ("prompt", "   "),
        ("canny_image_url", "ftp://x/y.png"),
    ],
)
def test_out_of_range_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        ReimagineInput(**{"prompt": "x", field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_unknown_fields_ignored_unless_strict() -> None:
    assert not hasattr(ReimagineInput(prompt="x", extra=1), "extra")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        StrictReimagineInput(prompt="x", extra=1)  # type: ignore[call-arg]


def test_sizes_are_multiples_of_16_and_about_one_megapixel() -> None:
    assert set(SIZES) == set(AspectRatio)
    for ratio, (width, height) in SIZES.items():
        assert width % 16 == 0 and height % 16 == 0
        assert 0.9e6 < width * height < 1.1e6
        w, h = (int(part) for part in ratio.value.split(":"))
        assert abs(width / height - w / h) < 0.08
    assert size_for("16:9") == (1344, 768)


def test_nearest_aspect_ratio_is_by_the_sizes_ratio() -> None:
    assert nearest_aspect_ratio(4000, 3000) == nearest_aspect_ratio(1000, 750) == "4:3"
    assert nearest_aspect_ratio(1600, 900) == "16:9"
    assert nearest_aspect_ratio(900, 1600) == "9:16"
    assert nearest_aspect_ratio(720, 720) == "1:1"
    assert nearest_aspect_ratio(1250, 1000) == "5:4"
    assert nearest_aspect_ratio(3000, 1000) == "16:9"  # wider than any: the widest


def test_a_structure_image_picks_the_ratio_only_when_aspect_ratio_is_left_out() -> None:
    landscape = Image.new("RGB", (1600, 900))
    assert aspect_ratio_for(ReimagineInput(prompt="x"), Controls()) == "1:1"
    assert aspect_ratio_for(ReimagineInput(prompt="x"), Controls(canny=landscape)) == "16:9"
    assert aspect_ratio_for(ReimagineInput(prompt="x"), Controls(depth=landscape)) == "16:9"
    assert aspect_ratio_for(ReimagineInput(prompt="x", aspect_ratio="1:1"), Controls(canny=landscape)) == "1:1"
    assert aspect_ratio_for(ReimagineInput(prompt="x", canny_scale=0), Controls(canny=landscape)) == "1:1"
    # The input as the API stores it for the worker (only the fields sent) keeps the difference.
    for body, expected in (({"prompt": "x"}, "16:9"), ({"prompt": "x", "aspect_ratio": "1:1"}, "1:1")):
        stored = json.dumps(ReimagineInput.model_validate(body).model_dump(mode="json", exclude_unset=True))
        worker_side = ReimagineInput.model_validate(json.loads(stored))
        assert aspect_ratio_for(worker_side, Controls(canny=landscape)) == expected
    assert "never stretched" in (ReimagineInput.model_fields["aspect_ratio"].description or "")


def test_job_transitions_are_closed() -> None:
    assert can_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_transition(JobStatus.RUNNING, JobStatus.QUEUED)  # a lost lease re-queues
    for terminal in TERMINAL:
        assert not any(can_transition(terminal, other) for other in JobStatus)
        assert FAL_STATUS[terminal] == "COMPLETED"
    assert Priority.from_header("low") < Priority.from_header("normal") == Priority.from_header("bogus")
