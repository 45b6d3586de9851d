"""The `random-full` preset: the released architectures at full size with random weights, built on the device.

Where no weights can be had (a lent GPU machine, CI), `--model random-full` runs the real serving path at the real
cost: Bria 3.2's transformer (8 + 28 blocks, 3,785,669,392 parameters), a ControlNet-Union (4 double + 10 single
blocks, the `from_transformer` default: the released layout is unpublished, bria-model.md §2.2), the SDXL-style VAE,
the T5-XXL encoder (4.76 B) and Depth Anything V2 Small. **Its images are noise**, like `tiny`'s, and every request
logs so. Nothing is written to disk unless `ReimaginePipeline.save_pretrained` is called.

Weights are initialised where they live (modules are built inside `torch.device(device)`): seconds on a GPU, and
nothing at all on the meta device, where tests count the parameters. The tokenizer is the tiny preset's in-memory
one (no download), so prompts split into other tokens than with the real T5 tokenizer.

`FULL` is the one definition of the full-size architectures (`bench/speed.py` builds from it too); `TINY` is the
same structure at tiny scale, so the same builder runs in a CPU test.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from PIL import Image
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessor,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from reimagine.prompt import TINY_VOCAB
from reimagine.worker.controlnet_bria import BriaControlledTransformer2DModel, BriaControlNetModel
from reimagine.worker.preprocess import DepthEstimator

__all__ = [
    "FULL",
    "RANDOM_FULL_WARNING",
    "TINY",
    "build_components",
    "build_depth_estimator",
    "controlnet_kwargs",
    "t5_config",
    "transformer_kwargs",
    "vae_kwargs",
]

RANDOM_FULL_WARNING = (
    "random-full preset: full-size architectures with random weights, the image is noise (for measuring, not Bria 3.2)"
)

#: The released configs (bria-model.md §1.1, §4.1): BRIA-3.2 transformer, T5-v1.1-XXL encoder, SDXL-style VAE,
#: Depth-Anything-V2-Small; the ControlNet-Union layout is an assumption (see the module docstring).
FULL: dict[str, dict[str, Any]] = {
    "transformer": dict(
        num_layers=8,
        num_single_layers=28,
        attention_head_dim=96,
        num_attention_heads=24,
        joint_attention_dim=4096,
        axes_dims_rope=[0, 48, 48],
    ),
    "controlnet": dict(num_layers=4, num_single_layers=10, num_mode=6),
    "vae": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32),
    "t5": dict(
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        vocab_size=32128,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
    ),
    "depth": dict(
        image_size=518,
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        out_indices=[3, 6, 9, 12],
        reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
    ),
}
#: The same structure at tiny scale (shared/reference/tiny_bria.py): 1 + 1 blocks, 2 heads of 8, 32-wide T5.
TINY: dict[str, dict[str, Any]] = {
    "transformer": dict(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[0, 4, 4],
    ),
    "controlnet": dict(num_layers=1, num_single_layers=1, num_mode=6),
    "vae": dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=8),
    "t5": dict(
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        vocab_size=256,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
    "depth": dict(
        image_size=56,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        out_indices=[1, 2, 3, 4],
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    ),
}


def transformer_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    return dict(patch_size=1, in_channels=16, pooled_projection_dim=None, guidance_embeds=False, **arch["transformer"])


def controlnet_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    return {**transformer_kwargs(arch), **arch["controlnet"]}


def vae_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    return dict(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        scaling_factor=0.13025,
        shift_factor=None,  # as released: BriaPipeline then uses 0 and keeps the VAE in fp32
        force_upcast=False,
        **arch["vae"],
    )


def t5_config(arch: dict[str, Any]) -> T5Config:
    return T5Config(
        feed_forward_proj="gated-gelu",  # as t5-v1_1-xxl
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        **arch["t5"],
    )


def released_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(  # the released scheduler_config.json
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def build_components(
    arch: dict[str, Any], device: torch.device | str, *, dtype: torch.dtype, seed: int = 0
) -> tuple[dict[str, Any], BriaControlNetModel]:
    """`BriaPipeline(**components)` keyword arguments and the union ControlNet, random weights made on `device`.

    The transformer, ControlNet and T5 are built in `dtype`, the VAE in fp32 (as `BriaPipeline` keeps it); the caller
    casts T5's `wo` projections as for released weights. Same seed and device: same weights. The ControlNet's
    zero-initialised output layers get random weights, so conditions act on the image.
    """
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(seed)
            transformer = BriaControlledTransformer2DModel(**transformer_kwargs(arch)).eval()
            controlnet = BriaControlNetModel(**controlnet_kwargs(arch)).eval()
            for linear in [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks]:
                torch.nn.init.normal_(linear.weight, std=0.02)
            torch.nn.init.normal_(controlnet.controlnet_x_embedder.weight, std=0.2)
            text_encoder = T5EncoderModel(t5_config(arch)).eval()
            torch.set_default_dtype(torch.float32)
            vae: Any = AutoencoderKL(**vae_kwargs(arch))
            vae.eval()
    finally:
        torch.set_default_dtype(default_dtype)
    components = {
        "transformer": transformer,
        "scheduler": released_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": T5Tokenizer(vocab=TINY_VOCAB, extra_ids=0),
    }
    return components, controlnet


def build_depth_estimator(arch: dict[str, Any], device: torch.device | str, *, seed: int = 0) -> DepthEstimator:
    """Depth Anything V2 (DINOv2 backbone + DPT head) with random fp32 weights made on `device`, and the image
    processor of the released model (`image_size` a side, aspect kept, multiple of 14, bicubic, ImageNet norm)."""
    depth = dict(arch["depth"])
    image_size = depth.pop("image_size")
    backbone_config: dict[str, Any] = {
        "image_size": image_size,
        "patch_size": 14,
        "hidden_size": depth.pop("hidden_size"),
        "num_hidden_layers": depth.pop("num_hidden_layers"),
        "num_attention_heads": depth.pop("num_attention_heads"),
        "mlp_ratio": 4,
        "out_indices": depth.pop("out_indices"),
        "reshape_hidden_states": False,
        "apply_layernorm": True,
    }
    backbone = Dinov2Config(**backbone_config)
    config = DepthAnythingConfig(backbone_config=backbone, depth_estimation_type="relative", **depth)
    processor = depth_processor(image_size)
    with torch.device(device):
        torch.manual_seed(seed + 4)
        model = DepthAnythingForDepthEstimation(config).eval()
    return DepthEstimator(model, processor)


def depth_processor(image_size: int) -> DPTImageProcessor:
    """The released Depth Anything V2 preprocessing at `image_size` a side: aspect kept, multiple of 14, bicubic,
    ImageNet normalisation."""
    return DPTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
