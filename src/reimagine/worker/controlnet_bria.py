"""Bria's ControlNet-Union as a diffusers model, its multi-condition wrapper, and the transformer fixes it needs.

`BriaControlNetModel` keeps the constructor arguments and module names of Bria's released `controlnet_bria.py`
(the remote code of `briaai/BRIA-3.2-ControlNet-Union`), so its checkpoints load unchanged with `from_pretrained`.
Bria built it on diffusers' Flux blocks; diffusers 0.42's Bria blocks have the same state-dict keys and numerics,
so we build on those (bria-model.md §1.2, §2.2). `tests/pipeline/fixtures/controlnet_bria_keys.txt` pins the keys.

Two diffusers 0.42.1 bugs are worked around here (bria-model.md §2.3):
1. `BriaTransformer2DModel.forward` adds single-block ControlNet residuals to a text+image slice although the
   single blocks return image tokens only: a shape error. `BriaControlledTransformer2DModel` adds them to the image
   tokens.
2. The cache-hook registry lacks `BriaSingleTransformerBlock` and has the wrong output order for
   `BriaTransformerBlock`: `register_cache_blocks()` corrects both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import zero_module
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_bria import (
    BriaEmbedND,
    BriaSingleTransformerBlock,
    BriaTimestepProjEmbeddings,
    BriaTransformer2DModel,
    BriaTransformerBlock,
)
from torch import nn

__all__ = [
    "BRIA_CONTROL_MODES",
    "BriaControlNetModel",
    "BriaControlledTransformer2DModel",
    "BriaMultiControlNetModel",
    "register_cache_blocks",
]

#: Bria's `BriaControlModes`: the index of each condition in the union net's mode embedding.
BRIA_CONTROL_MODES = {"depth": 0, "canny": 1, "colorgrid": 2, "recolor": 3, "tile": 4, "pose": 5}

Residuals = tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]


class BriaControlNetModel(ModelMixin, ConfigMixin):  # type: ignore[misc]
    """Bria ControlNet-Union: a shallow copy of the transformer whose per-block image states, through zero-initialised
    linears and times `conditioning_scale`, become residuals of the base transformer's blocks.

    Union mode (`num_mode > 0`): a learnt mode token (depth=0, canny=1, ...) is prepended to the text tokens.
    """

    _supports_gradient_checkpointing = False

    @register_to_config  # type: ignore[untyped-decorator]
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int | None = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: list[int] | None = None,
        num_mode: int | None = None,
        rope_theta: int = 10000,
        time_theta: int = 10000,
    ) -> None:
        super().__init__()
        # `patch_size`, `pooled_projection_dim` and `guidance_embeds` are unused, as in Bria's code; they stay in the
        # signature so the released config.json loads as is.
        self.out_channels = in_channels
        self.inner_dim = num_attention_heads * attention_head_dim
        self.pos_embed = BriaEmbedND(theta=rope_theta, axes_dim=axes_dims_rope or [16, 56, 56])
        self.time_embed = BriaTimestepProjEmbeddings(embedding_dim=self.inner_dim, time_theta=time_theta)
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [BriaTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim) for _ in range(num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                BriaSingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                for _ in range(num_single_layers)
            ]
        )
        self.controlnet_blocks = nn.ModuleList(
            [zero_module(nn.Linear(self.inner_dim, self.inner_dim)) for _ in range(num_layers)]
        )
        self.controlnet_single_blocks = nn.ModuleList(
            [zero_module(nn.Linear(self.inner_dim, self.inner_dim)) for _ in range(num_single_layers)]
        )
        self.union = num_mode is not None and num_mode > 0
        if num_mode is not None and num_mode > 0:
            self.controlnet_mode_embedder = nn.Embedding(num_mode, self.inner_dim)
        self.controlnet_x_embedder = zero_module(nn.Linear(in_channels, self.inner_dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        controlnet_mode: torch.Tensor | None = None,
        conditioning_scale: float | torch.Tensor = 1.0,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
    ) -> Residuals:
        """Residuals `(per double block, per single block)` of one condition; `None` for an empty list.

        Args:
            hidden_states: packed noisy latents (B, N, in_channels).
            controlnet_cond: packed VAE latents of the control image (B, N, in_channels).
            controlnet_mode: (B, 1) long tensor of `BRIA_CONTROL_MODES` values (union nets only).
            conditioning_scale: multiplies every residual; a float, or a (B,) tensor with one scale per sample.
            encoder_hidden_states: T5 embeddings (B, T, joint_attention_dim).
            timestep: raw scheduler timesteps in [0, 1000] (B,): Bria does not rescale them, unlike Flux.
            img_ids, txt_ids: RoPE position ids (N, 3) and (T, 3).
        """
        assert encoder_hidden_states is not None and timestep is not None
        assert img_ids is not None and txt_ids is not None
        hidden_states = self.x_embedder(hidden_states)
        hidden_states = hidden_states + self.controlnet_x_embedder(
            controlnet_cond.to(self.controlnet_x_embedder.weight.dtype)
        )
        temb = self.time_embed(timestep.to(hidden_states.dtype), dtype=hidden_states.dtype)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        if self.union:
            if controlnet_mode is None:
                raise ValueError("`controlnet_mode` is required by a ControlNet-Union")
            mode_emb = self.controlnet_mode_embedder(controlnet_mode)
            mode_emb = mode_emb.expand(encoder_hidden_states.shape[0], 1, encoder_hidden_states.shape[2])
            encoder_hidden_states = torch.cat([mode_emb, encoder_hidden_states], dim=1)
        # Bria extends the text ids by one row whether or not a mode token was added (all text ids are zero).
        txt_ids = torch.cat([txt_ids[:1], txt_ids], dim=0)
        image_rotary_emb = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))

        block_samples = []
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                temb=temb,
                image_rotary_emb=image_rotary_emb,
            )
            block_samples.append(hidden_states)
        single_block_samples = []
        for block in self.single_transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                temb=temb,
                image_rotary_emb=image_rotary_emb,
            )
            single_block_samples.append(hidden_states)  # image tokens only, as Bria's slice of the joint stream

        scale = conditioning_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(hidden_states.dtype).view(-1, 1, 1)
        double = [linear(s) * scale for s, linear in zip(block_samples, self.controlnet_blocks, strict=True)]
        singles = zip(single_block_samples, self.controlnet_single_blocks, strict=True)
        single = [linear(s) * scale for s, linear in singles]
        return double or None, single or None


class BriaMultiControlNetModel(ModelMixin):
    """Bria's multi wrapper: with one union net, all conditions in ONE forward of that net (each condition's copy
    of the batch with its own mode and scale; the residuals of the copies are then summed); with several nets it
    zips nets with conditions. As Bria's, it takes each condition's modes as a (B,) tensor and gives the net (B, 1).

    One batched forward equals one forward per condition (Bria's loop) within float tolerance, with half the
    launches for depth + canny; `batch_conditions = False` runs Bria's loop (the bench compares the two).
    """

    def __init__(self, controlnets: list[BriaControlNetModel]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(controlnets)
        self.batch_conditions = True
        #: float scales become (B,) tensors, so a net replayed from CUDA graphs (`fast.enable_cuda_graphs`) needs no
        #: new graph per scale value (in bf16 the scale itself is then rounded to bf16)
        self.scales_as_tensors = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        controlnet_mode: list[torch.Tensor],
        conditioning_scale: list[float] | list[torch.Tensor],
        **kwargs: Any,
    ) -> Residuals:
        """Args as `BriaControlNetModel.forward`, one list entry per condition; a scale is a float or (B,)."""
        if self.scales_as_tensors:
            batch, device = hidden_states.shape[0], hidden_states.device
            conditioning_scale = [
                s if isinstance(s, torch.Tensor) else torch.full((batch,), s, device=device) for s in conditioning_scale
            ]
        if len(self.nets) == 1 and len(controlnet_cond) > 1 and self.batch_conditions:
            return self._batched(hidden_states, controlnet_cond, controlnet_mode, conditioning_scale, **kwargs)
        nets = list(self.nets) if len(self.nets) > 1 else [self.nets[0]] * len(controlnet_cond)
        double_sum: list[torch.Tensor] | None = None
        single_sum: list[torch.Tensor] | None = None
        for net, cond, mode, scale in zip(nets, controlnet_cond, controlnet_mode, conditioning_scale, strict=True):
            double, single = net(hidden_states, cond, mode[:, None], scale, **kwargs)
            double_sum = _add(double_sum, double)
            single_sum = _add(single_sum, single)
        return double_sum, single_sum

    def _batched(
        self,
        hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        controlnet_mode: list[torch.Tensor],
        conditioning_scale: list[float] | list[torch.Tensor],
        **kwargs: Any,
    ) -> Residuals:
        """The k conditions as k copies of the batch (B -> kB) through the one union net, residuals summed."""
        k, batch = len(controlnet_cond), hidden_states.shape[0]
        scales = [
            s if isinstance(s, torch.Tensor) else torch.full((batch,), s, device=hidden_states.device)
            for s in conditioning_scale
        ]  # a fill on the device: no host-to-device copy, so no sync inside the step loop
        for name in ("encoder_hidden_states", "timestep"):
            value = kwargs[name]
            kwargs[name] = value.repeat(k, *[1] * (value.ndim - 1))
        double, single = self.nets[0](
            hidden_states.repeat(k, 1, 1),
            torch.cat(controlnet_cond),
            torch.cat(controlnet_mode)[:, None],
            torch.cat(scales),
            **kwargs,
        )
        return _sum_copies(double, k, batch), _sum_copies(single, k, batch)


def _sum_copies(samples: list[torch.Tensor] | None, k: int, batch: int) -> list[torch.Tensor] | None:
    """(kB, ...) residuals of k condition copies -> (B, ...) sums, in condition order (as the loop adds them)."""
    if samples is None:
        return None
    out = []
    for sample in samples:
        copies = sample.view(k, batch, *sample.shape[1:]).unbind(0)
        total = copies[0]
        for copy in copies[1:]:
            total = total + copy
        out.append(total)
    return out


def _add(total: list[torch.Tensor] | None, new: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    if total is None or new is None:
        return total if new is None else new
    return [a + b for a, b in zip(total, new, strict=True)]


class BriaControlledTransformer2DModel(BriaTransformer2DModel):
    """`BriaTransformer2DModel` (same config and weights) whose forward injects single-block ControlNet residuals.

    Workaround of diffusers 0.42.1 bug 1: upstream adds them to `hidden_states[:, text_len:]`, left over from Bria's
    original code where single blocks ran on the joint text+image stream; in diffusers they return image tokens only,
    so the slice is too short and the addition fails. Otherwise a copy of the upstream forward (no LoRA scaling, no
    gradient checkpointing: inference only).
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        controlnet_block_samples: list[torch.Tensor] | None = None,
        controlnet_single_block_samples: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor] | Transformer2DModelOutput:
        assert timestep is not None and img_ids is not None and txt_ids is not None
        hidden_states = self.x_embedder(hidden_states)
        temb = self.time_embed(timestep.to(hidden_states.dtype), dtype=hidden_states.dtype)
        if guidance is not None:
            temb = temb + self.guidance_embed(guidance.to(hidden_states.dtype), dtype=hidden_states.dtype)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

        for index, block in enumerate(self.transformer_blocks):
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                temb=temb,
                image_rotary_emb=image_rotary_emb,
            )
            if controlnet_block_samples is not None:
                interval = int(np.ceil(len(self.transformer_blocks) / len(controlnet_block_samples)))
                hidden_states = hidden_states + controlnet_block_samples[index // interval]
        for index, block in enumerate(self.single_transformer_blocks):
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                temb=temb,
                image_rotary_emb=image_rotary_emb,
            )
            if controlnet_single_block_samples is not None:
                interval = int(np.ceil(len(self.single_transformer_blocks) / len(controlnet_single_block_samples)))
                hidden_states = hidden_states + controlnet_single_block_samples[index // interval]  # the fix

        output = self.proj_out(self.norm_out(hidden_states, temb))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def register_cache_blocks() -> None:
    """Register Bria's blocks for diffusers' cache hooks (First-Block-Cache etc.) with their true output order.

    Workaround of diffusers 0.42.1 bug 2: `BriaSingleTransformerBlock` is missing from `TransformerBlockRegistry`
    (enabling a cache raises), and `BriaTransformerBlock` is registered with `return_hidden_states_index=0` although
    both blocks return `(encoder_hidden_states, hidden_states)`, so a cache would treat text states as image states.
    Idempotent. The caller must also run the transformer inside `transformer.cache_context(...)`, which
    `BriaPipeline` does not.
    """
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    for block_class in (BriaTransformerBlock, BriaSingleTransformerBlock):
        TransformerBlockRegistry.register(
            block_class,
            TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
        )
