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
