"""The web playground in headless Chromium against a real `perkunas serve` of a 128-token model: a streamed reply, a
first message sent with the page's defaults, a 401 shown, a screenshot."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray.process_tree import kill_tree

pytestmark = [pytest.mark.integration, pytest.mark.ray]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "playground-token"
CONTEXT = 128
# As the device notes of this machine advise: without these, Chromium keeps dialling Google's hosts and gets refused.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def png_pixel_bytes(png: bytes) -> bytes:
    """The decompressed image data of a PNG (filter bytes included): enough to tell a blank picture from a page."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        if png[pos + 4:pos + 8] == b"IDAT":
            idat += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 240.0) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"perkunas serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"perkunas serve did not come up in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from deployments.launch import free_port
    from perkunas_ray.kvserve.toy import make_tiny_run_dir

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    root = tmp_path_factory.mktemp("playground")
    run = make_tiny_run_dir(root / "tiny", max_seq_len=CONTEXT)  # the main job's context: 128 tokens
    port = free_port()
    log = root / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "perkunas_ray.cli", "serve", "--model-dir", str(run),
                                 "--port", str(port), "--num-cpus", "2", "--api-tokens", f"user:{TOKEN}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        kill_tree(proc.pid)


@pytest.fixture
def page(served: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(served + "/")
            yield page
        finally:
            browser.close()


def test_streamed_reply_and_token_counter(page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    expect(page.locator("#model option")).to_have_count(1)
    page.fill("#system", "You tell short stories.")
    page.fill("#temperature", "1")  # random weights: greedy may pick a special token that prints as nothing
    page.fill("#max_tokens", "48")
    page.fill("#prompt", "Tell me about a cat.")
    # Every value the reply's counter takes, seen by a MutationObserver in the page.
    page.evaluate("""() => {
        window.counterValues = [];
        new MutationObserver(() => {
            const meta = document.querySelectorAll('.message.assistant .meta');
            if (meta.length) window.counterValues.push(meta[meta.length - 1].textContent);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""")
    errors_before = page.locator(".message.error").count()  # the 401 of the first model list, before the token
    page.click("#send")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".meta")).to_contain_text("tok/s", timeout=120_000)  # the final usage chunk arrived
    expect(reply.locator(".meta")).to_contain_text("cached")
    live = [v for v in page.evaluate("window.counterValues") if v.startswith("tokens:") and "tok/s" not in v]
    assert len(set(live)) >= 2, f"the token counter did not move while streaming: {live}"
    assert reply.locator(".content").inner_text().strip(), "the streamed reply stayed empty"
    assert page.locator(".message.error").count() == errors_before
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    assert len(set(png_pixel_bytes(shot.read_bytes()))) > 16, "the screenshot is blank"


def test_first_message_with_the_page_defaults(page) -> None:
    """The page's default max_tokens (128) equals the model's whole context: the page fits it to what the prompt
    leaves, so a newcomer's first message is answered, not refused with a 400."""
    from playwright.sync_api import expect

    assert page.input_value("#max_tokens") == str(CONTEXT)
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    expect(page.locator("#model option")).to_have_count(1)
    errors_before = page.locator(".message.error").count()
    page.fill("#prompt", "Hello! Who are you?")
    page.click("#send")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".meta")).to_contain_text("tok/s", timeout=120_000)
    assert page.locator(".message.error").count() == errors_before
    meta = reply.locator(".meta").inner_text()
    prompt_tokens = int(meta.split("prompt ")[1].split(" ")[0])
    completion_tokens = int(meta.split("tokens: ")[1].split(" ")[0])
    assert 0 < completion_tokens <= CONTEXT - prompt_tokens, meta


def test_wrong_token_shows_the_401_message(page) -> None:
    from playwright.sync_api import expect

    errors = page.locator(".message.error")
    expect(errors).to_have_count(1)  # the page loaded with no token: the model list answered 401
    # Set the field without a change event, so the only request that carries the wrong token is the chat one.
    page.locator("#token").evaluate("(el) => { el.value = 'not-the-token'; }")
    page.fill("#prompt", "Hello?")
    page.click("#send")
    expect(errors).to_have_count(2, timeout=30_000)
    expect(errors.last).to_contain_text("401: Invalid or missing API key")  # the API's own message
    assert page.locator(".message.assistant").count() == 0
