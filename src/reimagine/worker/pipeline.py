"""The Reimagine pipeline: Bria 3.2 + ControlNet-Union (depth, canny), loaded once, run per request by `generate`.

`generate(pipe, inputs, controls, hooks)` is the real `reimagine.generation.Generate` (bound with
`functools.partial`). It reads like a diffusers `__call__` and reproduces `BriaPipeline` exactly when no condition
is used; conditions follow Bria's `pipeline_bria_controlnet.py` (bria-model.md §2), with the request's generator
for every random draw so the same inputs and seed give the same bytes on one device.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, BriaPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from PIL import Image
from transformers import AutoTokenizer, T5EncoderModel

from reimagine.config import Settings
from reimagine.errors import ConfigError, JobCancelled, ModelMissing, OutOfMemory
from reimagine.generation import Controls, Generated, Hooks, NullHooks, aspect_ratio_for
from reimagine.prompt import MAX_PROMPT_TOKENS, check_prompt_length, count_tokens, truncate_to_tokens
from reimagine.schemas import SIZES, ReimagineInput, size_for
from reimagine.worker.controlnet_bria import (
    BRIA_CONTROL_MODES,
    BriaControlledTransformer2DModel,
    BriaControlNetModel,
    BriaMultiControlNetModel,
    register_cache_blocks,
)
from reimagine.worker.enhancer import Enhancer, EnhancerFailed, load_enhancer
from reimagine.worker.preprocess import DepthEstimator, canny_map, fit_to_size, load_depth_estimator

__all__ = [
    "ReimaginePipeline",
    "PipelineGenerate",
    "generate",
    "generate_batch",
    "load_pipeline",
    "set_step_cache",
    "warmup",
]

#: Written into a saved tiny pipeline, so a reload still says its images are noise.
TINY_MARKER = "reimagine_tiny.json"
TINY_WARNING = "tiny preset: random weights, the image is noise (a test and demo model, not Bria 3.2)"

# A fixed linear map from SDXL-VAE latents to RGB (the factors ComfyUI and others use for latent previews): a
# recognisable preview for the price of a 4x3 matmul, instead of a VAE decode per step.
_LATENT_RGB = torch.tensor(
    [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
)
_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
_PREVIEW_MAX_PX = 128


@dataclass
class ReimaginePipeline:
    """Everything `generate` needs: the Bria pipeline (transformer with the ControlNet fix), the union ControlNet in
    its multi wrapper, the depth model (loaded on first use) and the prompt enhancer."""

    bria: Any  # BriaPipeline
    controlnet: Any  # BriaMultiControlNetModel
    settings: Settings
    device: torch.device
    is_tiny: bool = False
    enhancer: Enhancer | None = None
    step_cache: float = 0.0
    #: Logged with every request of a random-weight preset ('tiny', 'random-full'): its images are noise.
    noise_warning: str = ""
    #: Builds the depth model of a random-weight preset instead of loading one.
    build_depth: Callable[[], DepthEstimator] | None = field(default=None, repr=False)
    _depth: DepthEstimator | None = field(default=None, repr=False)

    def depth_estimator(self) -> DepthEstimator:
        """The depth model, loaded the first time a request asks for a derived depth map."""
        if self._depth is None:
            if self.build_depth is not None and not _saved_part(self.settings.model, "depth_estimator"):
                self._depth = self.build_depth()
            else:
                source = _saved_part(self.settings.model, "depth_estimator") or self.settings.depth_model
                with _model_missing(source, "depth model (Settings.depth_model)"):
                    self._depth = load_depth_estimator(source, self.device, offline=self.settings.offline)
            self._depth.model.to(self.device)
        return self._depth

    def save_pretrained(self, directory: str | Path) -> None:
        """A folder that `--model <folder>` loads back identically: Bria's layout plus `controlnet/` and
        `depth_estimator/` subfolders (used instead of `Settings.controlnet`/`depth_model` when present)."""
        directory = Path(directory)
        self.bria.save_pretrained(directory)
        # Record the stock class, so diffusers' own `BriaPipeline.from_pretrained` can load the folder too.
        index_path = directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["transformer"] = ["diffusers", "BriaTransformer2DModel"]
        index_path.write_text(json.dumps(index, indent=2))
        self.controlnet.nets[0].save_pretrained(directory / "controlnet")
        self.depth_estimator().save_pretrained(str(directory / "depth_estimator"))
        if self.noise_warning:
            (directory / TINY_MARKER).write_text(json.dumps({"warning": self.noise_warning}))


def load_pipeline(settings: Settings, *, architecture: dict[str, Any] | None = None) -> ReimaginePipeline:
    """Load (or for the random-weight presets 'tiny' and 'random-full', build) every component on `settings.device`.

    Precision as Bria requires (bria-model.md §1.3): on CUDA the transformer and ControlNet in bf16, T5 in bf16 with
    each block's `DenseReluDense.wo` in fp32, the VAE in fp32; on CPU everything fp32. `Settings.offline` means
    local files only. A missing or gated model raises one `ModelMissing` saying what to fetch. `architecture`
    replaces `random_full.FULL` for 'random-full' (tests build it at tiny scale).
    """
    device = torch.device(settings.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    _check_device(device)
    if settings.deterministic and device.type == "cuda":
        from reimagine.worker.fast import configure_determinism

        configure_determinism()  # before the first kernel: cuBLAS reads its workspace setting once
    dtype = torch.bfloat16 if device.type == "cuda" and not settings.is_tiny else torch.float32
    marker = Path(settings.model) / TINY_MARKER
    is_tiny = settings.is_tiny or marker.is_file()
    noise_warning = json.loads(marker.read_text())["warning"] if marker.is_file() else ""
    build_depth: Callable[[], DepthEstimator] | None = None
    if settings.is_tiny:
        from reimagine.worker.tiny import build_tiny_components, build_tiny_controlnet, build_tiny_depth_estimator

        components = build_tiny_components()
        controlnet = build_tiny_controlnet()
        noise_warning, build_depth = TINY_WARNING, build_tiny_depth_estimator
    elif settings.model == "random-full":
        from reimagine.worker import random_full

        arch = architecture or random_full.FULL
        components, controlnet = random_full.build_components(arch, device, dtype=dtype)
        noise_warning = random_full.RANDOM_FULL_WARNING
        build_depth = functools.partial(random_full.build_depth_estimator, arch, device)
    else:
        source, offline = settings.model, settings.offline
        with _model_missing(source, "Bria 3.2 (Settings.model)"):
            components = {
                "transformer": BriaControlledTransformer2DModel.from_pretrained(
                    source, subfolder="transformer", torch_dtype=dtype, local_files_only=offline
                ),
                "text_encoder": T5EncoderModel.from_pretrained(
                    source, subfolder="text_encoder", dtype=dtype, local_files_only=offline
                ),
                "tokenizer": AutoTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=offline),
                "vae": AutoencoderKL.from_pretrained(
                    source, subfolder="vae", torch_dtype=torch.float32, local_files_only=offline
                ),
                "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(
                    source, subfolder="scheduler", local_files_only=offline
                ),
            }
        controlnet_source = _saved_part(source, "controlnet") or settings.controlnet
        with _model_missing(controlnet_source, "BRIA-3.2-ControlNet-Union (Settings.controlnet)"):
            controlnet = BriaControlNetModel.from_pretrained(
                controlnet_source, torch_dtype=dtype, local_files_only=offline
            )
    # T5 overflows in half precision in its feed-forward output projections; Bria keeps them in fp32.
    for block in components["text_encoder"].encoder.block:
        block.layer[-1].DenseReluDense.wo.to(torch.float32)

    bria: Any = BriaPipeline(**components)  # also casts the VAE to fp32 (released config has no shift_factor)
    bria.set_progress_bar_config(disable=True)
    multi: Any = BriaMultiControlNetModel([controlnet.eval()])
    if settings.cpu_offload and device.type == "cuda":
        # Only the component in use sits on the GPU (T5 alone is 9.5 GB); the ControlNet is needed at every step
        # next to the transformer, so it stays there.
        bria.enable_model_cpu_offload(device=device)
        multi.to(device)
    else:
        bria.to(device)
        multi.to(device)
    pipe = ReimaginePipeline(
        bria=bria,
        controlnet=multi,
        settings=settings,
        device=device,
        is_tiny=is_tiny,
        enhancer=load_enhancer(settings, device),
        noise_warning=noise_warning,
        build_depth=build_depth,
    )
    set_step_cache(pipe, settings.step_cache)
    # The compiled, bf16-tolerant fast path (bf16, fused QKV, attention backend, per-bucket torch.compile) is for
    # CUDA; offloaded components move between devices, which compiled graphs with static placement do not survive.
    if settings.fast and device.type == "cuda" and not settings.cpu_offload:
        from reimagine.worker.fast import apply_fast_path

        apply_fast_path(pipe, settings)
    return pipe


def set_step_cache(pipe: ReimaginePipeline, threshold: float) -> None:
    """First-Block-Cache on the transformer at `threshold` (0 turns it off): the one step-cache integration, used by
    serving and measured by `bench/speed.py`. `generate` turns it off for requests with structure images."""
    transformer = pipe.bria.transformer
    if getattr(transformer, "is_cache_enabled", False):
        transformer.disable_cache()
    pipe.step_cache = threshold
    if threshold > 0:
        from diffusers import FirstBlockCacheConfig

        register_cache_blocks()
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def warmup(pipe: ReimaginePipeline) -> dict[str, float]:
    """One small generation with both conditions, so kernels, allocators and lazy imports are ready before a job;
    on the fast path, then every aspect bucket of `Settings.warmup_aspect_ratios` is compiled. Returns the seconds
    per bucket (empty without the fast path).

    The depth map is given, not derived: the depth model stays unloaded until a request needs it.
    """
    compiled = getattr(pipe, "_fast_options", None) is not None
    sizes = [size_for(ratio) for ratio in pipe.settings.warmup_aspect_ratios or SIZES]
    image = Image.new("RGB", (64, 64), "gray")
    inputs = ReimagineInput.model_validate({"prompt": "warm up", "prompt_enhancer": False, "depth_preprocess": False})
    inputs = inputs.model_copy(update={"num_inference_steps": 2})  # below the API minimum: only a warm-up
    # Compiled, at a served size: a graph for any other size would be compiled for nothing.
    generate(pipe, inputs, Controls(depth=image, canny=image), NullHooks(), _size=sizes[0] if compiled else (256, 256))
    if not compiled:
        return {}
    from reimagine.worker.fast import warm_buckets

    # Compile the aspect buckets now (all nine by default): readiness waits for it, so no request pays a compile.
    # Requests with one and with two structure images run the ControlNet at two batch sizes; with
    # `batch_requests` 2, two requests in one batch run everything at twice the batch.
    batches = [2, 4] if pipe.settings.batch_requests > 1 else [2]
    seconds = warm_buckets(pipe, sizes, conditions=1)
    for batch in batches:
        for conditions in (1, 2) if batch > 2 else (2,):
            more = warm_buckets(pipe, sizes, batch=batch, conditions=conditions, vae=False)
            seconds = {size: seconds[size] + more[size] for size in seconds}
    return seconds


@torch.no_grad()
def generate(
    pipe: ReimaginePipeline,
    inputs: ReimagineInput,
    controls: Controls,
    hooks: Hooks,
    *,
    _size: tuple[int, int] | None = None,
) -> Generated:
    """Generate one image for a validated request; `controls` hold the decoded depth and canny images.

    Raises `InputError` (prompt too long), `JobCancelled` (from `hooks.check_cancelled`), `OutOfMemory`.
    """
    with _out_of_memory_as_error(), _test_out_of_memory(pipe, inputs.seed):
        request = _prepare(pipe, inputs, controls, hooks, _size)  # 1-6: prompt, noise, control latents
        _denoise(pipe, [request])  # 7-8
        return _decode(pipe, request)  # 9


@torch.no_grad()
def generate_batch(
    pipe: ReimaginePipeline,
    requests: list[tuple[ReimagineInput, Controls, Hooks]],
    *,
    _size: tuple[int, int] | None = None,
) -> list[Generated | Exception]:
    """Generate several compatible requests (`generation.batch_key` equal) in one batch: each step runs the
    denoisers once for all of them. Each request keeps its own generator, so its image equals `generate` alone
    within float tolerance (batched matrix products may round differently), not bit for bit.

    Returns per request its `Generated` or the exception it ended with: `InputError` while preparing,
    `JobCancelled` (a cancelled request leaves the batch at the next step boundary; the others go on),
    `OutOfMemory` (for the whole batch).
    """
    results: list[Generated | Exception] = [RuntimeError("not run")] * len(requests)
    prepared: list[tuple[int, _Request]] = []
    for index, (inputs, controls, hooks) in enumerate(requests):
        try:
            with _out_of_memory_as_error():
                prepared.append((index, _prepare(pipe, inputs, controls, hooks, _size)))
        except Exception as exc:  # reported per request, as a lone `generate` would raise it
            results[index] = exc
    shapes = {
        (r.width, r.height, r.inputs.num_inference_steps, r.inputs.guidance_scale, tuple(r.maps)) for _, r in prepared
    }
    if len(shapes) > 1:
        raise ValueError(f"generate_batch: the requests are not compatible (batch_key differs): {shapes}")
    try:
        with _out_of_memory_as_error():
            if prepared:
                _denoise(pipe, [request for _, request in prepared])
            for index, request in prepared:
                results[index] = request.cancelled or _decode(pipe, request)
    except OutOfMemory as exc:
        for index, _ in prepared:
            results[index] = exc
    return results


@dataclass(frozen=True)
class PipelineGenerate:
    """`generate` and `generate_batch` bound to one loaded pipe: what the worker runs (a `BatchGenerate`)."""

    pipe: ReimaginePipeline

    def __call__(self, inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated:
        return generate(self.pipe, inputs, controls, hooks)

    def batch(self, requests: list[tuple[ReimagineInput, Controls, Hooks]]) -> list[Generated | Exception]:
        return generate_batch(self.pipe, requests)


@dataclass
class _Request:
    """One request between `_prepare` and `_decode`: its prompt embeddings, noise and control latents (batch 1),
    then its final latents; `cancelled` once its hooks raised `JobCancelled`."""

    inputs: ReimagineInput
    hooks: Hooks
    prompt: str
    maps: dict[str, Image.Image]
    timings: dict[str, float]
    width: int
    height: int
    prompt_embeds: torch.Tensor  # (2, T, D) negative then positive under CFG, else (1, T, D)
    text_ids: torch.Tensor
    latents: torch.Tensor  # (1, N, C) packed
    latent_image_ids: torch.Tensor
    control_latents: dict[str, torch.Tensor]  # name -> (1, N, C) packed, in the denoiser dtype
    cancelled: JobCancelled | None = None


def _prepare(
    pipe: ReimaginePipeline,
    inputs: ReimagineInput,
    controls: Controls,
    hooks: Hooks,
    _size: tuple[int, int] | None,
) -> _Request:
    """Steps 1-6 of one request: size, prompt, conditions, text embeddings, initial noise, control latents."""
    with _out_of_memory_as_error():
        bria, timings = pipe.bria, {}
        device = pipe.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        # 1. Output size from the one aspect-ratio table (the structure image's ratio when the request left
        #    `aspect_ratio` out); every random draw comes from this generator
        aspect_ratio = aspect_ratio_for(inputs, controls)
        width, height = _size or size_for(aspect_ratio)
        if aspect_ratio != inputs.aspect_ratio:
            hooks.log(f"aspect_ratio not set: {aspect_ratio} ({width}x{height}) follows the structure image's ratio")
        generator = torch.Generator("cpu").manual_seed(inputs.seed)
        do_cfg = inputs.guidance_scale > 1
        if pipe.noise_warning:
            hooks.log(pipe.noise_warning, "WARN")

        # 2. Prompt: the 128-token rule on the user's own prompt, then the optional rewrite. `truncate_prompt=false`
        #    protects the user's words, not the enhancer's: an enhanced prompt over 128 tokens is cut
        tokenizer = bria.tokenizer.backend_tokenizer
        check_prompt_length(tokenizer, inputs)
        prompt, enhanced = inputs.prompt, False
        if inputs.prompt_enhancer and pipe.enhancer is None:
            hooks.log("prompt_enhancer: no enhancer is configured on this server (enhancer=off); prompt unchanged")
        elif inputs.prompt_enhancer and pipe.enhancer is not None:
            try:
                prompt, enhanced = pipe.enhancer.enhance(prompt, inputs.seed), True
            except EnhancerFailed as exc:
                hooks.log(f"prompt_enhancer failed ({exc}); going on with the original prompt", "WARN")
            else:
                hooks.log(f"prompt_enhancer: {prompt!r}")
        encoded_prompt = prompt  # the encoder cuts at the token level itself, keeping </s> (as Bria)
        if (count := count_tokens(tokenizer, prompt)) > MAX_PROMPT_TOKENS:
            prompt = truncate_to_tokens(tokenizer, prompt)  # the text it effectively sees, for the result
            whose = "the enhanced prompt" if enhanced else "prompt"
            why = " (truncate_prompt=false keeps your own prompt whole, not the enhancer's)" if enhanced else ""
            hooks.log(f"{whose} ({count} tokens) truncated to {MAX_PROMPT_TOKENS} T5 tokens{why}", "WARN")

        # 3. Conditions: a missing image or scale 0 contributes nothing, so it costs nothing either. As Bria: fit
        #    the image to the output size first (centre-crop, Lanczos), then derive the map there
        started = time.perf_counter()
        maps: dict[str, Image.Image] = {}
        for name, image, scale, derive in (
            ("depth", controls.depth, inputs.depth_scale, inputs.depth_preprocess),
            ("canny", controls.canny, inputs.canny_scale, inputs.canny_preprocess),
        ):
            if image is None or scale <= 0:
                continue
            fitted = fit_to_size(image, (width, height))
            if not derive:
                maps[name] = fitted
            elif name == "depth":
                maps[name] = pipe.depth_estimator()(fitted)
            else:
                maps[name] = canny_map(fitted)
        timings["preprocess"] = time.perf_counter() - started

        # 4. Encode the prompt as BriaPipeline does (an empty negative prompt gives zero embeddings)
        started = time.perf_counter()
        prompt_embeds, negative_embeds, text_ids = bria.encode_prompt(
            prompt=encoded_prompt,
            negative_prompt=inputs.negative_prompt,
            do_classifier_free_guidance=do_cfg,
            device=device,
            max_sequence_length=MAX_PROMPT_TOKENS,
        )
        if do_cfg:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds], dim=0)

        # 5. Initial noise, drawn before the control latents: the order of Bria's ControlNet pipeline
        num_channels_latents = bria.transformer.config.in_channels // 4
        latents, latent_image_ids = bria.prepare_latents(
            1, num_channels_latents, height, width, prompt_embeds.dtype, device, generator
        )

        # 6. Control latents: the maps are at the output size already, VAE sample (with our generator: Bria's uses the
        #    global RNG), shift and scale, 2x2 pack; one copy per CFG branch (made in `_denoise`)
        control_latents = {}
        for name, control_map in maps.items():
            pixels = bria.image_processor.preprocess(control_map, height=height, width=width)
            latent = bria.vae.encode(pixels.to(device, bria.vae.dtype)).latent_dist.sample(generator)
            latent = (latent - bria.vae.config.shift_factor) * bria.vae.config.scaling_factor
            packed = bria._pack_latents(latent, 1, num_channels_latents, latent.shape[2], latent.shape[3])
            control_latents[name] = packed.to(bria.transformer.dtype)
        timings["encode"] = time.perf_counter() - started
        return _Request(
            inputs=inputs,
            hooks=hooks,
            prompt=prompt,
            maps=maps,
            timings=timings,
            width=width,
            height=height,
            prompt_embeds=prompt_embeds,
            text_ids=text_ids,
            latents=latents,
            latent_image_ids=latent_image_ids,
            control_latents=control_latents,
        )


def _denoise(pipe: ReimaginePipeline, requests: list[_Request]) -> None:
    """Steps 7-8 for compatible requests in one batch; leaves each request's final latents in `request.latents`.

    Batch layout (n requests, CFG): [negative_1..n, positive_1..n], so `chunk(2)` splits the CFG branches; for one
    request this is BriaPipeline's own layout. No device-to-host copy or sync inside the loop: a step's progress is
    published after the next step is queued (the device is never idle waiting for the host), and its latent preview
    is computed only when the request's hooks want one, copied without blocking.
    """
    bria, device = pipe.bria, pipe.device
    first = requests[0]
    inputs, height, width = first.inputs, first.height, first.width
    do_cfg = inputs.guidance_scale > 1
    names = list(first.control_latents)

    # 7. Timesteps: the released scheduler's dynamic shift, mu from the image sequence length
    sigmas = np.linspace(1.0, 1 / inputs.num_inference_steps, inputs.num_inference_steps)
    config = bria.scheduler.config
    mu = calculate_shift(
        first.latents.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    timesteps, num_steps = retrieve_timesteps(
        bria.scheduler,
        inputs.num_inference_steps,
        device,
        None,
        sigmas,  # type: ignore[arg-type]
        mu=mu,
    )
    # Else the first `scheduler.step` looks its index up with a device-to-host sync (diffusers' Flux pipeline does
    # the same); the first timestep is unique, so the index is 0 either way.
    bria.scheduler.set_begin_index(0)
    latent_image_ids = first.latent_image_ids[0] if first.latent_image_ids.ndim == 3 else first.latent_image_ids
    text_ids = first.text_ids[0] if first.text_ids.ndim == 3 else first.text_ids
    projection = (_LATENT_RGB.to(device), _LATENT_RGB_BIAS.to(device))

    # 8. Denoise: one ControlNet pass for all conditions per step (batched over CFG), then the transformer
    started = time.perf_counter()
    active, latents = list(requests), torch.cat([r.latents for r in requests])
    batched = _batch_inputs(active, names, do_cfg, device)
    published: _Published | None = None
    with _step_cache(pipe, enabled=not names, hooks=first.hooks) as cache_context:
        for index, t in enumerate(timesteps):
            keep = [i for i, request in enumerate(active) if not _cancelled(request)]
            if not keep:
                break
            if len(keep) < len(active):  # a cancelled request leaves the batch; the others go on
                active, latents = [active[i] for i in keep], latents[keep]
                batched = _batch_inputs(active, names, do_cfg, device)
            prompt_embeds, control_latents, control_modes, control_scales = batched
            batch = prompt_embeds.shape[0]
            latent_model_input = torch.cat([latents] * (batch // len(active)))
            timestep = t.expand(batch)
            block_samples = single_block_samples = None
            if control_latents:
                block_samples, single_block_samples = pipe.controlnet(
                    latent_model_input,
                    control_latents,
                    control_modes,
                    control_scales,
                    encoder_hidden_states=prompt_embeds,
                    timestep=timestep,
                    img_ids=latent_image_ids,
                    txt_ids=text_ids,
                )
            with cache_context():
                noise_pred = bria.transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=latent_image_ids,
                    controlnet_block_samples=block_samples,
                    controlnet_single_block_samples=single_block_samples,
                    return_dict=False,
                )[0]
            if do_cfg:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + inputs.guidance_scale * (noise_text - noise_uncond)
            latents = bria.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            queued = _Published(index + 1, num_steps, active, latents, height, width, bria, projection)
            if published is not None:
                published.publish()  # waits for the previous step only: this one keeps the device busy meanwhile
            published = queued
            for row, request in enumerate(active):
                request.latents = latents[row : row + 1]
    if published is not None:
        published.publish()
    for request in active:
        _cancelled(request)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the loop only queued work: the timing must include it
    elapsed = time.perf_counter() - started
    for request in requests:
        request.timings["denoise"] = elapsed
    if len(requests) == 1 and requests[0].cancelled is not None:
        raise requests[0].cancelled


def _cancelled(request: _Request) -> bool:
    """Ask the request's hooks at a step boundary; remember a cancel (a lone request re-raises it at the end)."""
    if request.cancelled is None:
        try:
            request.hooks.check_cancelled()
        except JobCancelled as exc:
            request.cancelled = exc
    return request.cancelled is not None


