"""apps/chat.py in a real Chromium: two people chat at once, see streamed replies, stop them, clear.

The app runs as ``streamlit run apps/chat.py ... -- --model FOLDER``; the model is a tiny
fixture whose replies run to max new tokens, slowly enough on a CPU to be watched and stopped.
Screenshots land in test-output/<test name>/.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.conftest import FIXTURES_DIR
from tests.servers import chromium, free_port, running_server, streamlit_command

pytestmark = pytest.mark.browser

MODEL = FIXTURES_DIR / "internlm-chat-7b-tiny"
ALICE = "你好，书生！Please write me a long poem about 上海."
BOB = "Bob here: 今天天气怎么样？"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def chat_url():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_server(streamlit_command("apps/chat.py", port, "--model", str(MODEL)), f"{url}/_stcore/health", timeout_s=60):
        yield url


def open_chat(browser, url):
    page = browser.new_context(viewport={"width": 1280, "height": 1500}).new_page()
    page.goto(url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=WAIT_MS)
    return page


def send(page, text: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(text)
    box.press("Enter")


def streamed_text(page) -> str:
    return page.get_by_test_id("stChatMessage").nth(1).inner_text()


def watch_stream(page) -> list[str]:
    """Wait for the reply to appear and grow; returns successive texts of its bubble."""
    page.locator(".st-key-stop button").wait_for(timeout=WAIT_MS)
    seen = []
    deadline = time.monotonic() + WAIT_MS / 1000
    while len(set(seen)) < 3:
        assert time.monotonic() < deadline, f"the reply did not stream: {seen}"
        text = streamed_text(page)
        if len(text.strip()) > 3:
            seen.append(text)
        page.wait_for_timeout(100)
    return seen


def test_two_people_chat_stream_stop_and_clear(chat_url, output_dir):
    with chromium() as browser:
        alice, bob = open_chat(browser, chat_url), open_chat(browser, chat_url)

        send(alice, ALICE)
        expect(alice.get_by_test_id("stChatMessage").first).to_contain_text(ALICE)
        seen = watch_stream(alice)
        assert len(seen[-1]) > len(seen[0])  # the text grew while we watched
        expect(alice.get_by_test_id("stChatInputTextArea")).to_be_disabled()
        alice.screenshot(path=output_dir / "1-alice-streaming.png", full_page=True)

        send(bob, BOB)  # the GPU is busy with Alice's reply
        expect(bob.get_by_text("Queued (1 ahead)")).to_be_visible(timeout=WAIT_MS)
        bob.screenshot(path=output_dir / "2-bob-queued.png", full_page=True)

        alice.locator(".st-key-stop button").click()
        expect(alice.get_by_text("(stopped)")).to_be_visible(timeout=WAIT_MS)
        expect(alice.locator(".st-key-stop button")).to_have_count(0)
        expect(alice.get_by_test_id("stChatInputTextArea")).to_be_enabled()
        kept = alice.get_by_test_id("stChatMessage").nth(1).inner_text()
        assert kept.strip() and "(stopped)" in kept
        alice.screenshot(path=output_dir / "3-alice-stopped.png", full_page=True)

        watch_stream(bob)  # Bob's turn came once Alice stopped
        bob.locator(".st-key-stop button").click()
        expect(bob.get_by_text("(stopped)")).to_be_visible(timeout=WAIT_MS)

        # Each person sees only their own conversation.
        expect(alice.get_by_test_id("stChatMessage")).to_have_count(2)
        expect(bob.get_by_test_id("stChatMessage")).to_have_count(2)
        assert BOB not in " ".join(alice.get_by_test_id("stChatMessage").all_inner_texts())
        assert ALICE not in " ".join(bob.get_by_test_id("stChatMessage").all_inner_texts())
        expect(bob.get_by_test_id("stChatMessage").first).to_contain_text(BOB)
        bob.screenshot(path=output_dir / "4-bob-stopped.png", full_page=True)

        alice.locator(".st-key-clear button").click()
        expect(alice.get_by_test_id("stChatMessage")).to_have_count(0)
        alice.screenshot(path=output_dir / "5-alice-cleared.png", full_page=True)
        expect(bob.get_by_test_id("stChatMessage")).to_have_count(2)  # clearing is per session

        bob.get_by_test_id("stSidebar").get_by_text("中文").click()
        expect(bob.get_by_role("heading", name="书生·浦语 对话")).to_be_visible(timeout=WAIT_MS)
        expect(bob.get_by_text("（已停止）")).to_be_visible()
        bob.screenshot(path=output_dir / "6-bob-chinese.png", full_page=True)
