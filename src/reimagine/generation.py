"""The seam between the service and the model: what a `generate` callable takes and returns. No torch here.

The worker decodes the request's images (fetcher, pixel cap) and calls
`generate(inputs, controls, hooks) -> Generated`. The real implementation is
`reimagine.worker.pipeline.generate` bound to the loaded pipe (`worker.loop.load_generate`), which is also a
`BatchGenerate`; tests pass a fake with the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from reimagine.schemas import AspectRatio, ReimagineInput, nearest_aspect_ratio, size_for


@dataclass(frozen=True)
class Controls:
    """The structure images of a request as decoded from their URLs; `None` when the field was empty."""

    depth: Image.Image | None = None
    canny: Image.Image | None = None


def aspect_ratio_for(inputs: ReimagineInput, controls: Controls) -> AspectRatio:
    """The aspect ratio to generate at: the request's, unless it left `aspect_ratio` out and gives a structure image.

    Then the first structure image that takes part (depth, then canny; an image with scale 0 does not) picks the
    nearest of the nine ratios, as Bria's own Structure Reference keeps the reference's ratio. Either way the
    structure images are centre-cropped to the chosen ratio, never stretched. `model_fields_set` is what tells a
    left-out field from a default one: the API stores the input with only the fields the client sent.
    """
    if "aspect_ratio" not in inputs.model_fields_set:
        for image, scale in ((controls.depth, inputs.depth_scale), (controls.canny, inputs.canny_scale)):
            if image is not None and scale > 0:
                return nearest_aspect_ratio(*image.size)
    return AspectRatio(inputs.aspect_ratio)


class Hooks(Protocol):
    """Callbacks `generate` calls; they never raise, except `check_cancelled`."""

    def wants_preview(self, step: int, total: int) -> bool:
        """Asked when step `step` (1-based) is queued: will its `on_step` use a preview? A preview costs a copy from
        the device, so `generate` makes one only when asked."""

    def on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        """After denoising step `step` (1-based) of `total`; `preview` is a low-res view of the latents when
        `wants_preview` said so, else None. Called once the next step is queued (one step behind the device)."""

    def check_cancelled(self) -> None:
        """Raise `reimagine.errors.JobCancelled` if the job was cancelled; called at every step boundary."""

    def log(self, message: str, level: str = "INFO") -> None:
        """A line for the request's logs (fal `logs`)."""


@dataclass
class Generated:
    """What `generate` returns: the image plus the maps it derived (kept as files of the request)."""

    image: Image.Image
    maps: dict[str, Image.Image] = field(default_factory=dict)
    prompt: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class Generate(Protocol):
    def __call__(self, inputs: ReimagineInput, controls: Controls, hooks: Hooks) -> Generated: ...


@runtime_checkable
class BatchGenerate(Generate, Protocol):
    """A `Generate` that can also run compatible requests (equal `batch_key`) as one batch
    (`Settings.batch_requests`): per request its `Generated` or the exception it ended with."""

    def batch(self, requests: list[tuple[ReimagineInput, Controls, Hooks]]) -> list[Generated | Exception]: ...


def batch_key(inputs: ReimagineInput, controls: Controls) -> tuple[Any, ...]:
    """Requests with equal keys can share a denoising batch: the same output size, steps, guidance and set of
    conditions (a condition counts when it has an image and a scale above 0). Prompts, seeds and scales may differ."""
    given = [name for name in ("depth", "canny") if getattr(controls, name) is not None]
    present = tuple(name for name in given if getattr(inputs, f"{name}_scale") > 0)
    size = size_for(aspect_ratio_for(inputs, controls))
    return (size, inputs.num_inference_steps, inputs.guidance_scale, present)


class NullHooks:
    """Hooks that do nothing: the CLI and tests that do not watch progress."""

    def wants_preview(self, step: int, total: int) -> bool:
        return False

    def on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        return None

    def check_cancelled(self) -> None:
        return None

    def log(self, message: str, level: str = "INFO") -> None:
        return None
