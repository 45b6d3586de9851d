"""The playground, round 2: what a user sees in the viewport, at a wide and a narrow size (issue 17).

Each test runs at 1360x1000 and at 390x844 and checks visibility in the viewport, not presence in the DOM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from tests.conftest import ServeProcess
from tests.playground.test_playground import browser, fresh_page, open_playground, png_file  # noqa: F401

pytestmark = pytest.mark.slow

VIEWPORTS: dict[str, ViewportSize] = {"wide": {"width": 1360, "height": 1000}, "narrow": {"width": 390, "height": 844}}


@pytest.fixture(params=list(VIEWPORTS))
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:  # noqa: F811
    with fresh_page(browser, request, VIEWPORTS[request.param]) as opened:
        yield opened


def fill_long_form(page: Page, prompt: str, steps: str = "20") -> None:
    """The form at its tallest (Advanced open), scrolled to the Generate button at its bottom, as a user does."""
    page.fill("[name=prompt]", prompt)
    page.locator("details.advanced").evaluate("node => node.open = true")
    page.fill("[name=num_inference_steps]", steps)
    page.locator("#submit").scroll_into_view_if_needed()


def test_status_is_in_view_within_a_second_of_generate(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    fill_long_form(page, "a tall form sleep=0.15")
    assert page.evaluate("window.scrollY") > 0 or page.viewport_size == VIEWPORTS["wide"]
    page.click("#submit")
    state = page.locator("#state")
    expect(state).to_be_in_viewport(timeout=1_000)
    expect(state).to_have_text(re.compile("^(Submitted|In queue|Generating)"), timeout=1_000)
    expect(page.locator("#step")).to_contain_text("/20", timeout=5_000)
    expect(page.locator("#step")).to_be_in_viewport()
    expect(page.locator("#progress")).to_be_in_viewport()
    expect(state).to_have_text("Done", timeout=30_000)
    expect(state).to_be_in_viewport()


def test_a_wrong_key_is_explained_next_to_the_button_and_cleared(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key="nobody:nothing")
    fill_long_form(page, "anything")
    page.click("#submit")
    beside = page.locator("#submit-error")
    expect(beside).to_contain_text("401")
    expect(beside).to_contain_text("API key")
    expect(beside).to_be_in_viewport()
    expect(page.locator("#banner")).to_contain_text("401")  # and at the top, for whoever scrolls up

    # Changing the key makes the warning stale: both go at once.
    page.fill("#api-key", server.key)
    expect(beside).to_be_hidden()
    expect(page.locator("#banner")).to_be_hidden()
    page.click("#submit")
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
    expect(beside).to_be_hidden()


def test_a_successful_call_clears_a_stale_banner(page: Page, tmp_path_factory: pytest.TempPathFactory) -> None:
    limited = ServeProcess(tmp_path_factory.mktemp("limited"), "--submit-rate-per-min", "1").start()
    try:
        assert limited.key
        open_playground(page, limited, key=limited.key)
        page.fill("[name=prompt]", "first")
        page.click("#submit")
        expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
        page.click("#submit")
        expect(page.locator("#submit-error")).to_contain_text("429")
        expect(page.locator("#submit-error")).to_be_in_viewport()
        # Any call that works means the warning no longer holds (here: an upload through the storage API).
        page.set_input_files("[data-file-for=canny_image_url]", files=[png_file()])
        expect(page.locator("[name=canny_image_url]")).to_have_value(re.compile("/files/"))
        expect(page.locator("#banner")).to_be_hidden()
        expect(page.locator("#submit-error")).to_be_hidden()
    finally:
        limited.stop()


def test_fields_that_do_nothing_here_are_greyed_out_with_a_reason(page: Page, server: ServeProcess) -> None:
    capabilities = httpx.get(server.url + "/bria/reimagine/capabilities").json()["fields"]
    assert capabilities["prompt_enhancer"]["effective"] is False  # this server has no --enhancer
    assert capabilities["sync_mode"]["playground"] is False
    assert server.key
    open_playground(page, server, key=server.key)
    page.locator("details.advanced").evaluate("node => node.open = true")
    for name, reason in (("prompt_enhancer", "no prompt enhancer"), ("sync_mode", "follows the queue")):
        box = page.locator(f"[name={name}]")
        expect(box).to_be_disabled()
        expect(box).not_to_be_checked()
        note = page.locator(f"[data-note-for={name}]")
        note.scroll_into_view_if_needed()
        expect(note).to_be_in_viewport()
        expect(note).to_contain_text(reason)
    # What is greyed out is not sent: the server's default applies.
    page.fill("[name=prompt]", "nothing extra")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/bria/reimagine/3.2")) as sent:
        page.click("#submit")
    body = json.loads(sent.value.post_data or "{}")
    assert body == {"prompt": "nothing extra"}
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)


def test_slider_and_box_stay_in_step_and_the_field_says_why(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    page.locator("details.advanced").evaluate("node => node.open = true")
    box = page.locator("[name=num_inference_steps]")
    slider = page.locator("[data-range-for=num_inference_steps]")
    error = page.locator("[data-error-for=num_inference_steps]")

    box.fill("5")  # while typing: the slider shows the nearest value it can, and the field says what is wrong
    expect(error).to_have_text("Must be between 20 and 50.")
    expect(box).to_have_attribute("aria-invalid", "true")
    box.press("Tab")  # committed: brought into range, both agree, and the field keeps a line saying so
    expect(box).to_have_value("20")
    expect(slider).to_have_value("20")
    expect(error).to_contain_text("5 is below the minimum (20–50): set to 20.")
    expect(error).to_be_in_viewport()

    box.fill("77")
    page.fill("[name=prompt]", "sent in range sleep=0")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/bria/reimagine/3.2")) as sent:
        page.click("#submit")
    assert json.loads(sent.value.post_data or "{}")["num_inference_steps"] == 50
    expect(box).to_have_value("50")
    expect(slider).to_have_value("50")
    expect(error).to_contain_text("77 is above the maximum (20–50): set to 50.")
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
    expect(error).to_contain_text("set to 50")  # kept after the call, until the field is edited

    slider.fill("30")
    expect(box).to_have_value("30")
    expect(error).to_be_empty()


def test_a_server_422_still_shows_next_to_its_field(page: Page, server: ServeProcess) -> None:
    """A field with no slider (the seed) is not clamped by the page: the server's 422 names it."""
    assert server.key
    open_playground(page, server, key=server.key)
    page.fill("[name=prompt]", "anything")
    page.locator("details.advanced").evaluate("node => node.open = true")
    page.fill("[name=seed]", "-1")
    page.click("#submit")
    error = page.locator("[data-error-for=seed]")
    expect(error).to_contain_text("0")
    expect(error).to_be_in_viewport()
    expect(page.locator("[name=seed]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#submit-error")).to_contain_text("highlighted field")
    expect(page.locator("#state")).to_have_text("Ready")


