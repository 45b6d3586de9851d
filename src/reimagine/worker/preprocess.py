"""Structure maps from ordinary photos: canny edges (OpenCV) and relative depth (Depth Anything V2).

Both follow Bria's own preprocessing (bria-model.md §4), in Bria's order: the photo is first fitted to the generation
size (`fit_to_size`: centre-crop to its ratio, Lanczos resize, as Bria's `resize_img`), then the map is derived
there: `cv2.Canny(image, 100, 200)` stacked to RGB, and the depth-estimation post-processing of transformers'
pipeline (upsample to the input size, min-max to 0..255). Canny on a 4000x3000 upload and then a resize would give
faint grey hairlines; on a small upload, smeared staircases; the ControlNet was trained on crisp 1-px binary edges.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

__all__ = ["DepthEstimator", "canny_map", "fit_to_size", "load_depth_estimator"]


def fit_to_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` centre-cropped to the ratio of `size` (width, height) and resized to it with Lanczos: covers the
    whole size, never stretched (a circle stays a circle)."""
    return ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.LANCZOS)


def canny_map(image: Image.Image) -> Image.Image:
    """Canny edges (thresholds 100/200, as Bria and diffusers' ControlNet guide) as a white-on-black RGB image."""
    edges = cv2.Canny(np.asarray(image.convert("RGB")), 100, 200)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


class DepthEstimator:
    """A depth model and its image processor on one device; calling it gives a grey RGB map, near = bright."""

    def __init__(self, model: Any, processor: Any) -> None:
        """`model`: a `DepthAnythingForDepthEstimation` (or DPT); `processor`: its image processor."""
        self.model = model.eval()
        self.processor = processor

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt").to(self.model.device, self.model.dtype)
        predicted = self.model(**inputs).predicted_depth  # (1, h, w), relative inverse depth
        predicted = torch.nn.functional.interpolate(
            predicted[:, None].float(), size=image.size[::-1], mode="bicubic", align_corners=False
        )[0, 0]
        low, high = predicted.min(), predicted.max()
        normalised = (predicted - low) / torch.clamp(high - low, min=1e-8)
        grey = (normalised * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(grey).convert("RGB")

    def save_pretrained(self, directory: str) -> None:
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)


def load_depth_estimator(source: str, device: torch.device, *, offline: bool) -> DepthEstimator:
    """Depth Anything V2 from a Hugging Face id or folder (`depth-anything/Depth-Anything-V2-Small-hf` by default).

    It is small (25 M parameters), so fp32 everywhere. `ModelMissing` handling is the caller's.
    """
    processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline)
    model: Any = DepthAnythingForDepthEstimation.from_pretrained(source, local_files_only=offline, dtype=torch.float32)
    return DepthEstimator(model.to(device), processor)
