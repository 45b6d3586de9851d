"""Issue 13 item 1: an 8 MB prompt with `truncate_prompt=false` froze the API for 14 s while it was tokenized on
the event loop (and with truncation on, a 60 MB prompt held the worker for minutes). Text fields are capped in the
schema now, and tokenizing runs off the loop."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from reimagine.schemas import MAX_PROMPT_CHARS, MAX_URL_CHARS
from tests.adversarial.probe import LivenessProbe
from tests.api.helpers import ENDPOINT
from tests.conftest import ServeProcess


def _fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    return {str(item["loc"][-1]) for item in response.json()["detail"]}


def test_oversized_prompts_are_refused_while_the_api_stays_live(server: ServeProcess, client: httpx.Client) -> None:
    prompt = "a cat " * (8 * 1024 * 1024 // 6)  # 8 MB
    bodies = {truncate: json.dumps({"prompt": prompt, "truncate_prompt": truncate}) for truncate in (False, True)}

    def attack(truncate: bool) -> httpx.Response:
        return client.post(ENDPOINT, content=bodies[truncate], headers={"content-type": "application/json"})

    with LivenessProbe(server.url) as probe, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(attack, [False, True] * 4))
    probe.report("8 MB prompts x8")
    probe.assert_alive()
    for response in answers:
        assert _fields(response) == {"prompt"}
        assert str(MAX_PROMPT_CHARS) in response.text


def test_every_text_field_is_capped(client: httpx.Client) -> None:
    long = "x" * (MAX_PROMPT_CHARS + 1)
    assert _fields(client.post(ENDPOINT, json={"prompt": "a", "negative_prompt": long})) == {"negative_prompt"}
    url = "https://example.com/" + "a" * MAX_URL_CHARS
    assert _fields(client.post(ENDPOINT, json={"prompt": "a", "depth_image_url": url})) == {"depth_image_url"}
    assert _fields(client.post(ENDPOINT, json={"prompt": "a", "canny_image_url": url})) == {"canny_image_url"}


def test_a_long_prompt_under_the_cap_is_counted_off_the_loop(server: ServeProcess, client: httpx.Client) -> None:
    # The longest allowed prompt, untruncated: tokenized (in a thread) and refused with its token count.
    prompt = ("a photo of a red cat " * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    with LivenessProbe(server.url) as probe, ThreadPoolExecutor(4) as pool:
        body = {"prompt": prompt, "truncate_prompt": False}
        answers = list(pool.map(lambda _: client.post(ENDPOINT, json=body), range(16)))
    probe.report("10,000-character prompts x16")
    probe.assert_alive()
    for response in answers:
        assert _fields(response) == {"prompt"}
        assert "tokens" in response.text


def test_the_caps_are_in_the_openapi_document(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ReimagineInput"]["properties"]
    assert schema["prompt"]["maxLength"] == MAX_PROMPT_CHARS
    assert schema["negative_prompt"]["maxLength"] == MAX_PROMPT_CHARS
    assert schema["depth_image_url"]["maxLength"] > MAX_URL_CHARS
