"""`generate` on the tiny preset: faithfulness to BriaPipeline, conditions, sizes, prompt rules, hooks, save/load."""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import BriaPipeline, BriaTransformer2DModel

from reimagine.config import Settings
from reimagine.errors import InputError, JobCancelled, ModelMissing, OutOfMemory
from reimagine.generation import Controls, Generate, Generated, batch_key
from reimagine.schemas import SIZES
from reimagine.worker.pipeline import ReimaginePipeline, generate, generate_batch, load_pipeline, warmup
from reimagine.worker.preprocess import fit_to_size
from tests.pipeline.helpers import RecordingHooks, make_inputs, photo, pixels

SMALL = (128, 96)  # (width, height) for tests that are not about the size


def _png(generated: Generated) -> bytes:
    buffer = io.BytesIO()
    generated.image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_partial_generate_is_the_generate_seam(pipe: ReimaginePipeline) -> None:
    bound: Generate = functools.partial(generate, pipe)
    generated = bound(make_inputs(num_inference_steps=1), Controls(), RecordingHooks())
    assert generated.image.mode == "RGB"


@pytest.mark.parametrize("negative_prompt", ["Logo,Watermark,Ugly", ""])
def test_without_conditions_equals_diffusers_bria_pipeline(pipe: ReimaginePipeline, negative_prompt: str) -> None:
    inputs = make_inputs(num_inference_steps=3, seed=42, negative_prompt=negative_prompt)
    ours = generate(pipe, inputs, Controls(), RecordingHooks(), _size=(256, 192)).image

    stock_transformer = BriaTransformer2DModel(**pipe.bria.transformer.config).eval()
    stock_transformer.load_state_dict(pipe.bria.transformer.state_dict())
    for transformer in (pipe.bria.transformer, stock_transformer):
        reference = BriaPipeline(**dict(pipe.bria.components, transformer=transformer))
        reference.set_progress_bar_config(disable=True)
        expected = reference(
            prompt=inputs.prompt,
            negative_prompt=negative_prompt,
            width=256,
            height=192,
            num_inference_steps=3,
            guidance_scale=inputs.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(42),
        ).images[0]
        assert (pixels(ours) == pixels(expected)).all()


def test_scale_zero_is_no_condition_and_costs_no_map(pipe: ReimaginePipeline) -> None:
    inputs = make_inputs()
    plain = generate(pipe, inputs, Controls(), RecordingHooks(), _size=SMALL)
    zero = make_inputs(depth_scale=0.0, canny_scale=0.0)
    hooks = RecordingHooks()
    skipped = generate(pipe, zero, Controls(depth=photo(), canny=photo()), hooks, _size=SMALL)
    assert _png(skipped) == _png(plain)
    assert skipped.maps == {}


@pytest.mark.parametrize("condition", ["depth", "canny"])
def test_each_condition_changes_the_image(pipe: ReimaginePipeline, condition: str) -> None:
    inputs = make_inputs()
    plain = generate(pipe, inputs, Controls(), RecordingHooks(), _size=SMALL)
    controlled = generate(pipe, inputs, Controls(**{condition: photo()}), RecordingHooks(), _size=SMALL)
    assert set(controlled.maps) == {condition}
    assert not (pixels(controlled.image) == pixels(plain.image)).all()


def test_both_conditions_differ_from_each_alone(pipe: ReimaginePipeline) -> None:
    inputs = make_inputs()
    both = generate(pipe, inputs, Controls(depth=photo(), canny=photo(seed=1)), RecordingHooks(), _size=SMALL)
    depth = generate(pipe, inputs, Controls(depth=photo()), RecordingHooks(), _size=SMALL)
    assert set(both.maps) == {"depth", "canny"}
    assert not (pixels(both.image) == pixels(depth.image)).all()