def _batch_inputs(
    requests: list[_Request], names: list[str], do_cfg: bool, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[float] | list[torch.Tensor]]:
    """Prompt embeddings, control latents, modes and scales of `requests` stacked in the batch layout (built once
    per batch, outside the step loop: nothing here is copied from the host per step)."""
    branches = 2 if do_cfg else 1
    prompt_embeds = torch.cat([r.prompt_embeds[b : b + 1] for b in range(branches) for r in requests])
    batch = prompt_embeds.shape[0]
    control_latents = [torch.cat([r.control_latents[name] for r in requests] * branches) for name in names]
    control_modes = [torch.full((batch,), BRIA_CONTROL_MODES[name], dtype=torch.long, device=device) for name in names]
    control_scales: list[float] | list[torch.Tensor]
    scales = [[getattr(r.inputs, f"{name}_scale") for r in requests] * branches for name in names]
    if all(len(set(per_sample)) == 1 for per_sample in scales):
        control_scales = [per_sample[0] for per_sample in scales]  # one request: exactly Bria's float scale
    else:
        control_scales = [torch.tensor(per_sample, device=device) for per_sample in scales]
    return prompt_embeds, control_latents, control_modes, control_scales


class _Published:
    """One finished step of a batch: its progress, and the latent previews its hooks asked for, started on the
    device now (RGB projection, uint8, non-blocking copy into pinned memory, an event) and handed over later."""

    def __init__(
        self,
        step: int,
        total: int,
        requests: list[_Request],
        latents: torch.Tensor,
        height: int,
        width: int,
        bria: Any,
        projection: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        self.step, self.total, self.requests = step, total, list(requests)
        self.previews: list[torch.Tensor | None] = []
        for row, request in enumerate(self.requests):
            wanted = request.hooks.wants_preview(step, total)
            rows = latents[row : row + 1]
            self.previews.append(_start_preview(bria, rows, height, width, projection) if wanted else None)
        self.event = None
        if latents.device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record()

    def publish(self) -> None:
        if self.event is not None:
            self.event.synchronize()
        for request, pixels in zip(self.requests, self.previews, strict=True):
            if request.cancelled is None:
                request.hooks.on_step(self.step, self.total, None if pixels is None else _preview_image(pixels))


def _start_preview(
    bria: Any, latents: torch.Tensor, height: int, width: int, projection: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """A low-res RGB view of one request's latents through a fixed linear projection (no VAE), computed on the
    device; on CUDA the returned host tensor is filled asynchronously (ready once the step's event has fired)."""
    unpacked = bria._unpack_latents(latents, height, width, bria.vae_scale_factor)[0].float()
    rgb = torch.einsum("chw,cr->hwr", unpacked, projection[0]) + projection[1]
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    if pixels.device.type != "cuda":
        return pixels
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    return host


def _preview_image(pixels: torch.Tensor) -> Image.Image:
    preview = Image.fromarray(pixels.numpy())
    preview.thumbnail((_PREVIEW_MAX_PX, _PREVIEW_MAX_PX))
    return preview


def _decode(pipe: ReimaginePipeline, request: _Request) -> Generated:
    """Step 9 of one request: decode in fp32, as BriaPipeline."""
    bria, height, width = pipe.bria, request.height, request.width
    started = time.perf_counter()
    latents = bria._unpack_latents(request.latents, height, width, bria.vae_scale_factor)
    latents = latents.to(torch.float32) / bria.vae.config.scaling_factor + bria.vae.config.shift_factor
    decoded = bria.vae.decode(latents.to(bria.vae.dtype), return_dict=False)[0]
    image = bria.image_processor.postprocess(decoded, output_type="pil")[0]
    bria.maybe_free_model_hooks()
    request.timings["decode"] = time.perf_counter() - started
    if pipe.device.type == "cuda":  # the models included; bench/serve_gpu.py reads it from the request's logs
        request.hooks.log(f"peak GPU memory {torch.cuda.max_memory_allocated(pipe.device) / 2**30:.2f} GiB")
    return Generated(image=image, maps=request.maps, prompt=request.prompt, timings=request.timings)


@contextlib.contextmanager
def _step_cache(pipe: ReimaginePipeline, *, enabled: bool, hooks: Hooks) -> Iterator[Callable[[], Any]]:
    """Yield the per-call context the transformer must run in when First-Block-Cache is on.

    The cache skips whole blocks from the second on, but our ControlNet residuals are added between blocks, so a
    cached step would apply stale residuals twice: with conditions the cache is off for the request.
    """
    transformer = pipe.bria.transformer
    if pipe.step_cache <= 0:
        yield contextlib.nullcontext
        return
    transformer._reset_stateful_cache()  # a new request must not reuse the last one's residuals
    if enabled:
        yield lambda: transformer.cache_context("cond")
        return
    from diffusers import FirstBlockCacheConfig

    hooks.log("step_cache is not used with structure conditions")
    transformer.disable_cache()
    try:
        yield contextlib.nullcontext
    finally:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=pipe.step_cache))


