"""The agent page in a real Chromium: a scripted model calls the interpreter, the page shows the code and its real output."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from playwright.sync_api import expect

from internlm_demo.i18n import AGENT
from tests.servers import chromium, free_port, running_server, streamlit_command
from tests.test_chat_browser import english_labels_left

pytestmark = pytest.mark.browser

SECRET_CODE = 'import hashlib\nprint(hashlib.sha256(b"browser agent").hexdigest())'
SECRET_OUTPUT = hashlib.sha256(b"browser agent").hexdigest()
LONG_TAIL = "END-OF-A-LONG-ANSWER"


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory):
    """apps/agent.py served by Streamlit on 127.0.0.1, replaying a script; the sandbox is real."""
    script = tmp_path_factory.mktemp("agent-script") / "session.json"
    script.write_text(json.dumps({"family": "internlm", "delay_s": 0.02, "outputs": [
        f"Thought: I will hash it in Python.\nAction: PythonInterpreter\nAction Input: ```python\n{SECRET_CODE}\n```",
        "Thought: The digest is in the output.\nFinal Answer: The SHA-256 digest is shown in the step above.",
        "Thought: " + "this takes a while, " * 150 + LONG_TAIL,
    ]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running_server(streamlit_command("apps/agent.py", port), f"{url}/_stcore/health",
                        env={"INTERNLM_DEMO_AGENT_SCRIPT": str(script)}, timeout_s=60):
        yield url


@pytest.fixture(scope="module")
def page(agent_url):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(agent_url)
        page.get_by_test_id("stChatInputTextArea").wait_for(timeout=30_000)
        yield page


def ask(page, question: str) -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")


def test_browser_shows_the_code_and_its_real_output(page, output_dir):
    ask(page, "What is the SHA-256 digest of 'browser agent'?")
    page.get_by_text("The SHA-256 digest is shown in the step above.").wait_for(timeout=30_000)

    step = page.get_by_test_id("stExpander").filter(has_text="Step 1 · PythonInterpreter")
    code_blocks = step.get_by_test_id("stCode")
    assert "hashlib.sha256" in code_blocks.nth(0).inner_text()
    assert code_blocks.nth(1).inner_text().strip() == SECRET_OUTPUT
    assert step.get_by_text("I will hash it in Python.").is_visible()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=15_000)  # nothing runs any more
    page.screenshot(path=str(output_dir / "agent-interpreter.png"), full_page=True)


def test_browser_stop_ends_a_streaming_answer(page, output_dir):
    ask(page, "Something slow, please")
    page.get_by_text("this takes a while").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_test_id("stAlertContentWarning").filter(has_text="Stopped.").wait_for(timeout=15_000)
    time.sleep(1.0)  # had the stream gone on, its end would arrive within the next seconds
    assert page.get_by_text(LONG_TAIL).count() == 0
    page.screenshot(path=str(output_dir / "agent-stopped.png"), full_page=True)


def test_chinese_labels_are_complete(agent_url, page, output_dir):
    """In 中文 no English label of the agent table is left, with a run's steps on the page."""
    page = page.context.browser.new_page(viewport={"width": 1280, "height": 1400})  # a session of its own
    page.goto(agent_url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=30_000)
    page.get_by_test_id("stSidebar").get_by_test_id("stRadio").first.get_by_text("中文").click()
    expect(page.get_by_role("heading", name=AGENT["page_title"][1])).to_be_visible(timeout=30_000)
    ask(page, "算一下 'browser agent' 的 SHA-256")
    page.get_by_text("The SHA-256 digest is shown in the step above.").wait_for(timeout=30_000)
    expect(page.get_by_role("button", name=AGENT["stop"][1])).to_be_disabled(timeout=15_000)
    text = page.locator("body").inner_text()
    assert english_labels_left(text, AGENT) == [], text
    assert page.get_by_test_id("stChatInputTextArea").get_attribute("placeholder") == AGENT["placeholder"][1]
    page.screenshot(path=str(output_dir / "agent-chinese.png"), full_page=True)
    page.close()
