"""Wire schemas of `bria/reimagine/3.2`: one typed input drives validation, OpenAPI, the playground form and the CLI."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

#: Bria's recommended negative prompt (BRIA-3.2 README), fal's default.
DEFAULT_NEGATIVE_PROMPT = (
    "Logo,Watermark,Ugly,Morbid,Extra fingers,Poorly drawn hands,Mutation,Blurry,Extra limbs,Gross proportions,"
    "Missing arms,Mutated hands,Long neck,Duplicate,Mutilated,Mutilated hands,Poorly drawn face,Deformed,Bad anatomy,"
    "Cloned face,Malformed limbs,Missing legs,Too many fingers"
)


class AspectRatio(StrEnum):
    SQUARE = "1:1"
    PORTRAIT_2_3 = "2:3"
    LANDSCAPE_3_2 = "3:2"
    PORTRAIT_3_4 = "3:4"
    LANDSCAPE_4_3 = "4:3"
    PORTRAIT_4_5 = "4:5"
    LANDSCAPE_5_4 = "5:4"
    PORTRAIT_9_16 = "9:16"
    LANDSCAPE_16_9 = "16:9"


#: Output size (width, height) per ratio: the SDXL buckets third-party Bria 3.2 hosts use (bria-model.md §3).
#: All multiples of 16 (one latent token per 16x16 px), about one megapixel. The only copy of this table.
SIZES: dict[AspectRatio, tuple[int, int]] = {
    AspectRatio.SQUARE: (1024, 1024),
    AspectRatio.PORTRAIT_2_3: (832, 1216),
    AspectRatio.LANDSCAPE_3_2: (1216, 832),
    AspectRatio.PORTRAIT_3_4: (896, 1152),
    AspectRatio.LANDSCAPE_4_3: (1152, 896),
    AspectRatio.PORTRAIT_4_5: (896, 1088),
    AspectRatio.LANDSCAPE_5_4: (1088, 896),
    AspectRatio.PORTRAIT_9_16: (768, 1344),
    AspectRatio.LANDSCAPE_16_9: (1344, 768),
}


#: Longest `prompt` / `negative_prompt`: the model reads 128 T5 tokens (a few hundred characters); this leaves room
#: for prompts the enhancer shortens, while a megabyte prompt is refused before anything tokenizes it.
MAX_PROMPT_CHARS = 10_000
#: Longest image URL of the http(s) kind (browsers and CDNs stop near 8 KiB).
MAX_URL_CHARS = 8_192
#: Longest image field overall: a data URI of an image at the fetcher's default limit (32 MiB, base64 is 4/3).
#: The exact byte limit (`--fetch-max-bytes`) is checked again when the image is read.
MAX_DATA_URI_CHARS = 48 * 1024 * 1024


#: What `_url_scheme` admits, for the OpenAPI document: an http(s) URL, a data URI, or nothing (spaces around).
_IMAGE_URL_PATTERN = r"^\s*(https?://[^\s\x00-\x1f\x7f]+|data:[^,\r\n\u2028\u2029]*,[^\r\n\u2028\u2029]*)?\s*$"
_HTTP_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")
#: Line breaks a data URI may not hold (the pattern's `.`-like class; `in` tests are fast on megabytes).
_LINE_BREAKS = ("\r", "\n", "\u2028", "\u2029")


def _json_integer(value: object) -> object:
    """Integers as JSON has them: 30 and 30.0, not "30" or true (pydantic's lax mode would take those)."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError("must be an integer")
    return value


#: An int field that takes what the published schema says, and no more.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def size_for(aspect_ratio: AspectRatio | str) -> tuple[int, int]:
    """(width, height) of the generated image for an aspect ratio."""
    return SIZES[AspectRatio(aspect_ratio)]


def nearest_aspect_ratio(width: int, height: int) -> AspectRatio:
    """The named ratio nearest to width/height, compared in log space (2:1 and 1:2 are equally far from 1:1).

    By name, not by size: a 5:4 photo gets 5:4 (1088x896), although 4:3's 1152x896 is a hair nearer to 1.25; the
    crop differs by 0.1 %, and every common photo format lands on its own name.
    """

    def distance(ratio: AspectRatio) -> float:
        w, h = (int(part) for part in ratio.value.split(":"))
        return abs(math.log(width * h / (height * w)))

    return min(AspectRatio, key=distance)


class OutputFormat(StrEnum):
    """Encoding of the generated image (our extension beyond fal's schema)."""

    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


#: MIME type of each output format.
CONTENT_TYPES: dict[OutputFormat, str] = {
    OutputFormat.PNG: "image/png",
    OutputFormat.JPEG: "image/jpeg",
    OutputFormat.WEBP: "image/webp",
}


class ReimagineInput(BaseModel):
    """Input of `bria/reimagine/3.2`, with fal's field names, defaults and ranges."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True, json_schema_extra={"title": "Input"})

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What to generate.",
        examples=["a cozy cabin in the woods"],
        json_schema_extra={"pattern": r"\S"},  # not blank; enforced by `_prompt_not_blank`
    )
    depth_image_url: str = Field(
        "",
        description="Structure reference for depth guidance: a URL, a data URI or an uploaded file's URL. "
        "Empty means no depth condition.",
        max_length=MAX_DATA_URI_CHARS,
        json_schema_extra={"x-fal-file": "image", "pattern": _IMAGE_URL_PATTERN},
    )
    depth_scale: float = Field(0.5, strict=True, ge=0.0, le=1.0, description="Strength of the depth condition.")
    depth_preprocess: bool = Field(True, strict=True, description="Derive the depth map from an ordinary photo first.")
    canny_image_url: str = Field(
        "",
        description="Structure reference for edge guidance: a URL, a data URI or an uploaded file's URL. "
        "Empty means no canny condition.",
        max_length=MAX_DATA_URI_CHARS,
        json_schema_extra={"x-fal-file": "image", "pattern": _IMAGE_URL_PATTERN},
    )
    canny_scale: float = Field(0.5, strict=True, ge=0.0, le=1.0, description="Strength of the canny condition.")
    canny_preprocess: bool = Field(
        True, strict=True, description="Derive the canny edge map from an ordinary photo first."
    )
    aspect_ratio: AspectRatio = Field(
        AspectRatio.SQUARE,
        description="Aspect ratio of the generated image. When a structure image is given (depth or canny, scale "
        "above 0) and this field is left out, the image's own ratio picks the nearest of the nine ratios; when it is "
        "set, the structure image is centre-cropped to this ratio (cover). Structure images are never stretched.",
        # What leaving the field out means, for forms (the playground offers it as a choice of its own).
        json_schema_extra={"x-unset": "follow the structure image (1:1 without one)"},
    )
    num_inference_steps: JsonInt = Field(30, ge=20, le=50, description="Number of denoising steps.")
    seed: JsonInt = Field(
        5555, ge=0, le=2_147_483_647, description="Random seed; same inputs and seed give the same image."
    )
    guidance_scale: float = Field(
        5.0, strict=True, ge=0.0, le=20.0, description="Classifier-free guidance scale (our documented bound: 0..20)."
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT,
        max_length=MAX_PROMPT_CHARS,
        description="What to avoid. Empty means no negative prompt.",
    )
    truncate_prompt: bool = Field(
        True,
        strict=True,
        description="Cut prompts longer than 128 T5 tokens; when false, a longer prompt is an error. It guards your "
        "own prompt: an enhancer's rewrite is cut at 128 tokens either way.",
    )
    prompt_enhancer: bool = Field(
        True,
        strict=True,
        description="Rewrite the prompt with the server's enhancer (an LLM the operator sets up). Without one, as by "
        "default, the prompt is used as written; if the enhancer fails, too.",
    )
    sync_mode: bool = Field(
        False, strict=True, description="Return the image as a data URI in the response instead of a stored file URL."
    )
    # --- our extension beyond fal's schema (fal clients pass unknown fields through) -------------------------
    output_format: OutputFormat = Field(
        OutputFormat.PNG,
        description="Encoding of the image: png (lossless, ~2.6 MB at 1 MP), jpeg or webp (a tenth of that at 90). "
        "Extension beyond fal's schema.",
    )
    output_quality: JsonInt = Field(
        90,
        ge=1,
        le=100,
        description="Quality of a jpeg or webp image (ignored for png). Extension beyond fal's schema.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("`prompt` must not be empty or whitespace only")
        return value

    @field_validator("depth_image_url", "canny_image_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        if value.startswith("data:"):
            if any(brk in value for brk in _LINE_BREAKS):
                raise ValueError("a data URI may not contain line breaks")
            if "," not in value:
                raise ValueError("malformed data URI: no ',' before the data")
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, a data URI, or empty")
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"an http(s) URL may be at most {MAX_URL_CHARS} characters")
        if _HTTP_URL.fullmatch(value) is None:
            raise ValueError("an http(s) URL needs a host and may not contain spaces or control characters")
        return value


class StrictReimagineInput(ReimagineInput):
    """`--strict-inputs`: unknown fields are a 422 instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class ImageFile(BaseModel):
    url: str
    content_type: str = "image/png"
    file_name: str
    file_size: int
    width: int
    height: int


class ReimagineOutput(BaseModel):
    image: ImageFile
    seed: int = Field(description="The seed used (extra to fal's schema; clients ignore it).")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase (extra to fal's schema).")


class LogEntry(BaseModel):
    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"] = "INFO"
    source: Literal["USER"] = "USER"
    timestamp: str


class QueueStatus(BaseModel):
    """A status answer (fal-protocol.md §4.2). `reimagine` is our extra key; fal clients ignore it."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    reimagine: dict[str, Any] | None = None
