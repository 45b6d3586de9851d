"""`load_image`: data URIs, our own file URLs (read from storage), remote URLs, and what is refused."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from reimagine.config import Settings
from reimagine.errors import FetchRefused, InputError
from reimagine.images import data_uri, encode_png, load_image
from reimagine.storage.local import LocalStorage
from tests.files.conftest import LoopbackServer, png_bytes

OWN = "http://reimagine.test:8000"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width`x`height` in its header and carries one tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.files_dir)


def load(url: str, settings: Settings, storage: LocalStorage) -> Image.Image:
    return load_image(url, "canny_image_url", settings=settings, storage=storage, own_base_urls=[OWN])


def test_data_uri_decodes_to_rgb(settings: Settings, storage: LocalStorage) -> None:
    rgba = Image.new("RGBA", (16, 12), (10, 20, 30, 255))
    image = load(data_uri(encode_png(rgba), "image/png"), settings, storage)
    assert image.mode == "RGB" and image.size == (16, 12)
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_content_is_sniffed_not_the_declared_type(settings: Settings, storage: LocalStorage) -> None:
    assert load(data_uri(png_bytes(), "text/plain"), settings, storage).size == (16, 12)


def test_data_uri_that_is_not_an_image(settings: Settings, storage: LocalStorage) -> None:
    with pytest.raises(InputError, match="not an image") as caught:
        load(data_uri(b"<html></html>", "image/png"), settings, storage)
    assert caught.value.field == "canny_image_url"


def test_malformed_data_uris(settings: Settings, storage: LocalStorage) -> None:
    with pytest.raises(InputError, match="base64"):
        load("data:image/png;base64,@@@", settings, storage)
    with pytest.raises(InputError, match="malformed"):
        load("data:image/png;base64", settings, storage)


def test_data_uri_size_cap(tmp_path: Path, storage: LocalStorage) -> None:
    small = Settings(data_dir=tmp_path, fetch_max_bytes=100)
    with pytest.raises(FetchRefused, match="100 byte limit"):
        load(data_uri(png_bytes((64, 64)) + b"\0" * 200, "image/png"), small, storage)


def test_pixel_cap_checked_before_decoding(settings: Settings, storage: LocalStorage) -> None:
    bomb = png_header(10_000, 10_000)  # above our 40 MP cap, below PIL's own error
    with pytest.raises(InputError, match="pixel limit"):
        load(data_uri(bomb, "image/png"), settings, storage)


def test_pil_decompression_bomb_becomes_input_error(tmp_path: Path, storage: LocalStorage) -> None:
    lenient = Settings(data_dir=tmp_path, max_image_pixels=10**12)
    with pytest.raises(InputError, match="decompression bomb"):
        load(data_uri(png_header(30_000, 30_000), "image/png"), lenient, storage)


def test_truncated_image(settings: Settings, storage: LocalStorage) -> None:
    data = png_bytes((64, 64))
    with pytest.raises(InputError, match="decoded"):
        load(data_uri(data[: len(data) // 2], "image/png"), settings, storage)


def test_only_common_raster_formats_are_decoded(settings: Settings, storage: LocalStorage) -> None:
    # EPS goes to Ghostscript where it is installed: it must be refused before any decoder sees it.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    with pytest.raises(InputError, match="supported format"):
        load(data_uri(eps, "application/postscript"), settings, storage)
    for image_format in ("JPEG", "WEBP", "GIF", "TIFF"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format=image_format)
        assert load(data_uri(buffer.getvalue(), f"image/{image_format.lower()}"), settings, storage).size == (8, 8)


@pytest.mark.parametrize("size", [(1, 64), (64, 7), (1, 39_999_999), (9, 73), (20_000, 2_000)])
def test_thin_images_are_refused_from_the_header(
    size: tuple[int, int], settings: Settings, storage: LocalStorage
) -> None:
    # Issue 13 item 8: a 1x64 image broke depth preprocessing (500); a 1x39,999,999 PNG (78 KB, under the pixel
    # cap) took gigabytes to decode. Both are refused from the header alone: the IDAT here decodes to nothing.
    with pytest.raises(InputError, match="px|factor") as refused:
        load(data_uri(png_header(*size), "image/png"), settings, storage)
    assert refused.value.field == "canny_image_url"


def test_own_file_url_is_read_from_storage(settings: Settings, storage: LocalStorage) -> None:
    stored = storage.put(png_bytes((10, 14)), "image/png")
    # reimagine.test does not resolve: anything but a storage read would fail.
    assert load(f"{OWN}/files/{stored.key}", settings, storage).size == (10, 14)
    assert load(f"{OWN}/files/{stored.key}?download=1", settings, storage).size == (10, 14)


def test_own_file_url_unknown_key(settings: Settings, storage: LocalStorage) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load(f"{OWN}/files/{'0' * 64}.png", settings, storage)


def test_remote_url_through_the_fetcher(tmp_path: Path, storage: LocalStorage, loopback: LoopbackServer) -> None:
    url = loopback.body("/in.png", png_bytes((18, 8)), "application/octet-stream")
    with pytest.raises(FetchRefused, match="private"):
        load(url, Settings(data_dir=tmp_path), storage)
    assert load(url, Settings(data_dir=tmp_path, allow_hosts=["127.0.0.1"]), storage).size == (18, 8)


def test_remote_non_image(tmp_path: Path, storage: LocalStorage, loopback: LoopbackServer) -> None:
    url = loopback.body("/page", b"<html>hi</html>", "image/png")
    with pytest.raises(InputError, match="not an image"):
        load(url, Settings(data_dir=tmp_path, allow_hosts=["127.0.0.1"]), storage)


def test_other_schemes_refused(settings: Settings, storage: LocalStorage) -> None:
    with pytest.raises(InputError, match="http"):
        load("file:///etc/passwd", settings, storage)


def test_encoders_round_trip() -> None:
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    uri = data_uri(encode_png(image), "image/png")
    assert uri.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.getpixel((0, 0)) == (1, 2, 3)