def test_preprocess_derives_maps_or_uses_the_image(pipe: ReimaginePipeline) -> None:
    image = photo()
    derived = generate(pipe, make_inputs(), Controls(depth=image, canny=image), RecordingHooks(), _size=SMALL)
    canny = pixels(derived.maps["canny"])
    assert derived.maps["canny"].size == SMALL and set(np.unique(canny)) <= {0, 255}
    depth = pixels(derived.maps["depth"])
    assert derived.maps["depth"].size == SMALL and depth.min() == 0 and depth.max() == 255

    as_is = make_inputs(depth_preprocess=False, canny_preprocess=False)
    given = generate(pipe, as_is, Controls(depth=image, canny=image), RecordingHooks(), _size=SMALL)
    fitted = pixels(fit_to_size(image, SMALL))  # a given map is only fitted to the output size
    assert (pixels(given.maps["depth"]) == fitted).all()
    assert (pixels(given.maps["canny"]) == fitted).all()
    assert not (pixels(given.image) == pixels(derived.image)).all()


def test_each_aspect_ratio_yields_its_size(pipe: ReimaginePipeline) -> None:
    for aspect_ratio, size in SIZES.items():
        inputs = make_inputs(aspect_ratio=aspect_ratio.value, num_inference_steps=1, guidance_scale=1.0)
        assert generate(pipe, inputs, Controls(), RecordingHooks()).image.size == size


def test_long_prompt_is_truncated_when_allowed(pipe: ReimaginePipeline) -> None:
    long_prompt = "a " * 200  # 201 tokens with </s> in the tiny vocabulary
    hooks = RecordingHooks()
    generated = generate(pipe, make_inputs(prompt=long_prompt), Controls(), hooks, _size=SMALL)
    tokenizer = pipe.bria.tokenizer.backend_tokenizer
    assert len(tokenizer.encode(generated.prompt).ids) == 128
    assert any("truncated" in message for message, _ in hooks.logs)
    # Same image as the prompt cut by hand: the encoder sees the first 127 tokens and </s>.
    cut = generate(pipe, make_inputs(prompt="a " * 127), Controls(), RecordingHooks(), _size=SMALL)
    assert _png(cut) == _png(generated)


def test_long_prompt_is_an_input_error_when_truncation_is_off(pipe: ReimaginePipeline) -> None:
    hooks = RecordingHooks()
    with pytest.raises(InputError) as caught:
        generate(pipe, make_inputs(prompt="a " * 200, truncate_prompt=False), Controls(), hooks, _size=SMALL)
    assert caught.value.field == "prompt"
    assert "201 tokens" in caught.value.message and "128" in caught.value.message
    assert hooks.steps == []


def test_enhancer_off_keeps_the_prompt_and_says_so(pipe: ReimaginePipeline) -> None:
    hooks = RecordingHooks()
    generated = generate(pipe, make_inputs(prompt_enhancer=True), Controls(), hooks, _size=SMALL)
    assert generated.prompt == "a red cat on the sofa"
    assert any("prompt_enhancer" in message and "unchanged" in message for message, _ in hooks.logs)


class _Expanding:
    def enhance(self, prompt: str, seed: int) -> str:
        return prompt + " with" * 150


@pytest.mark.parametrize("truncate_prompt", [False, True])
def test_an_enhanced_prompt_is_cut_to_128_tokens_even_when_truncation_is_off(
    pipe: ReimaginePipeline, truncate_prompt: bool
) -> None:
    # truncate_prompt=false protects the user's own prompt; the enhancer's lengthening is ours to cut.
    enhanced = dataclasses.replace(pipe, enhancer=_Expanding())
    inputs = make_inputs(prompt="a cat", prompt_enhancer=True, truncate_prompt=truncate_prompt)
    hooks = RecordingHooks()
    generated = generate(enhanced, inputs, Controls(), hooks, _size=SMALL)
    tokenizer = pipe.bria.tokenizer.backend_tokenizer
    assert generated.prompt.startswith("a cat with with")
    assert len(tokenizer.encode(generated.prompt).ids) == 128
    assert any(
        level == "WARN" and "enhanced prompt" in message and "truncated to 128" in message
        for message, level in hooks.logs
    )
    # The user's own prompt over 128 tokens is still refused with truncation off, before any enhancing.
    with pytest.raises(InputError, match="tokens, max 128"):
        generate(
            enhanced, inputs.model_copy(update={"prompt": "a " * 200, "truncate_prompt": False}), Controls(), hooks
        )