@contextlib.contextmanager
def _out_of_memory_as_error() -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"out of memory while generating: {exc}") from exc
    except RuntimeError as exc:
        # A library that allocates by itself (cuBLAS, cuDNN workspaces) reports "CUDA error: out of memory".
        if "out of memory" not in str(exc):
            raise
        raise OutOfMemory(f"out of memory while generating: {exc}") from exc


@contextlib.contextmanager
def _test_out_of_memory(pipe: ReimaginePipeline, seed: int) -> Iterator[None]:
    """`Settings.test_oom_seed`: the request with that seed cannot fit. On CUDA the process's memory is capped at
    what it holds once the allocator's cache is emptied, so the request's first new block fails in the real
    allocator; the cap is lifted afterwards. On CPU (no cap to set) the allocator's error is raised."""
    if seed != pipe.settings.test_oom_seed:
        yield
        return
    device = pipe.device
    if device.type != "cuda":
        raise torch.OutOfMemoryError("out of memory (simulated by test_oom_seed: no memory cap on a CPU)")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # else cached blocks would serve the request without asking for more
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(torch.cuda.memory_reserved(device) / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def _check_device(device: torch.device) -> None:
    """A CUDA device that this torch cannot use is one clear error, not a traceback from the first `.to()`."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"--device {device}: torch {torch.__version__} ({build}) sees no CUDA device. Install the CUDA build "
            "(pip install torch --index-url https://download.pytorch.org/whl/cu128) and check `nvidia-smi`, or use "
            "--device cpu"
        )
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _saved_part(model: str, name: str) -> str | None:
    """`<model>/<name>` when `model` is a folder saved by `ReimaginePipeline.save_pretrained` that has it."""
    path = Path(model) / name
    return str(path) if path.is_dir() else None


@contextlib.contextmanager
def _model_missing(source: str, what: str) -> Iterator[None]:
    """Turn Hugging Face's many not-found, gated and offline errors into one `ModelMissing` with the remedy."""
    try:
        yield
    except (OSError, HfHubHTTPError, HFValidationError) as exc:
        raise ModelMissing(
            f"{what} is not available from {source!r} ({type(exc).__name__}: {_first_line(exc)})."
            "\nRun `reimagine models pull` (needs a Hugging Face token, `hf auth login` or HF_TOKEN, and the licence "
            f"accepted on https://huggingface.co/{source}), or download it yourself and pass the folder "
            "(--model / --controlnet / --depth-model). Offline mode only uses files already there."
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
