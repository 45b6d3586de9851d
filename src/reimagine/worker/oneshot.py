"""`reimagine generate` (one image, no server) and `reimagine models pull` (download the weights)."""

from __future__ import annotations

import base64
import binascii
import io
import sys
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from reimagine.config import Settings
from reimagine.errors import InputError, ModelMissing
from reimagine.generation import Controls
from reimagine.images import encode_png
from reimagine.schemas import ReimagineInput

__all__ = ["pull_models", "run_generate", "weight_patterns"]

# What `models pull` fetches of BRIA-3.2: its diffusers layout (the main branch also holds the original remote-code
# files). Of the ControlNet and the depth model: `weight_patterns`.
_BRIA_FILES = ["model_index.json", "transformer/*", "text_encoder/*", "tokenizer/*", "vae/*", "scheduler/*"]


def weight_patterns(files: list[str]) -> list[str]:
    """What `from_pretrained` needs of a model repository holding `files`: its configs and one weight format.

    safetensors when the repository has them (what `from_pretrained` prefers), else the PyTorch `.bin` files: Bria's
    own ControlNet loader passes `use_safetensors=False`, so its release may ship only those. Index files of sharded
    weights are JSON and come with the configs.
    """
    weights = "*.safetensors" if any(name.endswith(".safetensors") for name in files) else "*.bin"
    return ["*.json", "*.txt", weights]


class _ProgressHooks:
    """`Hooks` for a terminal: a tqdm bar for the steps, log lines above it."""

    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, leave=False)

    def wants_preview(self, step: int, total: int) -> bool:
        return False

    def on_step(self, step: int, total: int, preview: Image.Image | None) -> None:
        self.bar.total = total
        self.bar.update(step - self.bar.n)

    def check_cancelled(self) -> None:
        return None

    def log(self, message: str, level: str = "INFO") -> None:
        tqdm.write(f"{level}: {message}" if level != "INFO" else message, file=sys.stderr)


def run_generate(
    settings: Settings, inputs: ReimagineInput, depth_image: str | None, canny_image: str | None, output: Path
) -> Path:
    """Generate one image locally and write it as a PNG to `output`; returns `output`.

    Args:
        depth_image, canny_image: a local path, an http(s) URL or a data URI; None for no such condition.
    """
    from reimagine.worker.pipeline import generate, load_pipeline

    controls = Controls(
        depth=_read_image(depth_image, "depth_image") if depth_image else None,
        canny=_read_image(canny_image, "canny_image") if canny_image else None,
    )
    hooks = _ProgressHooks(inputs.num_inference_steps)
    pipe = load_pipeline(settings)
    try:
        generated = generate(pipe, inputs, controls, hooks)
    finally:
        hooks.bar.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(encode_png(generated.image))
    return output


def _read_image(source: str, field: str) -> Image.Image:
    """A PIL image from a local path, an http(s) URL or a data URI (the CLI trusts its own user: no SSRF policy)."""
    try:
        if source.startswith("data:"):
            data = base64.b64decode(source.partition(",")[2], validate=False)
        elif source.startswith(("http://", "https://")):
            response = httpx.get(source, follow_redirects=True, timeout=60.0)
            response.raise_for_status()
            data = response.content
        else:
            data = Path(source).expanduser().read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as exc:
        # PIL's own message names its BytesIO object, not the file.
        raise InputError(
            field, f"{source[:100]!r} is not an image (PNG, JPEG, WebP or another format PIL reads)"
        ) from exc
    except (OSError, ValueError, binascii.Error, httpx.HTTPError) as exc:
        raise InputError(field, f"cannot read an image from {source[:100]!r}: {exc}") from exc
    return image.convert("RGB")


def pull_models(settings: Settings) -> None:
    """Download Bria 3.2, its ControlNet-Union and the depth model into the Hugging Face cache.

    Bria's repositories are gated: accept the licence on each model page while logged in, and give a token
    (`hf auth login` or HF_TOKEN). About 35 GB (the transformer is stored in fp32, T5-XXL in fp16).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if settings.is_random:
        print(f"model {settings.model!r} is built locally from random weights: nothing to download", file=sys.stderr)
        return
    if settings.offline:
        raise ModelMissing("`models pull` needs the network; offline mode is on (REIMAGINE_OFFLINE)")
    print(
        "Downloading Bria 3.2 (~35 GB in all). Bria's models are gated: log in with `hf auth login` (or set "
        "HF_TOKEN) and accept the licence on https://huggingface.co/briaai/BRIA-3.2 and "
        "https://huggingface.co/briaai/BRIA-3.2-ControlNet-Union first.",
        file=sys.stderr,
    )
    for source, patterns in (
        (settings.model, _BRIA_FILES),
        (settings.controlnet, None),
        (settings.depth_model, None),
    ):
        if Path(source).is_dir():
            print(f"{source}: a local folder, nothing to download", file=sys.stderr)
            continue
        print(f"{source}: downloading", file=sys.stderr)
        try:
            patterns = patterns or weight_patterns(HfApi().list_repo_files(source))
            path = snapshot_download(source, allow_patterns=patterns)
        except GatedRepoError as exc:
            raise ModelMissing(
                f"{source} is gated: accept its licence on https://huggingface.co/{source} with the account whose "
                "token you use (`hf auth login` or HF_TOKEN), then run `reimagine models pull` again"
            ) from exc
        except (RepositoryNotFoundError, HfHubHTTPError, OSError) as exc:
            raise ModelMissing(f"cannot download {source}: {type(exc).__name__}: {exc}") from exc
        print(f"{source}: ready in {path}", file=sys.stderr)