def test_same_inputs_and_seed_give_the_same_bytes(pipe: ReimaginePipeline) -> None:
    inputs = make_inputs(seed=7)
    controls = Controls(depth=photo(), canny=photo(seed=3))
    first = generate(pipe, inputs, controls, RecordingHooks(), _size=SMALL)
    torch.manual_seed(12345)  # the global RNG must not matter (Bria's control-latent sampling used it)
    torch.randn(10)
    second = generate(pipe, inputs, controls, RecordingHooks(), _size=SMALL)
    assert _png(first) == _png(second)
    other_seed = generate(pipe, make_inputs(seed=8), controls, RecordingHooks(), _size=SMALL)
    assert _png(other_seed) != _png(first)


@pytest.mark.parametrize("cancel_at", [1, 2, 3])
def test_cancel_stops_within_one_step(pipe: ReimaginePipeline, cancel_at: int) -> None:
    hooks = RecordingHooks(cancel_at=cancel_at)
    with pytest.raises(JobCancelled):
        generate(pipe, make_inputs(num_inference_steps=4), Controls(canny=photo()), hooks, _size=SMALL)
    # A check before every step: the cancel seen at check n stops the run after n - 1 steps. A step's progress is
    # published once the next step is queued, so the last step run before the cancel is never reported.
    assert hooks.checks == cancel_at
    assert len(hooks.steps) == max(cancel_at - 2, 0)


