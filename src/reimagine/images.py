"""Input images in, PNG bytes out: `load_image` (URL, data URI or one of our own file URLs) and the encoders."""

from __future__ import annotations

import base64
import binascii
import io
import urllib.parse
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from reimagine.config import Settings
from reimagine.errors import FetchRefused, InputError
from reimagine.fetcher import fetch
from reimagine.storage import Storage, is_valid_key

#: The formats an input image may be in. Left to itself PIL tries every format it knows, EPS among them, which it
#: renders with Ghostscript where that is installed: a request's bytes must never reach a PostScript interpreter.
#: (JPEG includes MPO, the multi-picture JPEG of phone cameras.)
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: Shortest side of an input image. Control images are resized to the output (768 px and more a side, 16 px per
#: latent token): a side under half a token carries no structure to condition on.
MIN_IMAGE_SIDE = 8
#: Longest side over shortest side. Outputs are at most 16:9; a 1x40,000,000 strip is under the pixel cap and
#: yet, resized for the depth model, costs gigabytes. Both limits are read from the header, before any decoding.
MAX_IMAGE_ASPECT = 8


def load_image(url: str, field: str, *, settings: Settings, storage: Storage, own_base_urls: list[str]) -> Image.Image:
    """Decode the image at `url` into RGB.

    Args:
        url: `http(s)://...`, `data:<type>;base64,...`, or `<own base>/files/<key>`.
        field: the request field, named in errors.
        settings: limits and the fetcher's allow-list.
        storage: where our own files are read from; they never go over HTTP (the server may not reach itself).
        own_base_urls: base URLs under which this server hands out file links.

    Raises:
        InputError: the URL is unusable or its content is not an acceptable image (FetchRefused for remote URLs).
    """
    if url.startswith("data:"):
        data = _decode_data_uri(url, field, settings)
    elif (key := _own_file_key(url, own_base_urls)) is not None:
        try:
            data = storage.get(key)[1]
        except (KeyError, ValueError):
            raise InputError(field, f"file {url} does not exist (expired or never uploaded)") from None
    elif url.startswith(("http://", "https://")):
        data = fetch(url, settings, field).data
    else:
        raise InputError(field, "must be an http(s) URL or a data URI")
    return _decode_image(data, field, settings)


#: zlib level for the PNGs we write. Pillow's default (6) spends 0.8 s of CPU on one 1344x768 photographic image
#: here, a large share of a GPU job's time; level 1 takes 0.1 s for a file about 17 % larger (bench/png.py).
PNG_COMPRESS_LEVEL = 1


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def encode_image(image: Image.Image, output_format: str, quality: int) -> bytes:
    """The image as `output_format` (png, jpeg or webp); `quality` applies to the lossy two."""
    if output_format == "png":
        return encode_png(image)
    out = io.BytesIO()
    if output_format == "jpeg":
        # JPEG has no alpha; the pipeline's images are RGB already, a converted map may not be.
        image.convert("RGB").save(out, format="JPEG", quality=quality)
    elif output_format == "webp":
        # method 4 of 0-6: Pillow's default; 6 is several times slower for a few percent.
        image.save(out, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"`output_format` must be png, jpeg or webp, got {output_format!r}")
    return out.getvalue()


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def _own_file_key(url: str, own_base_urls: list[str]) -> str | None:
    path = url.split("?", 1)[0].split("#", 1)[0]
    for base in own_base_urls:
        prefix = base.rstrip("/") + "/files/"
        if path.startswith(prefix):
            key = path[len(prefix) :]
            if is_valid_key(key):
                return key
    return None


def _decode_data_uri(url: str, field: str, settings: Settings) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise InputError(field, "malformed data URI: no ',' before the data")
    # base64 grows data by 4/3: refuse an oversized URI before decoding it.
    if len(payload) > settings.fetch_max_bytes * 4 // 3 + 4:
        raise FetchRefused(field, f"data URI is larger than the {settings.fetch_max_bytes} byte limit")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise InputError(field, "malformed data URI: invalid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > settings.fetch_max_bytes:
        raise FetchRefused(field, f"data URI is larger than the {settings.fetch_max_bytes} byte limit")
    return data


def _decode_image(data: bytes, field: str, settings: Settings) -> Image.Image:
    """Sniff and decode; the pixel cap is checked on the header, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our own cap below is the decompression-bomb guard; PIL's warning (MAX_IMAGE_PIXELS) would duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > settings.max_image_pixels:
                raise InputError(
                    field,
                    f"image is {width}x{height} = {width * height} pixels, above the "
                    f"{settings.max_image_pixels} pixel limit",
                )
            if min(width, height) < MIN_IMAGE_SIDE:
                raise InputError(field, f"image is {width}x{height}: each side must be at least {MIN_IMAGE_SIDE} px")
            if max(width, height) > MAX_IMAGE_ASPECT * min(width, height):
                raise InputError(
                    field, f"image is {width}x{height}: its sides may differ by a factor of {MAX_IMAGE_ASPECT} at most"
                )
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise InputError(field, f"not an image, or not in a supported format ({', '.join(_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image refused as a decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL reports truncated or corrupt data as OSError (or SyntaxError from some format parsers).
        raise InputError(field, f"image could not be decoded: {exc}") from None
