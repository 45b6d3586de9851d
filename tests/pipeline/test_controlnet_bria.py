"""The ported ControlNet-Union against Bria's module layout, and the two diffusers 0.42.1 workarounds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import BriaTransformer2DModel, FirstBlockCacheConfig
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.models.transformers.transformer_bria import BriaSingleTransformerBlock, BriaTransformerBlock

from reimagine.worker.controlnet_bria import (
    BriaControlledTransformer2DModel,
    BriaControlNetModel,
    BriaMultiControlNetModel,
    register_cache_blocks,
)
from reimagine.worker.pipeline import ReimaginePipeline, generate
from reimagine.worker.tiny import build_tiny_components, build_tiny_controlnet
from tests.pipeline.helpers import RecordingHooks, make_inputs, photo, pixels

FIXTURE = Path(__file__).parent / "fixtures" / "controlnet_bria_keys.txt"
# The fixed small config the fixture was derived with (a re-creation of Bria's __init__ on diffusers' Flux blocks).
FIXTURE_CONFIG = {
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": None,
    "axes_dims_rope": [0, 4, 4],
    "num_mode": 6,
}


def _inputs(tokens: int = 64, text: int = 8, batch: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, tokens, 16, generator=generator),
        "encoder_hidden_states": torch.randn(batch, text, 32, generator=generator),
        "timestep": torch.full((batch,), 500.0),
        "img_ids": torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(8.0), torch.arange(8.0), indexing="ij"))
        .reshape(3, -1)
        .T,
        "txt_ids": torch.zeros(text, 3),
    }


def test_controlnet_state_dict_matches_bria_release_layout() -> None:
    expected = [line for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    model = BriaControlNetModel(**FIXTURE_CONFIG)
    ours = [f"{key} {tuple(value.shape)}" for key, value in sorted(model.state_dict().items())]
    assert ours == expected


def test_controlnet_output_layers_start_at_zero() -> None:
    model = BriaControlNetModel(**FIXTURE_CONFIG)
    for linear in [*model.controlnet_blocks, *model.controlnet_single_blocks, model.controlnet_x_embedder]:
        assert not linear.weight.any()


def test_controlnet_save_and_load_round_trip(tmp_path: Path) -> None:
    model = build_tiny_controlnet()
    model.save_pretrained(tmp_path)
    loaded = BriaControlNetModel.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_stock_transformer_crashes_on_single_block_residuals_ours_does_not() -> None:
    ours = build_tiny_components()["transformer"]
    stock = BriaTransformer2DModel(**ours.config).eval()
    stock.load_state_dict(ours.state_dict())
    controlnet = BriaMultiControlNetModel([build_tiny_controlnet()])
    kwargs = _inputs()
    cond = torch.randn_like(kwargs["hidden_states"])
    with torch.no_grad():
        block_samples, single_samples = controlnet(
            kwargs["hidden_states"],
            [cond],
            [torch.tensor([1])],
            [0.7],
            **{k: v for k, v in kwargs.items() if k != "hidden_states"},
        )
        assert single_samples is not None
        with pytest.raises(RuntimeError, match="must match the size"):
            stock(**kwargs, controlnet_block_samples=block_samples, controlnet_single_block_samples=single_samples)
        fixed = ours(**kwargs, controlnet_block_samples=block_samples, controlnet_single_block_samples=single_samples)
        plain = ours(**kwargs).sample
        # Without residuals ours is the stock forward, exactly.
        assert torch.equal(plain, stock(**kwargs).sample)
    assert fixed.sample.shape == plain.shape
    assert not torch.equal(fixed.sample, plain)


def test_union_conditions_sum_and_zero_scale_is_nothing() -> None:
    controlnet = build_tiny_controlnet()
    multi = BriaMultiControlNetModel([controlnet])
    kwargs = _inputs()
    hidden = kwargs.pop("hidden_states")
    depth, canny = torch.randn_like(hidden), torch.randn_like(hidden)
    modes = [torch.tensor([0]), torch.tensor([1])]
    with torch.no_grad():
        both, both_single = multi(hidden, [depth, canny], modes, [0.5, 0.25], **kwargs)
        alone, alone_single = controlnet(hidden, depth, modes[0][:, None], 0.5, **kwargs)
        other, other_single = controlnet(hidden, canny, modes[1][:, None], 0.25, **kwargs)
        zero, _ = controlnet(hidden, depth, modes[0][:, None], 0.0, **kwargs)
    assert both is not None and alone is not None and other is not None and zero is not None
    assert both_single is not None and alone_single is not None and other_single is not None
    torch.testing.assert_close(both[0], alone[0] + other[0])
    torch.testing.assert_close(both_single[0], alone_single[0] + other_single[0])
    assert not zero[0].any()


def test_stock_cache_registry_is_wrong_for_bria_blocks_and_ours_fixes_it() -> None:
    saved = (dict(TransformerBlockRegistry._registry), TransformerBlockRegistry._is_registered)
    try:
        TransformerBlockRegistry._registry, TransformerBlockRegistry._is_registered = {}, False
        assert TransformerBlockRegistry.get(BriaTransformerBlock).return_hidden_states_index == 0  # bug: it is 1
        with pytest.raises(ValueError, match="not registered"):
            TransformerBlockRegistry.get(BriaSingleTransformerBlock)
        register_cache_blocks()
        for block_class in (BriaTransformerBlock, BriaSingleTransformerBlock):
            metadata = TransformerBlockRegistry.get(block_class)
            assert (metadata.return_hidden_states_index, metadata.return_encoder_hidden_states_index) == (1, 0)
    finally:
        TransformerBlockRegistry._registry, TransformerBlockRegistry._is_registered = saved
    register_cache_blocks()


def test_first_block_cache_threshold_zero_reproduces_uncached(pipe: ReimaginePipeline) -> None:
    inputs = make_inputs(num_inference_steps=4)
    uncached = generate(pipe, inputs, _no_controls(), RecordingHooks(), _size=(128, 128)).image

    components = build_tiny_components()
    transformer = components["transformer"]
    transformer.load_state_dict(pipe.bria.transformer.state_dict())
    register_cache_blocks()
    cached_pipe = _with_transformer(pipe, transformer, step_cache=0.5)
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    cached = generate(cached_pipe, inputs, _no_controls(), RecordingHooks(), _size=(128, 128)).image
    assert (pixels(cached) == pixels(uncached)).all()

    transformer.disable_cache()
    transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))  # skips every step after the first
    skipping = generate(cached_pipe, inputs, _no_controls(), RecordingHooks(), _size=(128, 128)).image
    assert not (pixels(skipping) == pixels(uncached)).all()

    # With a condition the cache is bypassed: its skipped blocks would re-add stale ControlNet residuals.
    from reimagine.generation import Controls

    controls = Controls(canny=photo())
    hooks = RecordingHooks()
    controlled = generate(cached_pipe, inputs, controls, hooks, _size=(128, 128)).image
    expected = generate(pipe, inputs, controls, RecordingHooks(), _size=(128, 128)).image
    assert (pixels(controlled) == pixels(expected)).all()
    assert any("step_cache" in message for message, _ in hooks.logs)
    assert transformer.is_cache_enabled  # back on for the next text-to-image request


def _no_controls():  # type: ignore[no-untyped-def]
    from reimagine.generation import Controls

    return Controls()


def _with_transformer(pipe: ReimaginePipeline, transformer: BriaControlledTransformer2DModel, step_cache: float):  # type: ignore[no-untyped-def]
    """A shallow copy of the session pipeline with its own transformer (the session one stays uncached)."""
    import dataclasses

    from diffusers import BriaPipeline

    components = dict(pipe.bria.components, transformer=transformer)
    bria = BriaPipeline(**components)
    bria.set_progress_bar_config(disable=True)
    return dataclasses.replace(pipe, bria=bria, step_cache=step_cache)


def test_one_batched_forward_for_two_conditions_matches_one_forward_each() -> None:
    multi = BriaMultiControlNetModel([build_tiny_controlnet()])
    calls = []
    multi.nets[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    kwargs = _inputs(batch=2)
    hidden = kwargs.pop("hidden_states")
    depth, canny = torch.randn_like(hidden), torch.randn_like(hidden)
    modes = [torch.tensor([0, 0]), torch.tensor([1, 1])]
    # a float scale, and one scale per sample (two requests in one batch)
    for scales in ([0.5, 0.25], [torch.tensor([0.5, 0.9]), torch.tensor([0.25, 0.0])]):
        results = {}
        for batched in (True, False):
            multi.batch_conditions = batched
            calls.clear()
            with torch.no_grad():
                results[batched] = multi(hidden, [depth, canny], modes, scales, **kwargs)
            assert calls == ([4] if batched else [2, 2])  # one forward of 2 conditions x batch 2, or two of 2
        for one, each in zip(results[True], results[False], strict=True):
            assert one is not None and each is not None
            for a, b in zip(one, each, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
