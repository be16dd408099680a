"""`python -m apps.xcomposer` in a real Chromium: upload an image, ask about it, see the streamed reply."""

from __future__ import annotations

import sys
import time

import pytest

from tests.conftest import FIXTURES_DIR
from tests.servers import chromium, free_port, running_server

pytestmark = pytest.mark.browser

IMAGE = FIXTURES_DIR / "xcomposer-test-image.png"


@pytest.fixture(scope="module")
def app_url():
    """The app started as a user starts it; it binds 127.0.0.1 by default and uses the embedded demo model."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_server([sys.executable, "-m", "apps.xcomposer", "--port", str(port)], url):
        yield url


def test_browser_uploads_an_image_and_chats(app_url, output_dir):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        page.get_by_text("Demo model").wait_for(timeout=30_000)

        page.locator("#xcomposer-input input[type=file]").set_input_files(str(IMAGE))
        page.locator("#xcomposer-input img").first.wait_for(timeout=15_000)  # the attachment preview
        box = page.locator("#xcomposer-input textarea")
        box.fill("What is in the picture?")
        box.press("Enter")

        chat = page.locator("#xcomposer-chatbot")
        chat.get_by_text("What is in the picture?").wait_for(timeout=15_000)
        chat.locator("img").first.wait_for(timeout=15_000)
        bot = chat.locator(".bot").last
        bot.wait_for(timeout=30_000)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reply = bot.inner_text().strip()
            if reply and not reply.endswith("▌"):
                break
            time.sleep(0.3)
        assert reply and not reply.endswith("▌"), "the streamed reply finishes"
        page.screenshot(path=str(output_dir / "xcomposer-chat.png"), full_page=True)

        page.get_by_role("button", name="中文").click()
        page.get_by_role("button", name="清空聊天框").wait_for(timeout=10_000)
        page.get_by_role("button", name="清空聊天框").click()
        chat.get_by_text("What is in the picture?").wait_for(state="detached", timeout=10_000)


def bot_text(page) -> str:
    return page.locator("#xcomposer-chatbot .bot").last.inner_text().strip()


def test_stop_ends_the_reply_and_the_chat_pane_grows(app_url, output_dir):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        page.get_by_text("Demo model").wait_for(timeout=30_000)
        for elem_id, value in (("xcomposer-max-tokens", 1024), ("xcomposer-beams", 3)):  # slow: ~1000 beam steps
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        pane = page.locator("#xcomposer-chatbot")
        empty_height = pane.bounding_box()["height"]
        box = page.locator("#xcomposer-input textarea")
        box.fill("Tell me a very long story.")
        box.press("Enter")
        deadline = time.monotonic() + 60
        while not bot_text(page).removesuffix("▌").strip() if page.locator("#xcomposer-chatbot .bot").count() else True:
            assert time.monotonic() < deadline, "the reply did not start"
            time.sleep(0.2)
        page.locator("#xcomposer-stop").click()
        deadline = time.monotonic() + 30
        while bot_text(page).endswith("▌"):
            assert time.monotonic() < deadline, "Stop did not end the reply"
            time.sleep(0.2)
        stopped = bot_text(page)
        time.sleep(2)
        assert stopped and bot_text(page) == stopped  # it ended where it was, keeping its text
        page.screenshot(path=str(output_dir / "stopped.png"), full_page=True)

        for question in ("And then?", "What happened next?"):  # short greedy replies; the pane grows with them
            page.locator("#xcomposer-max-tokens input[type=number]").fill("64")
            page.locator("#xcomposer-max-tokens input[type=number]").press("Enter")
            box.fill(question)
            box.press("Enter")
            page.locator("#xcomposer-chatbot").get_by_text(question).wait_for(timeout=15_000)
            deadline = time.monotonic() + 60
            while bot_text(page).endswith("▌") or page.locator("#xcomposer-chatbot .bot").count() < 2:
                assert time.monotonic() < deadline, "the reply did not finish"
                time.sleep(0.2)
        assert pane.bounding_box()["height"] > empty_height
        page.screenshot(path=str(output_dir / "grown.png"), full_page=True)
