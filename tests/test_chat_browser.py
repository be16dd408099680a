"""apps/chat.py in a real Chromium: two people chat at once, see streamed replies, stop them, clear.

The app runs as ``streamlit run apps/chat.py ... -- --model FOLDER``; the model is a tiny
fixture whose replies run to max new tokens, slowly enough on a CPU to be watched and stopped.
Screenshots land in test-output/<test name>/.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from internlm_demo.i18n import CHAT
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

        send(bob, BOB)  # Alice's reply is still being written: Bob gets a slot of his own
        watch_stream(bob)
        expect(alice.locator(".st-key-stop button")).to_have_count(1)  # both stream at once
        bob.screenshot(path=output_dir / "2-bob-streaming-beside-alice.png", full_page=True)

        alice.locator(".st-key-stop button").click()
        expect(alice.get_by_text("(stopped)")).to_be_visible(timeout=WAIT_MS)
        expect(alice.locator(".st-key-stop button")).to_have_count(0)
        expect(alice.get_by_test_id("stChatInputTextArea")).to_be_enabled()
        kept = alice.get_by_test_id("stChatMessage").nth(1).inner_text()
        assert kept.strip() and "(stopped)" in kept
        alice.screenshot(path=output_dir / "3-alice-stopped.png", full_page=True)

        watch_stream(bob)  # Bob's reply goes on after Alice stopped hers
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


KNOWN_REPLY = "**Shanghai** has about 24 million people. 上海约有两千四百万人。\n\n```python\nprint('hi')\n```"


def conversation_file(tmp_path, name: str, question: str, reply: str):
    path = tmp_path / name
    path.write_text(json.dumps({"format": "internlm-demo.conversation", "version": 1, "messages": [
        {"role": "user", "content": question}, {"role": "assistant", "content": reply}]}), encoding="utf-8")
    return path


def test_reload_keeps_the_chat_import_asks_copy_copies_and_a_refused_message_stays(chat_url, tmp_path, output_dir):
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 1500})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=chat_url)
        page = context.new_page()
        page.goto(chat_url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=WAIT_MS)
        uploader = page.get_by_test_id("stSidebar").locator("input[type=file]")
        uploader.set_input_files(str(conversation_file(tmp_path, "first.json", "How many people live in Shanghai?",
                                                        KNOWN_REPLY)))
        messages = page.get_by_test_id("stChatMessage")
        expect(messages).to_have_count(2, timeout=WAIT_MS)
        assert "c=" in page.url  # the conversation's id

        # Copy puts the reply on the clipboard (no popover); the page around it stays as it was.
        messages.nth(1).get_by_role("button", name="Copy").click()
        expect(messages.nth(1).get_by_role("button", name="Copied")).to_be_visible(timeout=WAIT_MS)
        assert page.evaluate("navigator.clipboard.readText()") == KNOWN_REPLY
        expect(page.locator(".st-key-regenerate button")).to_be_visible()

        # A reload, and a second tab on the same address, find the conversation again.
        page.reload()
        expect(messages).to_have_count(2, timeout=WAIT_MS)
        expect(messages.first).to_contain_text("How many people live in Shanghai?")
        other = context.new_page()
        other.goto(page.url)
        expect(other.get_by_test_id("stChatMessage")).to_have_count(2, timeout=WAIT_MS)
        page.screenshot(path=output_dir / "1-reloaded.png", full_page=True)

        # Importing over a conversation asks first; keeping it changes nothing.
        uploader.set_input_files(str(conversation_file(tmp_path, "second.json", "Another question", "Another reply")))
        expect(page.get_by_text("Replace this conversation?")).to_be_visible(timeout=WAIT_MS)
        page.screenshot(path=output_dir / "2-import-asks.png", full_page=True)
        page.locator(".st-key-import_keep button").click()
        expect(page.get_by_text("Replace this conversation?")).to_have_count(0, timeout=WAIT_MS)
        expect(messages.first).to_contain_text("How many people live in Shanghai?")

        # A message too long for the window is refused and stays in the message box.
        too_long = "这是一条非常长的消息，用来测试上下文窗口。" * 300
        send(page, too_long)
        expect(page.get_by_text("Message too long")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("stChatInputTextArea")).to_have_value(too_long, timeout=WAIT_MS)
        expect(messages).to_have_count(2)
        page.screenshot(path=output_dir / "3-refused-kept.png", full_page=True)


def english_labels_left(text: str, table: dict[str, tuple[str, str]]) -> list[str]:
    """Each English label of ``table`` (its fixed words around format fields, where they hold a word of four letters
    or more) that ``text`` still shows."""
    left = []
    for english, chinese in table.values():
        if english == chinese:
            continue
        for words in re.split(r"\{[^}]*\}", english):
            words = words.strip(" .,:;*`()…\n")
            if re.search(r"[A-Za-z]{4}", words) and re.search(rf"(?<![A-Za-z]){re.escape(words)}(?![A-Za-z])", text):
                left.append(words)
    return left


def test_chinese_labels_are_complete(chat_url, tmp_path, output_dir):
    """In 中文 every label of the chat table is Chinese: sidebar, buttons, notices, the import box, the input."""
    with chromium() as browser:
        page = open_chat(browser, chat_url)
        page.get_by_test_id("stSidebar").get_by_text("中文").click()
        expect(page.get_by_role("heading", name="书生·浦语 对话")).to_be_visible(timeout=WAIT_MS)
        dropzone = page.get_by_test_id("stSidebar").get_by_test_id("stFileUploaderDropzone")
        page.wait_for_timeout(500)
        assert english_labels_left(dropzone.inner_text(), CHAT) == []  # Streamlit's own words are hidden ...
        shown = dropzone.locator("button [data-testid=stMarkdownContainer]").evaluate(
            "e => getComputedStyle(e, '::after').content")
        assert shown == f'"{CHAT["upload_browse"][1]}"'  # ... and ours shown in their place
        page.get_by_test_id("stSidebar").locator("input[type=file]").set_input_files(
            str(conversation_file(tmp_path, "c.json", "你好", KNOWN_REPLY)))
        expect(page.get_by_test_id("stChatMessage")).to_have_count(2, timeout=WAIT_MS)
        page.wait_for_timeout(500)
        text = page.locator("body").inner_text()
        assert english_labels_left(text, CHAT) == [], text
        assert page.get_by_test_id("stChatInputTextArea").get_attribute("placeholder") == CHAT["placeholder"][1]
        page.screenshot(path=output_dir / "chinese.png", full_page=True)
