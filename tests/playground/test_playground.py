"""The playground in a real headless Chromium (Debian's `chromium`), against `reimagine serve` with the fake generate.

Failed tests leave a screenshot in tests/artifacts/. `REIMAGINE_PLAYGROUND_SCREENSHOT=docs/playground.png` also
runs `test_docs_screenshot`, which serves the tiny model and saves the finished state for the README.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, FilePayload, Page, ViewportSize, expect, sync_playwright

from tests.conftest import REPO, ServeProcess

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("REIMAGINE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "tests" / "artifacts"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Records every progress value and preview the page shows, so a test can see the bar move after the fact.
WATCH = """() => {
  window.seen = {progress: [], previews: []};
  setInterval(() => {
    const p = document.getElementById("progress"), img = document.getElementById("preview");
    window.seen.progress.push(p.value / p.max);
    if (!img.hidden && img.src) window.seen.previews.push(img.src);
  }, 20);
}"""


def scene_png(size: tuple[int, int] = (256, 192)) -> bytes:
    """A house on a hill: enough edges for canny, enough layers for depth."""
    image = Image.new("RGB", size, (150, 195, 235))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse([-w // 2, h * 3 // 5, w * 3 // 2, h * 2], fill=(90, 150, 70))
    draw.rectangle([w * 3 // 8, h * 2 // 5, w * 5 // 8, h * 3 // 4], fill=(200, 90, 60))
    draw.polygon([(w * 3 // 8 - 12, h * 2 // 5), (w // 2, h // 6), (w * 5 // 8 + 12, h * 2 // 5)], fill=(110, 60, 45))
    draw.rectangle([w * 15 // 32, h * 5 // 8, w * 17 // 32, h * 3 // 4], fill=(60, 40, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_file() -> FilePayload:
    return {"name": "house.png", "mimeType": "image/png", "buffer": scene_png()}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/test-deps.sh")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield launched
        launched.close()


@contextlib.contextmanager
def fresh_page(browser: Browser, request: pytest.FixtureRequest, viewport: ViewportSize) -> Iterator[Page]:
    """A fresh browser profile (empty localStorage); a screenshot in tests/artifacts/ if the test fails."""
    context = browser.new_context(viewport=viewport)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    failed_before = request.session.testsfailed
    yield opened
    # The call phase's report is logged before teardown runs, so a failure has been counted by now.
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page per test, at the wide size."""
    with fresh_page(browser, request, {"width": 1360, "height": 1000}) as opened:
        yield opened