def test_derived_map_beside_the_result_with_an_opacity_slider(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    page.set_input_files("[data-file-for=canny_image_url]", files=[png_file()])
    expect(page.locator("[name=canny_image_url]")).to_have_value(re.compile("/files/"))
    page.fill("[name=prompt]", "compare me")
    page.click("#submit")
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)

    result, derived, overlay = page.locator("#result"), page.locator("#map"), page.locator("#overlay")
    expect(derived).to_have_attribute("src", re.compile(re.escape(server.url) + "/files/"))
    page.locator("#compare").scroll_into_view_if_needed()
    for node in (result, derived, page.locator("#compare-opacity")):
        expect(node).to_be_in_viewport()
    expect(page.locator("#map-caption")).to_have_text("canny map")
    r, d = result.bounding_box(), derived.bounding_box()
    assert r and d and d["x"] >= r["x"] + r["width"] - 1, f"the map is not beside the result: {r} {d}"
    expect(overlay).to_be_hidden()  # 0 %: the result alone

    page.locator("#compare-opacity").fill("0.5")
    expect(overlay).to_be_visible()
    assert overlay.evaluate("node => getComputedStyle(node).opacity") == "0.5"
    expect(page.locator("#compare-value")).to_have_text("50 %")
    o = overlay.bounding_box()
    assert o and abs(o["x"] - r["x"]) < 2 and abs(o["width"] - r["width"]) < 2, "the overlay does not cover the result"


