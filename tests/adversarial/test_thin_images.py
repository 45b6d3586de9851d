"""Issue 13 item 8: a 1x64 depth image gave a 500; a 1x39,999,999 PNG (78 KB, under the pixel cap) held the worker
at 3.3 GB for 50 s. Both are refused from the image header, before decoding, with a 422 naming the field."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import REQUESTS, data_uri, submit, wait_completed
from tests.files.test_images import png_header


@pytest.mark.parametrize(("field", "size"), [("depth_image_url", (1, 64)), ("canny_image_url", (1, 39_999_999))])
def test_thin_image_is_a_422_naming_the_field(client: httpx.Client, field: str, size: tuple[int, int]) -> None:
    request_id = submit(client, {"prompt": "a", field: data_uri(png_header(*size))})["request_id"]
    status = wait_completed(client, request_id)
    assert status["error_type"] == "validation_error"
    result = client.get(f"{REQUESTS}/{request_id}")
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", field]