def open_playground(page: Page, server: ServeProcess, *, key: str | None = None) -> None:
    page.goto(server.url + "/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    if key is not None:
        page.fill("#api-key", key)


def submit(page: Page, prompt: str, **fields: str) -> None:
    page.fill("[name=prompt]", prompt)
    if fields:
        page.locator("details.advanced").evaluate("node => node.open = true")
    for name, value in fields.items():
        page.fill(f"[name={name}]", value)
    page.click("#submit")


def test_page_and_assets_are_served_with_their_types(server: ServeProcess) -> None:
    expected = {
        "/": "text/html",
        "/playground/app.js": "text/javascript",
        "/playground/style.css": "text/css",
    }
    for path, content_type in expected.items():
        response = httpx.get(server.url + path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(content_type), path
    for path in ("/playground/missing.js", "/playground/..%2Fapp.py", "/playground/.hidden.js"):
        assert httpx.get(server.url + path).status_code == 404, path


def test_form_is_built_from_the_schema_without_a_key(page: Page, server: ServeProcess) -> None:
    schemas = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
    properties: dict[str, Any] = schemas["ReimagineInput"]["properties"]
    capabilities = httpx.get(server.url + "/bria/reimagine/capabilities").json()["fields"]
    open_playground(page, server)

    for name, prop in properties.items():
        control = page.locator(f"[name={name}]")
        expect(control).to_have_count(1)
        if name in capabilities:  # greyed out (test_feedback.py)
            expect(control).to_be_disabled()
        elif prop.get("type") == "boolean":
            assert control.is_checked() is prop["default"], name
        elif prop.get("type") in ("integer", "number"):
            assert float(control.input_value()) == prop["default"], name
            assert float(control.get_attribute("min") or "nan") == prop["minimum"], name
            assert float(control.get_attribute("max") or "nan") == prop["maximum"], name
        elif "x-unset" in prop:
            assert control.input_value() == "", name  # left out until chosen: absence has a meaning of its own
        elif "default" in prop:
            assert control.input_value() == prop["default"], name
        label = page.locator(f"label[for=f-{name}]")
        expect(label).to_have_count(1)
    options = page.locator("select[name=aspect_ratio] option").all_inner_texts()
    assert options == [properties["aspect_ratio"]["x-unset"], *schemas["AspectRatio"]["enum"]]
    # The less common fields fold away; the prompt and the structure images do not.
    expect(page.locator("[name=seed]")).not_to_be_visible()
    expect(page.locator("[name=prompt]")).to_be_visible()
    expect(page.locator("[data-drop-for=canny_image_url]")).to_be_visible()
    expect(page.locator("#banner")).to_be_hidden()


def test_upload_submit_progress_result_and_history(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    page.reload()  # the key is entered once and kept
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#api-key")).to_have_value(server.key)

    # 1. Upload a structure image for canny through the storage API; the URL field gets the stored file's URL.
    page.set_input_files("[data-file-for=canny_image_url]", files=[png_file()])
    expect(page.locator("[name=canny_image_url]")).to_have_value(re.compile(re.escape(server.url) + "/files/.+"))
    expect(page.locator("[data-drop-for=canny_image_url] img.thumb")).to_be_visible()
    uploaded = page.locator("[name=canny_image_url]").input_value()
    assert httpx.get(uploaded).content == scene_png()

    # 2. Submit and watch the stream: the bar moves step by step, previews show, then the full-size result.
    page.evaluate(WATCH)
    submit(page, "a red house on a hill sleep=0.1 preview log=hello", num_inference_steps="20")
    expect(page.locator("#state")).to_have_text("Generating")
    expect(page.locator("#step")).to_contain_text("/20")
    expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
    seen = page.evaluate("window.seen")
    fractions = sorted(set(seen["progress"]))
    assert len([f for f in fractions if 0 < f < 1]) >= 3, f"the bar did not move in steps: {fractions}"
    assert seen["previews"], "no live preview was shown"
    expect(page.locator("#step")).to_have_text("step 20/20")
    expect(page.locator("#logs")).to_contain_text("hello")

    result = page.locator("#result")
    expect(result).to_be_visible()
    # "Done" shows when the result is known; the full-size image then loads on its own.
    page.wait_for_function("document.getElementById('result').naturalWidth === 1152", timeout=15_000)
    meta = page.locator("#meta")
    expect(meta).to_contain_text("1152 × 896")  # 4:3, from the structure image
    expect(meta).to_contain_text("5555")
    expect(meta).to_contain_text("denoise")
    image_url = result.get_attribute("src")
    assert image_url and image_url.startswith(server.url + "/files/")
    expect(page.locator("#download")).to_have_attribute("href", image_url)
    expect(page.locator("#download")).to_have_attribute("download", re.compile(r".+\.png$"))

    # 3. The canny map the server derived, shown in place of the input.
    toggle = page.locator("[data-map=canny]")
    expect(toggle).to_be_enabled()
    expect(page.locator("[data-map=depth]")).to_be_disabled()
    toggle.check()
    thumb = page.locator("[data-drop-for=canny_image_url] img.thumb")
    expect(thumb).to_have_attribute("src", re.compile(re.escape(server.url) + "/files/"))
    assert thumb.get_attribute("src") != uploaded
    toggle.uncheck()
    expect(thumb).to_have_attribute("src", re.compile("^blob:|" + re.escape(uploaded)))

    # 4. History survives a reload and reopens the request, form values included.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    entry = page.locator("#history button.open").first  # newest first
    expect(entry.locator("img")).to_have_attribute("src", image_url)
    entry.click()
    expect(page.locator("#state")).to_have_text("Done")
    expect(page.locator("#result")).to_have_attribute("src", image_url)
    expect(page.locator("[name=prompt]")).to_have_value(re.compile("^a red house"))
    expect(page.locator("[name=num_inference_steps]")).to_have_value("20")
    expect(page.locator("[name=canny_image_url]")).to_have_value(uploaded)


def test_cancel_a_running_request(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    submit(page, "a slow one sleep=0.5", num_inference_steps="20")
    expect(page.locator("#state")).to_have_text("Generating", timeout=20_000)
    expect(page.locator("#step")).to_contain_text("step ")
    page.click("#cancel")
    expect(page.locator("#state")).to_have_text("Cancelled", timeout=20_000)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#history .when").first).to_contain_text("cancelled")
    expect(page.locator("#banner")).to_be_hidden()


def test_queue_position_and_cancel_while_queued(page: Page, server: ServeProcess) -> None:
    """A second request waits behind a running one (one worker); it shows its place and cancels from the queue."""
    assert server.key
    blocker = httpx.post(
        server.url + "/bria/reimagine/3.2",
        json={"prompt": "blocker sleep=0.2", "num_inference_steps": 20},
        headers=server.headers(),
    ).json()
    try:
        open_playground(page, server, key=server.key)
        submit(page, "waits its turn")
        expect(page.locator("#state")).to_have_text(re.compile("^In queue"))
        page.click("#cancel")
        expect(page.locator("#state")).to_have_text("Cancelled", timeout=20_000)
    finally:
        httpx.put(blocker["cancel_url"], headers=server.headers())


def test_drop_an_image_or_paste_a_url(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    png = list(scene_png())
    transfer = page.evaluate_handle(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        png,
    )
    page.dispatch_event("[data-drop-for=depth_image_url]", "drop", {"dataTransfer": transfer})
    expect(page.locator("[name=depth_image_url]")).to_have_value(re.compile(re.escape(server.url) + "/files/.+"))
    uploaded = page.locator("[name=depth_image_url]").input_value()

    # The URL field is the alternative: a pasted URL previews too, and the remove button clears both.
    page.fill("[name=canny_image_url]", uploaded)
    page.locator("[name=canny_image_url]").dispatch_event("change")
    thumb = page.locator("[data-drop-for=canny_image_url] img.thumb")
    expect(thumb).to_have_attribute("src", uploaded)
    page.click("[data-drop-for=canny_image_url] .clear")
    expect(thumb).to_be_hidden()
    expect(page.locator("[name=canny_image_url]")).to_have_value("")


def test_rate_limit_is_explained_at_the_top(page: Page, tmp_path: Path) -> None:
    limited = ServeProcess(tmp_path, "--submit-rate-per-min", "1").start()
    try:
        assert limited.key
        open_playground(page, limited, key=limited.key)
        submit(page, "first")
        expect(page.locator("#history button.open")).to_have_count(1)
        submit(page, "second")
        expect(page.locator("#banner")).to_contain_text("Too many requests (429)")
        expect(page.locator("#banner")).to_contain_text(re.compile(r"Try again in \d+ s"))
        expect(page.locator("#history button.open")).to_have_count(1)
    finally:
        limited.stop()


def test_failed_request_shows_its_error(page: Page, server: ServeProcess) -> None:
    assert server.key
    open_playground(page, server, key=server.key)
    submit(page, "oom")  # the fake runs out of memory at step 2: a 503 result
    expect(page.locator("#state")).to_have_attribute("data-state", "failed", timeout=20_000)
    expect(page.locator("#state")).to_contain_text("Failed (503)")
    expect(page.locator("#state")).to_contain_text("memory")
    expect(page.locator("#history .when").first).to_contain_text("failed")


def test_works_over_tls(browser: Browser, tmp_path: Path) -> None:
    """Same page over https: every URL is relative or built by the server from the request, so nothing is mixed."""
    import trustme

    from tests.clients.conftest import TlsServe

    ca = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    tls = TlsServe(tmp_path / "serve", ca, ca_pem, "--allow-hosts", "127.0.0.1").start()
    context = browser.new_context(ignore_https_errors=True)
    try:
        assert tls.key and tls.url.startswith("https://")
        page = context.new_page()
        open_playground(page, tls, key=tls.key)
        page.set_input_files("[data-file-for=canny_image_url]", files=[png_file()])
        expect(page.locator("[name=canny_image_url]")).to_have_value(re.compile("^https://.+/files/"))
        submit(page, "over tls", num_inference_steps="20")
        expect(page.locator("#state")).to_have_text("Done", timeout=30_000)
        page.wait_for_function("document.getElementById('result').naturalWidth === 1152", timeout=15_000)
    finally:
        context.close()
        tls.stop()


def test_bad_key_is_explained_at_the_top(page: Page, server: ServeProcess) -> None:
    open_playground(page, server, key="nobody:nothing")
    submit(page, "anything")
    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("401")
    expect(page.locator("#banner")).to_contain_text("API key")


def test_api_tab_snippets_use_the_form_and_this_server(page: Page, server: ServeProcess) -> None:
    open_playground(page, server)
    page.fill("[name=prompt]", "a lighthouse at dusk")
    page.select_option("[name=aspect_ratio]", "16:9")
    page.click("#tab-btn-api")
    curl = page.locator("[data-snippet=curl]")
    expect(curl).to_contain_text(f"BASE={server.url}")
    expect(curl).to_contain_text('"aspect_ratio": "16:9"')
    python = page.locator("[data-snippet=python]")
    expect(python).to_contain_text(f'fc.QUEUE_URL_FORMAT = "{server.url}/"')
    expect(python).to_contain_text('"prompt": "a lighthouse at dusk"')
    js = page.locator("[data-snippet=js]")
    expect(js).to_contain_text(f'url: "{server.url}/api/fal/proxy"')
    expect(js).to_contain_text('fal.subscribe("bria/reimagine/3.2"')
    # Later edits show up in the open tab.
    page.click("#tab-btn-playground")
    page.fill("[name=prompt]", "a lighthouse at dawn")
    page.click("#tab-btn-api")
    expect(js).to_contain_text("a lighthouse at dawn")
    # Left out, aspect_ratio follows a structure image; chosen, it is sent, even as its default 1:1.
    page.click("#tab-btn-playground")
    page.select_option("[name=aspect_ratio]", "")
    page.click("#tab-btn-api")
    expect(curl).not_to_contain_text("aspect_ratio")
    page.click("#tab-btn-playground")
    page.select_option("[name=aspect_ratio]", "1:1")
    page.click("#tab-btn-api")
    expect(curl).to_contain_text('"aspect_ratio": "1:1"')


@pytest.mark.parametrize("lang", ["curl", "python", "js"])
def test_api_snippets_run_as_copied(page: Page, server: ServeProcess, lang: str, tmp_path: Path) -> None:
    """Each snippet, pasted as is with FAL_KEY set, gets the image: curl+jq, fal-client, @fal-ai/client."""
    node_modules = REPO / "tests/clients/js/node_modules"
    needs = {"curl": ["curl", "jq"], "python": [], "js": ["node"]}[lang]
    if any(shutil.which(tool) is None for tool in needs) or (lang == "js" and not node_modules.is_dir()):
        pytest.skip(f"{lang} snippet needs {needs} (and @fal-ai/client from scripts/test-deps.sh for js)")
    assert server.key
    open_playground(page, server)
    page.fill("[name=prompt]", "it's copied as is")
    page.click("#tab-btn-api")
    code = page.locator(f"[data-snippet={lang}]").inner_text()
    if lang == "js":
        (tmp_path / "node_modules").symlink_to(node_modules)
        (tmp_path / "snippet.mjs").write_text(code)
    command = {
        "curl": ["bash", "-euo", "pipefail", "-c", code],
        "python": [sys.executable, "-c", code],
        "js": ["node", str(tmp_path / "snippet.mjs")],
    }[lang]
    env = {**os.environ, "FAL_KEY": server.key}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.search(re.escape(server.url) + r"/files/\S+\.png", done.stdout), done.stdout


@pytest.mark.skipif(not os.environ.get("REIMAGINE_PLAYGROUND_SCREENSHOT"), reason="REIMAGINE_PLAYGROUND_SCREENSHOT")
@pytest.mark.timeout(300)
def test_docs_screenshot(page: Page, tmp_path: Path) -> None:
    """The finished state with the tiny model, saved where REIMAGINE_PLAYGROUND_SCREENSHOT says."""
    target = REPO / os.environ["REIMAGINE_PLAYGROUND_SCREENSHOT"]
    tiny = ServeProcess(tmp_path, "--allow-hosts", "127.0.0.1", "--generate", "", "--model", "tiny").start()
    try:
        assert tiny.key
        page.set_viewport_size({"width": 1400, "height": 1200})
        open_playground(page, tiny, key=tiny.key)
        for name in ("depth_image_url", "canny_image_url"):
            page.set_input_files(f"[data-file-for={name}]", files=[png_file()])
            expect(page.locator(f"[name={name}]")).to_have_value(re.compile("/files/"))
        runs = [("a stone cottage by a lake", "7"), ("a cozy cabin in the woods, golden hour", "5555")]
        for count, (prompt, seed) in enumerate(runs, start=1):
            submit(page, prompt, num_inference_steps="20", seed=seed)
            expect(page.locator("#history button.open")).to_have_count(count)  # accepted: "Done" is now this one's
            expect(page.locator("#state")).to_have_text("Done", timeout=150_000)
        page.locator("[data-map=canny]").check()
        page.locator("details.advanced").evaluate("node => node.open = false")
        page.evaluate("window.scrollTo(0, 0)")
        page.mouse.move(0, 0)
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
    finally:
        tiny.stop()
