"""The fast path on the tiny pipeline (CPU): each bf16-tolerant step keeps the output, the lossy ones switch off."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from reimagine.config import Settings
from reimagine.generation import Controls, NullHooks
from reimagine.schemas import ReimagineInput
from reimagine.worker import fast
from reimagine.worker.pipeline import ReimaginePipeline, generate, load_pipeline, set_step_cache

NEGATIVE = "Logo,Watermark,Ugly"


def _pipe(**settings: Any) -> ReimaginePipeline:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    pipe = load_pipeline(Settings(model="tiny", **settings))
    for net in fast.denoisers(pipe)[1:]:  # the tiny ControlNet's outputs are zero-initialised: give them weights
        torch.manual_seed(3)
        for linear in [*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder]:
            torch.nn.init.normal_(linear.weight, std=0.2)
    return pipe


def _inputs_for(tokens: int, width: int = 64, height: int = 64) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    n = (height // 16) * (width // 16)
    return dict(
        hidden_states=torch.randn(2, n, 16, generator=generator),
        encoder_hidden_states=torch.randn(2, tokens, 32, generator=generator),
        timestep=torch.full((2,), 500.0),
        img_ids=torch.zeros(n, 3),
        txt_ids=torch.zeros(tokens, 3),
    )


def _image(pipe: ReimaginePipeline, controls: Controls = Controls(), **fields: Any) -> torch.Tensor:  # noqa: B008
    steps = fields.pop("num_inference_steps", 3)  # below the API minimum: tiny runs only
    inputs = ReimagineInput.model_validate(
        {"prompt": "a red cat", "negative_prompt": NEGATIVE, "prompt_enhancer": False, **fields}
    )
    inputs = inputs.model_copy(update={"num_inference_steps": steps})
    out = generate(pipe, inputs, controls, NullHooks(), _size=(64, 64))
    return torch.tensor(list(out.image.getdata()), dtype=torch.float32)


def _controls() -> Controls:
    torch.manual_seed(0)
    depth = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    canny = Image.fromarray(((torch.rand(64, 64, 3) > 0.9) * 255).byte().numpy())
    return Controls(depth=depth, canny=canny)


def test_fuse_qkv_keeps_the_transformer_output() -> None:
    pipe = _pipe()
    transformer = fast.denoisers(pipe)[0]
    inputs = _inputs_for(128)
    with torch.no_grad():
        before = transformer(**inputs, return_dict=False)[0]
        assert fast.fuse_qkv(transformer) == 2  # one double, one single block
        after = transformer(**inputs, return_dict=False)[0]
    assert not hasattr(transformer.transformer_blocks[0].attn, "to_q")
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_negative_prompt_cache_returns_identical_embeddings() -> None:
    pipe = _pipe()
    bria = pipe.bria
    kwargs: dict[str, Any] = dict(negative_prompt=NEGATIVE, device=torch.device("cpu"), max_sequence_length=128)
    expected = bria.encode_prompt(prompt="a red cat", **kwargs)
    cache = fast.NegativePromptCache(bria)
    first = cache(prompt="a red cat", **kwargs)
    second = cache(prompt="a red cat", **kwargs)
    for got in (first, second):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    assert cache.hits == 1
    empty = cache(prompt="a red cat", **{**kwargs, "negative_prompt": ""})
    assert torch.count_nonzero(empty[1]) == 0  # "" still means zero embeddings (Bria), not a cached encoding


def test_apply_fast_path_on_cpu_matches_eager_and_skips_fp8_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    pipe = _pipe(fp8=True)
    eager_t2i, eager_control = _image(pipe), _image(pipe, _controls())
    with caplog.at_level(logging.WARNING, logger="reimagine.worker.fast"):
        fast.apply_fast_path(pipe, pipe.settings, options=fast.FastOptions(bf16=False, compile="none"))
    assert "fp8 requested but unsupported" in caplog.text
    assert isinstance(pipe.bria.encode_prompt, fast.NegativePromptCache)
    torch.testing.assert_close(_image(pipe), eager_t2i, rtol=0, atol=1.0)  # 8-bit pixels: at most one level
    torch.testing.assert_close(_image(pipe, _controls()), eager_control, rtol=0, atol=1.0)
    assert pipe.bria.encode_prompt.hits >= 1
    assert set(fast.warm_buckets(pipe, [(64, 64), (96, 64)])) == {"64x64", "96x64"}


def test_fast_path_keeps_the_pipelines_own_step_cache() -> None:
    """`load_pipeline` may enable First-Block-Cache itself: the fast path takes it off around compilation, puts it
    back, and `warm_buckets` runs the transformer inside a cache context."""
    pipe = _pipe(step_cache=0.05)
    transformer = fast.denoisers(pipe)[0]
    assert transformer.is_cache_enabled
    fast.apply_fast_path(pipe, pipe.settings, options=fast.FastOptions(bf16=False, compile="none"))
    assert transformer.is_cache_enabled
    fast.warm_buckets(pipe, [(64, 64)])
    assert _image(pipe).shape == _image(pipe, _controls()).shape


def test_apply_fast_path_twice_compiles_once_and_caches_under_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # restored after the test
        monkeypatch.setenv(name, os.environ.get(name, str(tmp_path / "unused")))
    pipe = _pipe(data_dir=tmp_path)
    options = fast.FastOptions(bf16=False, compile="regional")
    fast.apply_fast_path(pipe, pipe.settings, options=options)
    block = fast.denoisers(pipe)[0].transformer_blocks[0]
    compiled = block.forward
    fast.apply_fast_path(pipe, pipe.settings, options=options)  # compilation is lazy: nothing runs here
    assert block.forward is compiled
    assert fast.configure_compile_cache(tmp_path) == (tmp_path / "compile-cache").resolve()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(str(tmp_path.resolve()))


def test_set_step_cache_is_the_one_step_cache_and_turns_off_cleanly() -> None:
    pipe = _pipe()
    transformer = fast.denoisers(pipe)[0]
    reference = _image(pipe, num_inference_steps=4)
    set_step_cache(pipe, 0.3)
    assert transformer.is_cache_enabled and pipe.step_cache == 0.3
    assert _image(pipe, num_inference_steps=4).shape == reference.shape
    set_step_cache(pipe, 0.0)
    assert not transformer.is_cache_enabled and pipe.step_cache == 0.0
    assert torch.equal(_image(pipe, num_inference_steps=4), reference)


def test_an_attention_backend_whose_probe_call_fails_falls_back_to_sdpa_saying_why() -> None:
    pipe = _pipe()
    models = fast.denoisers(pipe)
    # cuDNN attention cannot run on a CPU: the probe call fails, as it would for an unsupported head dim on a GPU
    assert fast.probe_attention("_native_cudnn", torch.device("cpu"), heads=2, head_dim=8) is not None
    chosen = fast.set_attention_backend(models, "_native_cudnn")
    assert chosen.startswith("native (fallback: _native_cudnn")
    assert fast.probe_attention("native", torch.device("cpu"), heads=2, head_dim=8) is None


def test_library_changes_to_inductor_settings_are_undone() -> None:
    import torch._inductor.config as inductor_config

    before = inductor_config.coordinate_descent_tuning
    with fast._inductor_config_kept():
        inductor_config.coordinate_descent_tuning = not before  # what importing torchao does
    assert inductor_config.coordinate_descent_tuning == before


def test_deterministic_pins_the_attention_backend_and_stops_autotuning() -> None:
    options = fast.serving_options(Settings(model="tiny", deterministic=True))
    assert (options.attention, options.cudnn_benchmark) == (fast.DETERMINISTIC_ATTENTION, False)
    assert fast.serving_options(Settings(model="tiny")) == fast.FastOptions()


def test_configure_determinism_sets_every_switch() -> None:
    # In a child process: the switches are process-wide.
    code = (
        "import os, torch, torch._inductor.config as inductor\n"
        "from reimagine.worker import fast\n"
        "fast.configure_determinism()\n"
        "print(os.environ['CUBLAS_WORKSPACE_CONFIG'], torch.backends.cudnn.benchmark,"
        " torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled(), inductor.deterministic,"
        " torch.utils.deterministic.fill_uninitialized_memory)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "CUBLAS_WORKSPACE_CONFIG"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [":4096:8", "False", "True", "True", "True", "False"]


def test_regional_compile_makes_one_graph_per_block_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Single blocks return contiguous outputs, so the next block's graph is not specialised again for strides."""
    from torch._dynamo.utils import counters

    from reimagine.worker.controlnet_bria import BriaControlledTransformer2DModel
    from reimagine.worker.random_full import TINY, transformer_kwargs

    arch = {**TINY, "transformer": {**TINY["transformer"], "num_single_layers": 3}}
    torch.manual_seed(0)
    model = BriaControlledTransformer2DModel(**transformer_kwargs(arch)).eval()
    inputs = _inputs_for(128)
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))  # no inductor on CPU
    torch._dynamo.reset()
    counters.clear()
    try:
        fast.compile_model(model, how="regional", mode=None)
        with torch.no_grad():
            got = model(**inputs, return_dict=False)[0]
        assert counters["stats"]["unique_graphs"] == 2  # one double-block graph, one single-block graph
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, expected)