def test_favicon_and_a_badge_that_covers_nothing(page: Page, server: ServeProcess) -> None:
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    assert server.key
    open_playground(page, server, key=server.key)
    icon = httpx.get(server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert page.locator("link[rel=icon]").get_attribute("href")
    page.set_input_files("[data-file-for=canny_image_url]", files=[png_file()])
    expect(page.locator("[name=canny_image_url]")).to_have_value(re.compile("/files/"))
    page.fill("[name=prompt]", "badge")
    page.click("#submit")
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
    page.locator("[data-map=canny]").check()
    zone = page.locator("[data-drop-for=canny_image_url]")
    badge = page.locator("[data-field=canny_image_url] .badge")
    expect(badge).to_have_text("canny map")
    badge.scroll_into_view_if_needed()
    expect(badge).to_be_in_viewport()
    thumb = zone.locator("img.thumb").bounding_box()
    label = badge.bounding_box()
    assert thumb and label
    overlaps = label["y"] < thumb["y"] + thumb["height"] and thumb["y"] < label["y"] + label["height"]
    assert not overlaps, f"the badge covers the picture: {label} over {thumb}"
    page.wait_for_load_state("networkidle")
    assert not missing, f"404s on load: {missing}"


def test_history_is_the_keys_requests_on_the_server_and_deletes_there(page: Page, server: ServeProcess) -> None:
    """A request made elsewhere (here with httpx) shows in the strip; deleting it there deletes it on the server."""
    assert server.key
    elsewhere = httpx.post(
        server.url + "/bria/reimagine/3.2", json={"prompt": "made by another client"}, headers=server.headers()
    ).json()
    result_url = f"{server.url}/bria/reimagine/requests/{elsewhere['request_id']}"
    deadline = 200
    while httpx.get(result_url + "/status", headers=server.headers()).json()["status"] != "COMPLETED" and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    open_playground(page, server, key=server.key)
    expect(page.locator("#history-source")).to_have_text("from this server")
    entry = page.locator(f"#history li:has([data-request='{elsewhere['request_id']}'])")
    entry.scroll_into_view_if_needed()
    expect(entry).to_be_in_viewport()
    expect(entry).to_contain_text("made by another client")
    expect(entry.locator(".when")).to_contain_text("done")
    expect(entry.locator("img")).to_have_attribute("src", re.compile(re.escape(server.url) + "/files/"))

    entry.locator("[data-delete]").click()
    expect(entry).to_have_count(0)
    assert httpx.get(result_url, headers=server.headers()).status_code == 404

    # Without a key the strip is this browser's own, and says so.
    page.fill("#api-key", "")
    expect(page.locator("#history-source")).to_have_text("in this browser")


def test_the_page_never_scrolls_sideways(page: Page, server: ServeProcess) -> None:
    """However long the history strip grows, it scrolls in its own box; the page stays as wide as the screen."""
    assert server.key
    for n in range(12):
        httpx.post(server.url + "/bria/reimagine/3.2", json={"prompt": f"filler {n}"}, headers=server.headers())
    open_playground(page, server, key=server.key)
    page.wait_for_function("document.querySelectorAll('#history button.open').length >= 12")
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size
    assert viewport and width <= viewport["width"], f"the page is {width} px wide in a {viewport['width']} px window"
