"""Request, image and hooks helpers of the pipeline tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from reimagine.errors import JobCancelled
from reimagine.schemas import ReimagineInput


def make_inputs(**fields: Any) -> ReimagineInput:
    """A validated request; `num_inference_steps` below the schema's 20 keeps tests fast (set after validation)."""
    steps = fields.pop("num_inference_steps", 2)
    fields.setdefault("prompt", "a red cat on the sofa")
    fields.setdefault("prompt_enhancer", False)
    return ReimagineInput.model_validate(fields).model_copy(update={"num_inference_steps": steps})


def photo(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    """A smooth synthetic photo with edges: a gradient with a bright rectangle and a dark disc."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128.0)], axis=-1)
    rgb[height // 4 : height // 2, width // 5 : width // 2] = 240
    rgb[(x - 0.7 * width) ** 2 + (y - 0.6 * height) ** 2 < (height / 5) ** 2] = 20
    rng = np.random.default_rng(seed)
    rgb += rng.normal(0, 2, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype("uint8"))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


class RecordingHooks:
    """Hooks that remember steps and logs; `cancel_at` makes the n-th cancel check raise; `previews` says whether
    it wants a preview of every step."""

    def __init__(self, cancel_at: int | None = None, *, previews: bool = True) -> None:
        self.steps: list[tuple[int, int, Image.Image | None]] = []
        self.logs: list[tuple[str, str]] = []
        self.checks = 0
        self.cancel_at = cancel_at
        self.previews = previews

    def wants_preview(self, step: int, total: int) -> bool:
        return self.previews

    def on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        self.steps.append((step, total, preview))

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_at is not None and self.checks >= self.cancel_at:
            raise JobCancelled

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append((message, level))