def test_inductor_settings_go_on_top_of_the_mode() -> None:
    assert fast.compile_kwargs(None) == {"mode": None, "fullgraph": False, "dynamic": False}
    kwargs = fast.compile_kwargs("max-autotune-no-cudagraphs", [("coordinate_descent_tuning", False)])
    assert kwargs["options"] == {"max_autotune": True, "coordinate_descent_tuning": False}
    assert "mode" not in kwargs  # torch.compile takes one or the other


def test_tensor_scales_equal_float_scales() -> None:
    """`scales_as_tensors` (what CUDA graphs need: no new graph per scale value) keeps the fp32 result exactly."""
    pipe = _pipe()
    inputs = _inputs_for(128)
    hidden = inputs.pop("hidden_states")
    conds, modes = [hidden * 0.5, hidden * 0.25], [torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)]
    with torch.no_grad():
        for conditions in (1, 2):
            floats = pipe.controlnet(hidden, conds[:conditions], modes[:conditions], [0.7, 0.3][:conditions], **inputs)
            pipe.controlnet.scales_as_tensors = True
            tensors = pipe.controlnet(hidden, conds[:conditions], modes[:conditions], [0.7, 0.3][:conditions], **inputs)
            pipe.controlnet.scales_as_tensors = False
            for a, b in zip(floats, tensors, strict=True):
                assert a is not None and b is not None
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_replay_the_plain_forward() -> None:
    pipe = load_pipeline(Settings(model="tiny", device="cuda", fast=False))
    for net in fast.denoisers(pipe)[1:]:
        for linear in [*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder]:
            torch.nn.init.normal_(linear.weight, std=0.2)
    plain = _image(pipe, _controls())
    fast.enable_cuda_graphs(pipe)
    try:
        graphed = [_image(pipe, _controls()), _image(pipe, _controls(), seed=9), _image(pipe, _controls())]
    finally:
        fast.disable_cuda_graphs(pipe)
    torch.testing.assert_close(graphed[0], plain, rtol=0, atol=1.0)
    torch.testing.assert_close(graphed[2], plain, rtol=0, atol=1.0)  # the replay took the new inputs each time
    assert not torch.equal(graphed[1], plain)
