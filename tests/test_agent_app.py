"""apps/agent.py through Streamlit's AppTest, with a replayed script as the model and the real sandbox."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import pytest
from streamlit.testing.v1 import AppTest

from internlm_demo.agent.loop import ANSWER, GAVE_UP, MODEL, STOPPED, THOUGHT, Step
from internlm_demo.agent.protocol import PastExchange, Turn
from internlm_demo.models.loading import DEMO_MODEL_ID
from tests.conftest import REPO

APP = REPO / "apps" / "agent.py"
SECRET_CODE = 'import hashlib\nprint(hashlib.sha256(b"agent page").hexdigest())'
SECRET_OUTPUT = hashlib.sha256(b"agent page").hexdigest()
TOOL_CALL = f"Thought: I will compute it.\nAction: PythonInterpreter\nAction Input: ```python\n{SECRET_CODE}\n```"


@pytest.fixture
def app(monkeypatch, tmp_path):
    """The page with no command-line flags and a script of ``outputs`` replayed as the model."""
    monkeypatch.setattr(sys, "argv", ["agent.py"])
    monkeypatch.setenv("INTERNLM_DEMO_MODEL", DEMO_MODEL_ID)  # the tiny random model: fast, and its banner is tested

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


def test_language_switch_relabels_the_page(app):
    at = app([TOOL_CALL, "Final Answer: done"])
    next(radio for radio in at.sidebar.radio if radio.label == "Language / 语言").set_value("中文").run()
    assert not at.exception
    assert "正在回放脚本会话" in at.info[0].value
    assert [button.label for button in at.sidebar.button] == ["停止", "清空"]
    ask(at, "What is the digest?")
    assert [expander.label for expander in at.expander] == ["第 1 步 · PythonInterpreter"]


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
    assert prompts[1].endswith("<|User|>:Capital of France?\n<|Bot|>: Paris<eoa>\n"
                               "<|User|>:How many people live there?\n<|Bot|>:")
    assert [message.name for message in at.chat_message] == ["user", "assistant"] * 2
    texts = [markdown.value for markdown in at.markdown]
    assert texts.index("Paris") < texts.index("How many people live there?") < texts.index("about 2.1 million")


def test_switching_the_interpreter_off_removes_the_tool(app):
    at = app([TOOL_CALL, "Final Answer: no tools"])
    next(t for t in at.sidebar.toggle if t.label == "Python interpreter").set_value(False).run()
    ask(at, "What is the digest?")
    codes = [code.value for code in at.code]
    assert SECRET_OUTPUT not in "".join(codes)
    assert "The action is invalid, please check the action name." in codes  # lagent's InvalidAction message
    assert "should be one of [[]]" in at.session_state["scripted_model"].prompts[0]


def test_clear_forgets_the_conversation_and_rewinds_the_script(app):
    at = app(["Final Answer: one"])
    ask(at, "First?")
    assert at.session_state["scripted_model"].calls == 1
    next(button for button in at.sidebar.button if button.label == "Clear").click().run()
    assert not at.chat_message
    assert at.session_state["scripted_model"].calls == 0
    ask(at, "Again?")
    assert "one" in [markdown.value for markdown in at.markdown]


def test_every_turn_is_shown_and_stop_is_disabled_after_the_run(app):
    at = app(["Action: PythonInterpreter\n", TOOL_CALL])
    at.slider[0].set_value(2)  # max turns
    ask(at, "What is the digest?")
    assert [expander.label for expander in at.expander] == ["Step 1 · reply", "Step 2 · PythonInterpreter"]
    assert "Action: PythonInterpreter" in [code.value for code in at.code]  # the model's own text
    assert "Please follow the format" in [code.value for code in at.code]
    assert [warning.value for warning in at.warning] == ["No final answer was reached within 2 turns."]
    assert next(b for b in at.sidebar.button if b.label == "Stop").disabled

    at = app(["Action: PythonInterpreter", " "])  # the forced last turn gets a blank reply
    at.slider[0].set_value(2)
    ask(at, "What is the digest?")
    assert [expander.label for expander in at.expander] == ["Step 1 · reply", "Step 2 · reply"]
    assert [warning.value for warning in at.warning] == ["No final answer was reached within 2 turns."]


def test_lagent_exact_behaviour_is_one_switch_away(app):
    invented = TOOL_CALL + "\nResponse: 41\nThought: so 41\nFinal Answer: 41"
    at = app([invented, "Final Answer: the real digest"])
    ask(at, "What is the digest?")
    assert SECRET_OUTPUT in [code.value.strip() for code in at.code]  # "\nResponse:" stopped the invention
    at = app([invented])
    next(t for t in at.sidebar.toggle if t.label == "lagent's exact behaviour").set_value(True).run()
    ask(at, "What is the digest?")
    assert at.session_state["conversation"].exchanges[0].answer == "41"  # lagent takes the invented result


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
    conversation.record([Step(MODEL, "Final Answer: a2", 1), Step(ANSWER, "a2", 1)])
    conversation.finish()
    assert conversation.history() == [PastExchange("q2", (Turn("Final Answer: a2"),))]
    page.clear_conversation(state)
    assert conversation.exchanges == []


def test_demo_model_banner_and_a_short_run(app, monkeypatch):
    monkeypatch.delenv("INTERNLM_DEMO_AGENT_SCRIPT", raising=False)
    at = app()
    assert "embedded demo model" in at.warning[0].value
    at.slider[0].set_value(1)  # max turns
    at.slider[1].set_value(32)  # max new tokens
    at.slider[2].set_value(0.0)  # temperature: greedy
    ask(at, "What is 1 + 1?")
    assert [message.name for message in at.chat_message] == ["user", "assistant"]
    assert not at.error
    steps = at.session_state["conversation"].exchanges[0].steps
    assert steps[0].kind == "model" and {step.turn for step in steps} == {1}
    shown = [m.value for m in at.markdown] + [w.value for w in at.warning] + [c.value for c in at.code]
    assert steps[-1].kind in (ANSWER, GAVE_UP) and steps[-1].text in shown


def test_unreadable_script_and_bad_flags_give_messages(app, monkeypatch, tmp_path):
    monkeypatch.setenv("INTERNLM_DEMO_AGENT_SCRIPT", str(tmp_path / "missing.json"))
    at = app()
    assert "cannot read the agent script" in at.error[0].value

    monkeypatch.setattr(sys, "argv", ["agent.py", "--num-gpus", "two"])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception
    assert "not valid" in at.error[0].value and "num-gpus" in at.error[0].value


def test_a_wrong_model_folder_is_explained_in_the_page_language(monkeypatch, tmp_path):
    """A folder with only config.json: today's English on the English page, Chinese once the page is 中文."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internlm2"}))
    monkeypatch.setattr(sys, "argv", ["agent.py", "--model", str(tmp_path)])
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception and not at.chat_input
    assert at.error[0].value == (f"The model cannot be used: {tmp_path / 'tokenizer.model'} is missing; re-download the "
                                 "model (the tokenizer is part of it).")
    next(radio for radio in at.sidebar.radio if radio.label == "Language / 语言").set_value("中文").run()
    assert not at.exception
    chinese = at.error[0].value
    assert chinese == f"无法使用该模型：{tmp_path / 'tokenizer.model'} 不存在；请重新下载模型（分词器是模型的一部分）。"


