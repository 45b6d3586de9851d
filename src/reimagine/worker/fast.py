"""The fast path: compiled, bf16-tolerant speed-ups (on by default on CUDA) and opt-in lossy ones, applied to `pipe`.

The default path changes no model math, but it is not bit-identical to eager: fused GEMMs, another attention kernel
and inductor's kernels round differently in bf16 (relative error 8.7e-3 of the final latents after 30 steps on an
H200, bria-model.md §7.2b), and autotuning (cuDNN, inductor) may pick other kernels after a restart, so "same seed,
same bytes" holds across restarts only with `Settings.deterministic` (`configure_determinism`).

In `apply_fast_path` order (each can be switched off in `FastOptions`, so `bench/speed.py` measures them
one by one): bf16 denoisers; fused QKV projections; the fastest attention backend importable (FA3, else cuDNN
SDPA); channels-last VAE with cuDNN autotuning; a negative-prompt embedding cache (most requests send fal's
default negative prompt); `torch.compile` of the repeated blocks with static shapes (one graph per block kind, token
count (4 over the 9 buckets) and batch: single blocks return contiguous outputs, so strides do not double them),
warmed by `warm_buckets` and kept in an on-disk inductor cache under the data dir, so a restart reuses the kernels.
Opt-in, measured by `bench/speed.py`: inductor settings (`FastOptions.inductor`), a compiled VAE decoder
(`compile_vae`), one dynamic-shape graph (`dynamic`). CUDA graphs: `FastOptions(compile_mode="max-autotune")`, off
by default: a 1024² CFG step is ~60 ms of large GEMMs, so launch overhead is small, and graphs cost memory per
bucket (measure: `bench/speed.py --compile-mode max-autotune`). Control images are VAE-encoded once per request
by `pipeline.generate` itself.

Lossy, off by default: FP8 dynamic activation + weight quantisation of the block linears (torchao, CUDA sm89+).
First-Block-Cache step skipping (`Settings.step_cache`) is the pipeline's own (`pipeline.set_step_cache`, off with
structure images): the fast path only keeps its hooks outside the compiled blocks.

Nothing here knows how `generate` runs the denoise loop: it finds the transformer and the ControlNet(s) as the
modules of `pipe` that have `transformer_blocks` and `single_transformer_blocks`, and only wraps
`pipe.encode_prompt` and hooks module forwards. Bench: `python bench/speed.py` (bria-model.md §7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import types
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reimagine.config import Settings
from reimagine.schemas import SIZES

logger = logging.getLogger(__name__)

TEXT_TOKENS = 128  # Bria always zero-pads T5 embeddings to 128 tokens (bria-model.md §1.3)


@dataclass(frozen=True)
class FastOptions:
    """Which steps of the compiled, bf16-tolerant path `apply_fast_path` takes; the defaults are the serving
    configuration."""

    bf16: bool = True
    fuse_qkv: bool = True
    attention: str = "auto"  # "auto" | a diffusers AttentionBackendName value ("native", "_native_cudnn", ...)
    compile: str = "regional"  # "regional" (per block: fast cold start, works with the step cache) | "full" | "none"
    compile_mode: str | None = None  # None (inductor default, cuBLAS GEMMs) | "max-autotune" (+CUDA graphs) | ...
    # Inductor settings on top of the mode, e.g. (("coordinate_descent_tuning", True),): opt-in, measured by
    # `bench/speed.py --only modes` against the default, compile time included.
    inductor: tuple[tuple[str, Any], ...] = ()
    compile_vae: bool = False  # compile the VAE decoder too (opt-in: `bench/speed.py --only vae` measures it)
    fullgraph: bool = False  # True makes a graph break an error (the bench reports breaks either way)
    dynamic: bool = False  # True: one graph with a symbolic token count for all buckets (faster cold start)
    cache_negative: bool = True
    vae_channels_last: bool = True  # NHWC convolutions for the fp32 VAE (same math, faster cuDNN kernels)
    cudnn_benchmark: bool = True  # pick the fastest cuDNN convolution per shape (VAE); warm_buckets pays the search
    cuda_graphs: bool = False  # replay the denoisers from CUDA graphs (opt-in: `bench/speed.py --only graphs`)


def _bria(pipe: Any) -> Any:
    """The diffusers BriaPipeline: `pipe` itself, or `pipe.bria` of `pipeline.ReimaginePipeline`."""
    return getattr(pipe, "bria", pipe)


def denoisers(pipe: Any) -> list[Any]:
    """The transformer (first) and every ControlNet of `pipe` (modules with both block lists), each once."""
    found: list[Any] = []
    bria = _bria(pipe)
    roots = [bria.transformer] + [v for v in vars(pipe).values() if isinstance(v, nn.Module)]
    roots += [v for v in getattr(bria, "components", {}).values() if isinstance(v, nn.Module)]
    for root in roots:
        for module in root.modules():
            is_dit = hasattr(module, "transformer_blocks") and hasattr(module, "single_transformer_blocks")
            if is_dit and all(module is not f for f in found):
                found.append(module)
    return found


def _blocks(model: Any) -> Iterator[nn.Module]:
    yield from model.transformer_blocks
    yield from model.single_transformer_blocks


def fuse_qkv(model: nn.Module) -> int:
    """Fuse each attention's Q/K/V (and added Q/K/V) linears into one GEMM; drop the unfused copies (~1.1 GB at
    full size) so FP8 and memory see only what runs. Returns how many attentions were fused."""
    n = 0
    module: Any
    for module in model.modules():
        if hasattr(module, "fuse_projections") and getattr(module, "_supports_qkv_fusion", False):
            if getattr(module, "fused_projections", False):
                continue
            module.fuse_projections()
            if hasattr(module, "to_qkv"):
                del module.to_q, module.to_k, module.to_v
            if hasattr(module, "to_added_qkv"):
                del module.add_q_proj, module.add_k_proj, module.add_v_proj
            n += 1
    return n


def pick_attention_backend(device: torch.device) -> str:
    """FA3 when its Hopper kernels are importable, else cuDNN SDPA on CUDA (faster than FA2 on H100), else SDPA."""
    if device.type != "cuda":
        return "native"
    try:
        import flash_attn_interface  # type: ignore[import-not-found]  # noqa: F401  (FA3, built separately; diffusers' "_flash_3")

        return "_flash_3"
    except ImportError:
        return "_native_cudnn"


def probe_attention(backend: str, device: torch.device, heads: int, head_dim: int) -> str | None:
    """Run one small bf16 attention call of the model's head shape under `backend`; the error text, or None.

    cuDNN's fused attention depends on the cuDNN build and the head dimension (Bria: 96), so choosing it without a
    call can fail at the first request instead of at start-up."""
    if backend != "_native_cudnn":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, heads, 256, head_dim, device=device, dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return None if bool(torch.isfinite(out).all()) else "non-finite output"
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def set_attention_backend(models: Iterable[nn.Module], backend: str) -> str:
    """Set `backend` on every model; a backend this install cannot run (import error, or the probe call of
    `probe_attention` fails) falls back to SDPA, logged. Returns what was set, with the reason for a fallback."""
    models = list(models)
    param = next(models[0].parameters())
    config: Any = getattr(models[0], "config", None)
    heads = getattr(config, "num_attention_heads", 24)
    head_dim = getattr(config, "attention_head_dim", 96)
    failure = probe_attention(backend, param.device, heads, head_dim)
    try:
        if failure is not None:
            raise RuntimeError(f"probe call failed: {failure}")
        for model in models:
            model.set_attention_backend(backend)  # type: ignore[operator]
        return backend
    except (ImportError, RuntimeError, ValueError) as exc:
        logger.warning("attention backend %s unavailable (%s); using native SDPA", backend, exc)
        for model in models:
            model.set_attention_backend("native")  # type: ignore[operator]
        return f"native (fallback: {backend} {exc})"


#: The attention backend of `Settings.deterministic`: PyTorch's FlashAttention-2, whatever else is installed.
DETERMINISTIC_ATTENTION = "_native_flash"


def configure_determinism() -> None:
    """Make every kernel choice a fixed function of the shapes, so the same request gives the same bytes on one GPU
    (same model, driver and libraries) across restarts: cuDNN without autotuning and with deterministic algorithms
    only, PyTorch's deterministic algorithms (a warning, not an error, where an op has none), inductor's
    deterministic mode (no on-device benchmarking of kernel configs), and cuBLAS's fixed workspace (must be set
    before its first call). `apply_fast_path` then pins the attention backend (`DETERMINISTIC_ATTENTION`)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ... without its NaN-filling of every `torch.empty` (a memory pass per buffer): nothing here reads memory it
    # did not write, and the kernels' choice is what makes the bytes repeatable.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config, "deterministic"):  # torch >= 2.8
        inductor_config.deterministic = True
    else:
        logger.warning("this torch's inductor has no deterministic mode: compiled kernels may still be autotuned")