def _uint8_results(run: Callable[[], object]) -> int:
    """How many conversions to uint8 `run` makes: only the latent preview does one (the final image is converted
    by numpy), so this counts the previews computed on the device, each followed by its copy to the host."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.dtype == torch.uint8:
                _Count.count += 1
            return out

    with _Count():
        run()
    return _Count.count


def test_no_preview_is_computed_or_copied_without_a_listener(pipe: ReimaginePipeline) -> None:
    inputs = make_inputs(num_inference_steps=3)
    silent = RecordingHooks(previews=False)
    assert _uint8_results(lambda: generate(pipe, inputs, Controls(), silent, _size=SMALL)) == 0
    assert [(step, preview) for step, _, preview in silent.steps] == [(1, None), (2, None), (3, None)]
    watched = RecordingHooks()
    assert _uint8_results(lambda: generate(pipe, inputs, Controls(), watched, _size=SMALL)) == 3
    assert all(preview is not None for _, _, preview in watched.steps)


def test_progress_hooks_get_every_step_with_a_small_preview(pipe: ReimaginePipeline) -> None:
    hooks = RecordingHooks()
    generated = generate(pipe, make_inputs(num_inference_steps=3), Controls(), hooks, _size=(512, 256))
    assert [(step, total) for step, total, _ in hooks.steps] == [(1, 3), (2, 3), (3, 3)]
    for _, _, preview in hooks.steps:
        assert preview is not None and preview.mode == "RGB" and max(preview.size) <= 128
    assert any(level == "WARN" and "noise" in message for message, level in hooks.logs)
    assert set(generated.timings) == {"preprocess", "encode", "denoise", "decode"}


def test_out_of_memory_becomes_our_error(pipe: ReimaginePipeline) -> None:
    class _Exhausted(RecordingHooks):
        def on_step(self, step: int, total: int, preview: object) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(OutOfMemory):
        generate(pipe, make_inputs(), Controls(), _Exhausted(), _size=SMALL)


def test_a_library_out_of_memory_error_is_ours_too(pipe: ReimaginePipeline) -> None:
    class _Exhausted(RecordingHooks):
        def on_step(self, step: int, total: int, preview: object) -> None:
            raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(OutOfMemory):
        generate(pipe, make_inputs(), Controls(), _Exhausted(), _size=SMALL)


def test_test_oom_seed_fails_that_request_only(pipe: ReimaginePipeline) -> None:
    testing = dataclasses.replace(pipe, settings=Settings(model="tiny", test_oom_seed=7))
    with pytest.raises(OutOfMemory):
        generate(testing, make_inputs(seed=7), Controls(), RecordingHooks(), _size=SMALL)
    assert generate(testing, make_inputs(seed=8), Controls(), RecordingHooks(), _size=SMALL).image.size == SMALL


def test_save_and_load_round_trip_gives_identical_images(pipe: ReimaginePipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "tiny")
    reloaded = load_pipeline(Settings(model=str(tmp_path / "tiny"), offline=True))
    assert reloaded.is_tiny
    inputs = make_inputs(seed=3)
    controls = Controls(depth=photo(), canny=photo(seed=2))
    original = generate(pipe, inputs, controls, RecordingHooks(), _size=SMALL)
    again = generate(reloaded, inputs, controls, RecordingHooks(), _size=SMALL)
    assert _png(again) == _png(original)
    assert (pixels(again.maps["depth"]) == pixels(original.maps["depth"])).all()
    # The folder is also a plain diffusers BriaPipeline.
    assert type(BriaPipeline.from_pretrained(tmp_path / "tiny").transformer) is BriaTransformer2DModel


# diffusers 0.42.1 passes huggingface_hub a deprecated argument on every Hub lookup.
@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated:UserWarning")
def test_missing_model_is_one_clear_error() -> None:
    with pytest.raises(ModelMissing, match="models pull"):
        load_pipeline(Settings(model="briaai/BRIA-3.2", offline=True))


def test_warmup_leaves_the_depth_model_unloaded() -> None:
    fresh = load_pipeline(Settings(model="tiny"))
    warmup(fresh)
    assert fresh._depth is None


def _close(a: Generated, b: Generated) -> bool:
    """Equal within float tolerance: batched matrix products may round differently, so allow 1 in 255."""
    return int(np.abs(pixels(a.image).astype(int) - pixels(b.image).astype(int)).max()) <= 1


def test_a_batched_pair_matches_two_single_runs(pipe: ReimaginePipeline) -> None:
    given = {"depth_preprocess": False, "canny_preprocess": False, "aspect_ratio": "4:3", "num_inference_steps": 3}
    first = make_inputs(seed=1, depth_scale=0.5, canny_scale=0.8, **given)
    second = make_inputs(seed=2, prompt="a blue dog", depth_scale=0.3, canny_scale=0.6, **given)
    controls = [Controls(depth=photo(seed=1), canny=photo(seed=2)), Controls(depth=photo(seed=3), canny=photo(seed=4))]
    assert batch_key(first, controls[0]) == batch_key(second, controls[1])
    singles = [generate(pipe, inputs, c, RecordingHooks()) for inputs, c in zip((first, second), controls, strict=True)]
    hooks = [RecordingHooks(), RecordingHooks()]
    batched = generate_batch(pipe, [(first, controls[0], hooks[0]), (second, controls[1], hooks[1])])
    for one, alone in zip(batched, singles, strict=True):
        assert isinstance(one, Generated) and _close(one, alone)
    assert not _close(singles[0], singles[1])
    assert [[step for step, _, _ in h.steps] for h in hooks] == [[1, 2, 3], [1, 2, 3]]


def test_a_cancelled_request_leaves_the_batch_and_the_other_finishes(pipe: ReimaginePipeline) -> None:
    first, second = make_inputs(seed=1, num_inference_steps=3), make_inputs(seed=2, num_inference_steps=3)
    alone = generate(pipe, second, Controls(), RecordingHooks(), _size=None)
    cancelling = RecordingHooks(cancel_at=2)
    results = generate_batch(pipe, [(first, Controls(), cancelling), (second, Controls(), RecordingHooks())])
    assert isinstance(results[0], JobCancelled)
    assert isinstance(results[1], Generated) and _close(results[1], alone)


def test_requests_of_other_sizes_or_steps_do_not_share_a_batch() -> None:
    plain = make_inputs()
    assert batch_key(plain, Controls()) != batch_key(make_inputs(aspect_ratio="16:9"), Controls())
    assert batch_key(plain, Controls()) != batch_key(make_inputs(num_inference_steps=3), Controls())
    assert batch_key(plain, Controls()) != batch_key(plain, Controls(canny=photo()))
    assert batch_key(plain, Controls(canny=photo())) == batch_key(make_inputs(seed=9), Controls(canny=photo(seed=1)))
    assert batch_key(plain, Controls()) == batch_key(make_inputs(canny_scale=0.0), Controls(canny=photo()))
