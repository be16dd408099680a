"""apps/agent.py through Streamlit's AppTest, with a replayed script as the model and the real sandbox."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest
from streamlit.testing.v1 import AppTest

from internlm_demo.agent.loop import ANSWER, STOPPED, THOUGHT, Step
from internlm_demo.agent.session import AgentConversation
from tests.conftest import REPO

APP = REPO / "apps" / "agent.py"
SECRET_CODE = 'import hashlib\nprint(hashlib.sha256(b"agent page").hexdigest())'
SECRET_OUTPUT = hashlib.sha256(b"agent page").hexdigest()
TOOL_CALL = f"Thought: I will compute it.\nAction: PythonInterpreter\nAction Input: ```python\n{SECRET_CODE}\n```"


@pytest.fixture
def app(monkeypatch, tmp_path):
    """The page with no command-line flags and a script of ``outputs`` replayed as the model."""
    monkeypatch.setattr(sys, "argv", ["agent.py"])

    def start(outputs=None):
        if outputs is not None:
            script = tmp_path / "session.json"
            script.write_text(json.dumps({"family": "internlm", "outputs": outputs}))
            monkeypatch.setenv("INTERNLM_DEMO_AGENT_SCRIPT", str(script))
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.run()
        assert not at.exception
        return at

    return start


def ask(at, question):
    at.chat_input[0].set_value(question).run()
    assert not at.exception
    return at


def test_page_shows_thought_code_and_real_output(app):
    at = app([TOOL_CALL, "Thought: The digest is printed.\nFinal Answer: It is the digest shown above."])
    assert "Replaying the scripted session" in at.info[0].value
    ask(at, "What is the digest?")

    assert [message.name for message in at.chat_message] == ["user", "assistant"]
    assert [expander.label for expander in at.expander] == ["Step 1 · PythonInterpreter", "Step 2 · thought"]
    codes = [code.value for code in at.code]
    assert codes[0] == SECRET_CODE
    assert codes[1].strip() == SECRET_OUTPUT  # only a real run of the code prints this
    texts = [markdown.value for markdown in at.markdown]
    assert "I will compute it." in texts and "It is the digest shown above." in texts


def test_follow_up_question_sees_the_earlier_answer(app):
    at = app(["Final Answer: Paris", "Final Answer: about 2.1 million"])
    ask(at, "Capital of France?")
    ask(at, "How many people live there?")
    prompts = at.session_state["scripted_model"].prompts
    assert "<|User|>:Capital of France?<eoh>\n<|Bot|>:Paris<eoa>\n<|User|>:How many people live there?" in prompts[1]
    assert [message.name for message in at.chat_message] == ["user", "assistant"] * 2


def test_switching_the_interpreter_off_removes_the_tool(app):
    at = app([TOOL_CALL, "Final Answer: no tools"])
    at.toggle[0].set_value(False).run()
    ask(at, "What is the digest?")
    codes = [code.value for code in at.code]
    assert SECRET_OUTPUT not in "".join(codes)
    assert any("no tools are enabled" in code for code in codes)


def test_clear_forgets_the_conversation_and_rewinds_the_script(app):
    at = app(["Final Answer: one"])
    ask(at, "First?")
    assert at.session_state["scripted_model"].calls == 1
    next(button for button in at.sidebar.button if button.label == "Clear").click().run()
    assert not at.chat_message
    assert at.session_state["scripted_model"].calls == 0
    ask(at, "Again?")
    assert "one" in [markdown.value for markdown in at.markdown]


def test_a_run_cut_short_by_a_rerun_is_shown_as_stopped(app):
    at = app(["Final Answer: unused"])
    conversation = AgentConversation()
    conversation.begin("Long question")
    conversation.record([Step(THOUGHT, "Working on it", 1)])
    at.session_state["conversation"] = conversation
    at.run()
    assert [warning.value for warning in at.warning] == ["Stopped."]
    assert "Working on it" in [markdown.value for markdown in at.markdown]


def test_stop_and_clear_handlers():
    spec = importlib.util.spec_from_file_location("agent_page", APP)
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)  # defines the handlers; the page itself only runs under Streamlit
    state = {}
    conversation = page.conversation_of(state)
    stop = conversation.begin("q")
    conversation.record([Step(THOUGHT, "t", 1)])
    page.stop_run(state)
    assert stop.is_set()
    assert [step.kind for step in conversation.exchanges[0].steps] == [THOUGHT, STOPPED]
    assert conversation.history() == []  # a stopped exchange has no answer to remember

    conversation.begin("q2")
    conversation.record([Step(ANSWER, "a2", 1)])
    conversation.finish()
    assert conversation.history() == [("q2", "a2")]
    page.clear_conversation(state)
    assert conversation.exchanges == []


def test_demo_model_banner_and_a_short_run(app, monkeypatch):
    monkeypatch.delenv("INTERNLM_DEMO_AGENT_SCRIPT", raising=False)
    at = app()
    assert "embedded demo model" in at.warning[0].value
    at.slider[0].set_value(1)  # max turns
    at.slider[1].set_value(32)  # max new tokens
    ask(at, "What is 1 + 1?")
    assert [message.name for message in at.chat_message] == ["user", "assistant"]
    assert not at.error


def test_unreadable_script_and_bad_flags_give_messages(app, monkeypatch, tmp_path):
    monkeypatch.setenv("INTERNLM_DEMO_AGENT_SCRIPT", str(tmp_path / "missing.json"))
    at = app()
    assert "cannot read the agent script" in at.error[0].value

    monkeypatch.setattr(sys, "argv", ["agent.py", "--num-gpus", "two"])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception
    assert "not valid" in at.error[0].value and "num-gpus" in at.error[0].value