def configure_compile_cache(data_dir: Path) -> Path:
    """Keep inductor's FX-graph/AOT/autotune caches (and Triton's kernels) under the data dir, so a restarted
    worker loads compiled kernels instead of recompiling (minutes -> seconds). Set unconditionally: torch writes
    its default (/tmp/torchinductor_<user>) into the environment itself on import, and reads the variables again
    at each compilation, so this must run before the first `torch.compile` call."""
    cache = (data_dir / "compile-cache").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return cache


def _contiguous_single_forward(
    forward: Any, self: nn.Module, *args: Any, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """A single block's forward with contiguous outputs. diffusers returns two slices of one joint tensor, whose
    strides differ from a fresh tensor's, so the compiled block was specialised twice (contiguous input for the first
    single block, strided for the rest: double the graphs and the cold start). Inside the compiled region the copy
    fuses into the block's last kernel."""
    encoder_hidden_states, hidden_states = forward(self, *args, **kwargs)
    return encoder_hidden_states.contiguous(), hidden_states.contiguous()


def compile_kwargs(
    mode: str | None, inductor: Iterable[tuple[str, Any]] = (), *, fullgraph: bool = False, dynamic: bool = False
) -> dict[str, Any]:
    """`torch.compile` arguments: it takes a mode or inductor options, not both, so with settings the mode's own
    settings come first and ours on top."""
    settings = dict(inductor)
    if not settings:
        return dict(mode=mode, fullgraph=fullgraph, dynamic=dynamic)
    import torch._inductor

    options = {**(torch._inductor.list_mode_options(mode) if mode else {}), **settings}
    return dict(options=options, fullgraph=fullgraph, dynamic=dynamic)


def compile_model(
    model: Any,
    *,
    how: str,
    mode: str | None,
    fullgraph: bool = False,
    dynamic: bool = False,
    inductor: Iterable[tuple[str, Any]] = (),
) -> None:
    """`torch.compile` with static shapes: one graph per (token count, batch). "regional" compiles each block's forward
    (Bria: 2 graphs per shape shared by 36 blocks via the FX cache; hooks such as the step cache stay eager)."""
    import torch._dynamo.config as dynamo_config

    # 9 buckets x batch 2 (CFG) and 4 (two requests) per compiled function, plus headroom.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4096)
    if how == "none" or getattr(model, "_reimagine_compiled", False):  # applying the fast path twice is a no-op
        return
    model._reimagine_compiled = True
    kwargs = compile_kwargs(mode, inductor, fullgraph=fullgraph, dynamic=dynamic)
    if how == "regional":
        for block in model.transformer_blocks:
            block.forward = torch.compile(block.forward, **kwargs)
        for block in model.single_transformer_blocks:
            contiguous = functools.partial(_contiguous_single_forward, type(block).forward)
            block.forward = torch.compile(types.MethodType(contiguous, block), **kwargs)
    elif how == "full":
        model.forward = torch.compile(model.forward, **kwargs)
    else:
        raise ValueError(f"`compile` must be 'regional', 'full' or 'none', got {how!r}")


def compile_vae_decoder(vae: Any, options: FastOptions) -> None:
    """`torch.compile` the VAE's decoder (the fp32 convolutions and group norms of every image's decode)."""
    decoder = vae.decoder
    if not getattr(decoder, "_reimagine_compiled", False):
        kwargs = compile_kwargs(options.compile_mode, options.inductor, dynamic=options.dynamic)
        decoder.forward = torch.compile(decoder.forward, **kwargs)
        decoder._reimagine_compiled = True


class NegativePromptCache:
    """Wraps `pipe.encode_prompt`: a negative prompt's T5 embedding is computed once and reused (one T5-XXL pass,
    1.2 TFLOP, saved per request for the default negative prompt). Keyed by text, length, device, dtype."""

    def __init__(self, pipe: Any, size: int = 8) -> None:
        self.pipe = pipe
        self.original = pipe.encode_prompt
        self.size = size
        self.entries: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        self.hits = 0

    def __call__(self, prompt: Any = None, *args: Any, **kwargs: Any) -> Any:
        negative = kwargs.get("negative_prompt")
        if args or not isinstance(negative, str) or not negative or kwargs.get("negative_prompt_embeds") is not None:
            return self.original(prompt, *args, **kwargs)
        if not kwargs.get("do_classifier_free_guidance", True):
            return self.original(prompt, *args, **kwargs)
        batch = 1 if isinstance(prompt, str) else len(prompt)
        per_prompt = kwargs.get("num_images_per_prompt", 1)
        length = kwargs.get("max_sequence_length", TEXT_TOKENS)
        device = kwargs.get("device") or self.pipe._execution_device
        key = (negative, length, str(device), self.pipe.text_encoder.dtype)
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
        else:
            embeds, _, _ = self.original(
                negative,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                max_sequence_length=length,
            )
            self.entries[key] = embeds
            if len(self.entries) > self.size:
                self.entries.popitem(last=False)
        cached = self.entries[key].repeat(batch * per_prompt, 1, 1)
        return self.original(prompt, **{**kwargs, "negative_prompt": None, "negative_prompt_embeds": cached})


def serving_options(settings: Settings, options: FastOptions | None = None) -> FastOptions:
    """`options` (default: `FastOptions()`) as `settings` constrain them: `deterministic` pins the attention backend
    to `DETERMINISTIC_ATTENTION` and turns cuDNN autotuning off."""
    options = options or FastOptions()
    if settings.deterministic:
        options = dataclasses.replace(options, attention=DETERMINISTIC_ATTENTION, cudnn_benchmark=False)
    return options


def apply_fast_path(pipe: Any, settings: Settings, *, options: FastOptions | None = None) -> None:
    """Apply the compiled, bf16-tolerant fast path (and `settings.fp8`) to `pipe` in place; keeps the pipeline's
    step cache (`pipeline.set_step_cache`).

    Call once after the pipe is on its device, then `warm_buckets(pipe)`. Output matches eager within bf16
    tolerance (`bench/speed.py` reports the relative error). With `settings.deterministic` the attention backend is
    `DETERMINISTIC_ATTENTION` and cuDNN does not autotune (`configure_determinism` has run).
    """
    options = serving_options(settings, options)
    models = denoisers(pipe)
    device = next(models[0].parameters()).device
    if options.bf16:
        for model in models:
            model.to(torch.bfloat16)
    if options.fuse_qkv:
        for model in models:
            fuse_qkv(model)
    backend = pick_attention_backend(device) if options.attention == "auto" else options.attention
    backend = set_attention_backend(models, backend)
    pipe._fast_attention = backend  # the bench reports it
    if settings.fp8:
        enable_fp8(models, scaling=settings.fp8_scaling)
    bria = _bria(pipe)
    if options.vae_channels_last:
        bria.vae.to(memory_format=torch.channels_last)
    if options.cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if options.cache_negative and not isinstance(bria.encode_prompt, NegativePromptCache):
        bria.encode_prompt = NegativePromptCache(bria)
    # A cache the pipeline enabled itself (its hooks wrap block forwards) comes off while blocks are compiled,
    # so the compiled graphs hold the blocks alone and the hooks stay eager around them.
    transformer = models[0]
    pipeline_cache = transformer._cache_config if getattr(transformer, "is_cache_enabled", False) else None
    if pipeline_cache is not None:
        transformer.disable_cache()
    if options.compile != "none":
        configure_compile_cache(settings.data_dir)
        for model in models:
            compile_model(
                model,
                how=options.compile,
                mode=options.compile_mode,
                fullgraph=options.fullgraph,
                dynamic=options.dynamic,
                inductor=options.inductor,
            )
        if options.compile_vae:
            compile_vae_decoder(bria.vae, options)
    if pipeline_cache is not None:
        transformer.enable_cache(pipeline_cache)
    if options.cuda_graphs and device.type == "cuda":
        enable_cuda_graphs(pipe)  # each signature is captured on its first call (the warm-up, for served shapes)
    pipe._fast_options = options  # marks the pipe as done (the bench's cold start checks it)
    logger.info(
        "fast path (compiled, bf16-tolerant): %s, fused QKV %s, attention %s, compile %s, fp8 %s, step cache %s, "
        "deterministic %s",
        "bf16" if options.bf16 else "dtype kept",
        options.fuse_qkv,
        backend,
        options.compile,
        settings.fp8,
        settings.step_cache,
        settings.deterministic,
    )


@torch.no_grad()
def warm_buckets(
    pipe: Any, sizes: Iterable[tuple[int, int]] | None = None, *, batch: int = 2, conditions: int = 1, vae: bool = True
) -> dict[str, float]:
    """Run one denoiser call and one VAE decode (and encode) per aspect bucket with dummy inputs of the serving
    shapes, so every compiled graph exists (or is loaded from the disk cache) and cuDNN has chosen its kernels
    before the first request. Returns seconds per bucket.

    `batch` 2 is one request under CFG; the ControlNet (if any) is run and its residuals passed to the
    transformer, like a request with `conditions` structure images (all in one ControlNet forward of batch
    `batch * conditions`, as `BriaMultiControlNetModel` batches them).
    """
    import time

    transformer, *controlnets = denoisers(pipe)
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    config = transformer.config
    seconds: dict[str, float] = {}
    for width, height in sizes or SIZES.values():
        tokens = (height // 16) * (width // 16)
        start = time.perf_counter()
        latents = torch.zeros(batch, tokens, config.in_channels, device=device, dtype=dtype)
        text = torch.zeros(batch, TEXT_TOKENS, config.joint_attention_dim, device=device, dtype=dtype)
        timestep = torch.full((batch,), 500.0, device=device, dtype=dtype)
        img_ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
        txt_ids = torch.zeros(TEXT_TOKENS, 3, device=device, dtype=dtype)
        residuals: dict[str, Any] = {}
        for controlnet in controlnets[:1] if conditions else []:
            copies = conditions if getattr(_multi_controlnet(pipe), "batch_conditions", False) else 1
            mode = torch.zeros(batch * copies, 1, dtype=torch.long, device=device)
            block, single = controlnet(
                hidden_states=latents.repeat(copies, 1, 1), controlnet_cond=latents.repeat(copies, 1, 1),
                controlnet_mode=mode, conditioning_scale=1.0, encoder_hidden_states=text.repeat(copies, 1, 1),
                timestep=timestep.repeat(copies), img_ids=img_ids, txt_ids=txt_ids,
            )  # fmt: skip
            block, single = ([r[:batch] for r in samples] if samples else samples for samples in (block, single))
            residuals = {"controlnet_block_samples": block, "controlnet_single_block_samples": single}
        cached = getattr(transformer, "is_cache_enabled", False)
        with transformer.cache_context("warmup") if cached else contextlib.nullcontext():
            transformer(
                hidden_states=latents, encoder_hidden_states=text, timestep=timestep, img_ids=img_ids,
                txt_ids=txt_ids, return_dict=False, **residuals,
            )  # fmt: skip
        if vae:  # cuDNN picks its convolution algorithms per shape on first use
            autoencoder = _bria(pipe).vae
            latent_shape = (1, autoencoder.config.latent_channels, height // 8, width // 8)
            autoencoder.decode(torch.zeros(latent_shape, device=device, dtype=autoencoder.dtype))
            if conditions:
                autoencoder.encode(torch.zeros(1, 3, height, width, device=device, dtype=autoencoder.dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[f"{width}x{height}"] = time.perf_counter() - start
    if getattr(transformer, "is_cache_enabled", False):
        transformer._reset_stateful_cache()
    return seconds


def _multi_controlnet(pipe: Any) -> Any:
    """The multi-condition wrapper of `pipeline.ReimaginePipeline` (None for a bare BriaPipeline)."""
    return getattr(pipe, "controlnet", None)


# --- lossy: FP8 ----------------------------------------------------------------------------------------------------


def fp8_supported(device: torch.device) -> bool:
    """torchao's float8 dynamic quantisation needs CUDA compute capability 8.9+ (Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def enable_fp8(models: Iterable[Any], *, scaling: str = "row") -> bool:
    """FP8 (e4m3) dynamic activation + weight quantisation of the block linears: attention and MLP projections, not
    the embedders, the AdaLayerNorm modulations, the ControlNet output projections or the output layer. `scaling`
    "row": one scale per activation row and weight row (torchao `PerRow`, the more accurate); "tensor": one per
    tensor (`PerTensor`: fewer scale reads, coarser). Returns False, logged, where unsupported."""
    if scaling not in ("row", "tensor"):
        raise ValueError(f"`scaling` must be 'row' or 'tensor', got {scaling!r}")
    models = list(models)
    device = next(models[0].parameters()).device
    if not fp8_supported(device):
        logger.warning("fp8 requested but unsupported on %s (needs CUDA sm89+); running without it", device)
        return False
    with _inductor_config_kept():  # torchao switches coordinate-descent tuning on for every later compile
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    def is_block_linear(module: nn.Module, name: str) -> bool:
        return (
            isinstance(module, nn.Linear)
            and "transformer_blocks." in name
            and ".norm" not in name  # AdaLayerNorm modulation runs on 2 rows (temb): FP8 would only add overhead
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    for model in models:
        if not getattr(model, "_reimagine_fp8", False):
            with _inductor_config_kept():
                granularity = PerRow() if scaling == "row" else PerTensor()
                config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
                quantize_(model, config, filter_fn=is_block_linear)
            model._reimagine_fp8 = True
    return True


@contextlib.contextmanager
def _inductor_config_kept() -> Iterator[None]:
    """Undo any inductor setting changed inside (torchao sets `coordinate_descent_tuning` process-wide on import,
    which makes every later compilation pay for a tuning search nobody asked for)."""
    import torch._inductor.config as inductor_config

    before = inductor_config.get_config_copy()
    try:
        yield
    finally:
        for key, value in before.items():
            if getattr(inductor_config, key) != value:
                logger.info("inductor setting %s changed by a library; restored to %r", key, value)
                setattr(inductor_config, key, value)


# --- CUDA graphs ---------------------------------------------------------------------------------------------------


class CudaGraphForward:
    """A module's forward replayed from CUDA graphs, one per call signature (tensor shapes and dtypes, the other
    arguments' values): one launch per forward instead of ~1,000 kernel launches, and no gaps between kernels.

    The first call of a signature runs the forward twice on a side stream (compiles, picks kernels, sizes cuBLAS
    workspaces: nothing of that may happen inside a capture), then captures it into the shared memory pool; later
    calls copy their tensors into the captured inputs and replay. The returned tensors are the graph's own and are
    overwritten by its next replay: the caller must be done with them by then (the denoise loop is: it combines
    the CFG branches into a new tensor before the next step). Nothing between steps is captured, so previews,
    cancel checks and progress run as before.
    """

    def __init__(self, forward: Any, pool: Any) -> None:
        self.forward = forward
        self.pool = pool
        self.graphs: dict[Any, tuple[torch.cuda.CUDAGraph, list[Any], Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils._pytree import tree_flatten

        flat, spec = tree_flatten((args, kwargs))
        key = (str(spec), *((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x for x in flat))
        if key not in self.graphs:
            self.graphs[key] = self._capture(flat, spec)
        graph, inputs, output = self.graphs[key]
        for static, value in zip(inputs, flat, strict=True):
            if isinstance(value, torch.Tensor) and static.data_ptr() != value.data_ptr():
                static.copy_(value)
        graph.replay()
        return output

    def _capture(self, flat: list[Any], spec: Any) -> tuple[torch.cuda.CUDAGraph, list[Any], Any]:
        from torch.utils._pytree import tree_unflatten

        inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in flat]
        args, kwargs = tree_unflatten(inputs, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(*args, **kwargs)
        return graph, inputs, output


def enable_cuda_graphs(pipe: Any) -> None:
    """Replay the transformer's and the ControlNet's forwards from CUDA graphs (`CudaGraphForward`); CUDA only,
    opt-in (`bench/speed.py --only graphs` measures it against the plain fast path). Graphs share one memory pool;
    each signature keeps its inputs and outputs (for 1024² T2I under CFG ~0.1 GB) plus the pool's working set."""
    if getattr(denoisers(pipe)[0], "is_cache_enabled", False):
        # The step cache decides per step, on the host, whether to skip blocks: a graph would freeze one decision.
        raise ValueError("CUDA graphs and the step cache exclude each other: turn one of them off")
    pool = torch.cuda.graph_pool_handle()
    for model in denoisers(pipe):
        if not isinstance(model.forward, CudaGraphForward):
            model.forward = CudaGraphForward(model.forward, pool)
    if _multi_controlnet(pipe) is not None:
        _multi_controlnet(pipe).scales_as_tensors = True  # else every new scale value would capture a new graph


def disable_cuda_graphs(pipe: Any) -> None:
    """Back to plain forwards; the graphs and their memory are released."""
    for model in denoisers(pipe):
        if isinstance(model.forward, CudaGraphForward):
            model.forward = model.forward.forward
    if _multi_controlnet(pipe) is not None:
        _multi_controlnet(pipe).scales_as_tensors = False
