"""The `tiny` preset: every component of the real pipeline, built from tiny configs with seeded random weights.

No download, any CPU: tests and GPU-less demos run the real code paths at the real aspect-ratio sizes, and its
images are noise. The shapes and semantics mirror the released models (bria-model.md §6): 4-channel, 4-level VAE
(vae_scale_factor 16), `in_channels 16`, T5 `d_model == joint_attention_dim`, RoPE axes summing to the head dim,
the released scheduler config. Channel counts are as small as that allows: at 1024x1024 the VAE is most of the cost.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, T5EncoderModel, T5Tokenizer

from reimagine.prompt import TINY_VOCAB
from reimagine.worker.controlnet_bria import BriaControlledTransformer2DModel, BriaControlNetModel
from reimagine.worker.preprocess import DepthEstimator
from reimagine.worker.random_full import depth_processor, released_scheduler, t5_config, vae_kwargs

__all__ = ["TINY_TEXT_DIM", "build_tiny_components", "build_tiny_controlnet", "build_tiny_depth_estimator"]

#: T5 `d_model` == transformer `joint_attention_dim` (real: 4096).
TINY_TEXT_DIM = 32
_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 16,  # = 4 latent channels x 2x2 patch, as the real model
    "num_layers": 1,  # real: 8
    "num_single_layers": 1,  # real: 28
    "attention_head_dim": 8,  # real: 96 (inner dim 8, real 2304)
    "num_attention_heads": 1,  # real: 24; one head halves the attention cost at 4096 tokens
    "joint_attention_dim": TINY_TEXT_DIM,
    "pooled_projection_dim": None,
    "guidance_embeds": False,
    "axes_dims_rope": [0, 4, 4],  # sums to the head dim (real: [0, 48, 48])
    "rope_theta": 10000,
    "time_theta": 10000,
}


def build_tiny_components(seed: int = 0) -> dict[str, Any]:
    """`BriaPipeline(**components)` keyword arguments; the transformer is our ControlNet-ready subclass."""
    tokenizer = T5Tokenizer(vocab=TINY_VOCAB, extra_ids=0)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        t5_config(
            {
                "t5": dict(
                    vocab_size=len(TINY_VOCAB),
                    d_model=TINY_TEXT_DIM,
                    d_kv=8,
                    d_ff=64,
                    num_layers=2,
                    num_heads=4,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=16,
                )
            }
        )
    ).eval()
    torch.manual_seed(seed + 1)
    transformer = BriaControlledTransformer2DModel(**_TRANSFORMER).eval()
    torch.manual_seed(seed + 2)
    tiny_vae = dict(
        block_out_channels=[4, 4, 8, 8],  # real: [128, 256, 512, 512]
        layers_per_block=1,  # real: 2
        norm_num_groups=4,  # real: 32
        sample_size=64,
    )
    vae: Any = AutoencoderKL(**vae_kwargs({"vae": tiny_vae}))
    vae.eval()
    scheduler = released_scheduler()
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def build_tiny_controlnet(seed: int = 0) -> BriaControlNetModel:
    """A 1+1-block union net. Its zero-initialised output layers get random weights, so conditions visibly act."""
    torch.manual_seed(seed + 3)
    controlnet = BriaControlNetModel(**_TRANSFORMER, num_mode=6).eval()
    zero_initialised = [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks]
    for linear in [*zero_initialised, controlnet.controlnet_x_embedder]:
        torch.nn.init.normal_(linear.weight, std=0.2)
    return controlnet


def build_tiny_depth_estimator(seed: int = 0) -> DepthEstimator:
    """Depth Anything V2 (DINOv2 backbone, 4 layers, 32 wide) with the real model's kind of preprocessing, at 56 px."""
    torch.manual_seed(seed + 4)
    backbone_config: dict[str, Any] = {
        "image_size": 56,
        "patch_size": 14,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
        "out_indices": [1, 2, 3, 4],
        "reshape_hidden_states": False,
        "apply_layernorm": True,
    }
    backbone = Dinov2Config(**backbone_config)
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )
    processor = depth_processor(56)  # real: 518
    return DepthEstimator(DepthAnythingForDepthEstimation(config), processor)