def interpreter_toggle(at):
    return next(t for t in at.sidebar.toggle if t.label == "Python interpreter")


def weak_sandbox(monkeypatch):
    """The page as it runs where the kernel refuses namespaces (only the probe is replaced)."""
    from internlm_demo.agent import sandbox

    monkeypatch.setattr(sandbox, "probe_isolation", lambda: sandbox.Isolation(sandbox.WEAK, "namespaces: none"))


@pytest.mark.sandbox_strict
def test_sidebar_shows_the_isolation_level_in_force(app):
    at = app([TOOL_CALL, "Final Answer: done"])
    assert any(caption.value.startswith("Sandbox isolation: strict.") for caption in at.sidebar.caption)
    assert interpreter_toggle(at).value is True and not at.error


def test_below_the_minimum_level_the_page_refuses_to_run_code(app, monkeypatch):
    weak_sandbox(monkeypatch)
    at = app([TOOL_CALL, "Final Answer: done"])
    assert "only the 'weak' isolation level, below the 'userns' minimum" in at.error[0].value
    assert "--allow-weak-sandbox" in at.error[0].value
    assert any(caption.value.startswith("Sandbox isolation: weak.") for caption in at.sidebar.caption)
    toggle = interpreter_toggle(at)
    assert toggle.value is False and toggle.proto.disabled
    ask(at, "What is the digest?")
    assert SECRET_OUTPUT not in "".join(code.value for code in at.code)


def test_allow_weak_sandbox_runs_code_below_the_minimum_with_a_warning(app, monkeypatch):
    weak_sandbox(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["agent.py", "--allow-weak-sandbox"])
    at = app([TOOL_CALL, "Final Answer: done"])
    assert not at.error and "runs anyway because of `--allow-weak-sandbox`" in at.warning[0].value
    assert interpreter_toggle(at).value is True
    ask(at, "What is the digest?")
    assert SECRET_OUTPUT in [code.value.strip() for code in at.code]
