"""The agent loop with a scripted model: only the model is canned, the sandboxed interpreter really runs."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from internlm_demo import load_chat_model
from internlm_demo.agent.completion import ChatModelCompletion, cut_at_stop_word, decode_with_markers
from internlm_demo.agent.loop import (
    ANSWER,
    CODE,
    ERROR,
    GAVE_UP,
    MAX_OBSERVATION_CHARS,
    MODEL,
    NOTICE,
    OBSERVATION,
    STOPPED,
    THOUGHT,
    final_answer,
    run_agent,
)
from internlm_demo.agent.protocol import (
    Departures,
    InterpreterCallProtocol,
    PastExchange,
    ReActProtocol,
    Turn,
    protocol_for,
)
from internlm_demo.agent.sandbox import PythonInterpreter
from internlm_demo.agent.scripted import ScriptedModel, ScriptError
from internlm_demo.models.families import INTERNLM, INTERNLM2
from internlm_demo.models.loading import DEMO_MODEL_ID
from tests.conftest import FIXTURES_DIR, reference

# Code whose output the script cannot know in advance: only a real run of it produces the digest.
SECRET_CODE = 'import hashlib\nprint(hashlib.sha256(b"internlm agent").hexdigest())'
SECRET_OUTPUT = hashlib.sha256(b"internlm agent").hexdigest()


def v1_call(code: str, tool: str = "PythonInterpreter", thought: str = "I should run code.") -> str:
    return f"Thought: {thought}\nAction: {tool}\nAction Input: ```python\n{code}\n```"


def v2_call(code: str, thought: str = "Let me run code.") -> str:
    return f"{thought}<|action_start|><|interpreter|>\n```python\n{code}\n```<|action_end|>\n"


def run(model, query="What is the digest?", history=(), tools=None, protocol=None, **kwargs):
    tools = [PythonInterpreter()] if tools is None else tools
    protocol = protocol or protocol_for(model.family)
    snapshots = list(run_agent(model, protocol, query, history, tools=tools, **kwargs))
    return shown(snapshots[-1]), snapshots


def shown(steps):
    """The steps the page shows (a turn's raw MODEL output is kept for the history)."""
    return [step for step in steps if step.kind != MODEL]


def kinds(steps):
    return [step.kind for step in steps]


FORCE_STOP_EN = "You should directly give results\n based on history information."  # lagent's text
NO_ACTION = "Please follow the format"  # lagent's NoAction message


def test_react_v1_runs_the_code_and_feeds_the_real_output_back():
    model = ScriptedModel([v1_call(SECRET_CODE), "Thought: I have the digest.\nFinal Answer: done"], INTERNLM)
    steps, snapshots = run(model)

    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, THOUGHT, ANSWER]
    assert steps[0].text == "I should run code."
    assert steps[1].text == SECRET_CODE and steps[1].tool == "PythonInterpreter"
    assert steps[2].text.strip() == SECRET_OUTPUT
    assert final_answer(steps) == "done"
    first, second = model.prompts
    assert first.startswith("<|System|>:You are a assistant who can utilize external tools.\n[{'name': 'PythonInterpreter'")
    assert "should be one of [['PythonInterpreter']]" in first
    assert first.endswith("<|User|>:What is the digest?\n<|Bot|>:")
    # The model's turn, closed by <eoa>, then the sandbox's real output in a system turn.
    assert second.startswith(first)
    assert second[len(first):] == (
        f"{v1_call(SECRET_CODE)}<eoa>\n<|System|>:Response:{SECRET_OUTPUT}\n\n<|Bot|>:"
    )
    assert len(snapshots) > 5, "the run streams partial steps, not only finished ones"


def test_react_v1_history_and_sandbox_errors_reach_the_model():
    model = ScriptedModel([v1_call("print(1 / 0)"), "Thought: it failed.\nFinal Answer: cannot divide by zero"],
                          INTERNLM)
    history = [PastExchange("Hi", (Turn("Thought: greet\nFinal Answer: Hello!"),))]
    steps, _ = run(model, "Divide 1 by 0", history=history)

    assert "ZeroDivisionError" in steps[2].text
    assert "<|User|>:Hi\n<|Bot|>: Hello!<eoa>\n<|User|>:Divide 1 by 0\n" in model.prompts[0]
    assert f"<|System|>:Response:{steps[2].text}\n" in model.prompts[1]


def test_stop_word_cuts_a_response_the_model_invents():
    invented = v1_call("print(6 * 7)") + "\nResponse: 41\nThought: so it is 41\nFinal Answer: 41"
    model = ScriptedModel([invented, "Final Answer: 42"], INTERNLM)
    steps, _ = run(model)

    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, ANSWER]
    assert [s.text for s in steps if s.kind == OBSERVATION] == [str(6 * 7)]
    assert "41" not in model.prompts[1]

    # lagent's behaviour, one setting away: no extra stop word, the invented response is taken.
    model = ScriptedModel([invented, "Final Answer: 42"], INTERNLM)
    steps, _ = run(model, protocol=protocol_for(INTERNLM, departures=Departures.none()))
    assert kinds(steps) == [THOUGHT, ANSWER] and final_answer(steps) == "41"


def test_last_turn_forces_the_final_answer_and_runs_no_more_code():
    model = ScriptedModel([v1_call(SECRET_CODE), v1_call('print("second run")')], INTERNLM)
    steps, _ = run(model, max_turns=2)

    assert FORCE_STOP_EN not in model.prompts[0]
    assert model.prompts[1].endswith(f"<|System|>:{FORCE_STOP_EN}\n<|Bot|>:")
    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, THOUGHT, CODE, NOTICE, GAVE_UP]
    assert [step.text for step in steps if step.kind == OBSERVATION] == [SECRET_OUTPUT]
    assert steps[-2].text == "Not run: this was the last turn."
    assert steps[-1].text == "No final answer was reached within 2 turns." and final_answer(steps) is None


def test_max_turns_bounds_replies_that_ignore_the_format():
    model = ScriptedModel(["I think it is four.", "Still four.", "Four, finally."], INTERNLM)
    steps, _ = run(model, max_turns=3)

    assert model.calls == 3
    assert kinds(steps) == [THOUGHT, OBSERVATION, THOUGHT, OBSERVATION, ANSWER]
    assert [s.text for s in steps if s.kind == THOUGHT] == ["I think it is four.", "Still four."]
    assert [s.text for s in steps if s.kind == OBSERVATION] == [NO_ACTION] * 2
    assert f"<|Bot|>:I think it is four.<eoa>\n<|System|>:Response:{NO_ACTION}\n" in model.prompts[1]
    # Asked for the final answer, a plain-text reply is taken as the answer.
    assert final_answer(steps) == "Four, finally."


def test_unknown_tool_and_switched_off_interpreter_are_reported_to_the_model():
    model = ScriptedModel([v1_call("1 + 1", tool="Calculator"), "Final Answer: 2"], INTERNLM)
    steps, _ = run(model)
    invalid = "The action is invalid, please check the action name."  # lagent's InvalidAction message
    assert steps[2].text == invalid
    assert f"Response:{invalid}" in model.prompts[1]

    model = ScriptedModel([v1_call("1 + 1"), "Final Answer: 2"], INTERNLM)
    steps, _ = run(model, tools=[])
    assert steps[2].text == invalid
    assert "should be one of [[]]" in model.prompts[0] and "\n[]\nTo use a tool" in model.prompts[0]


@pytest.mark.parametrize(
    ("output", "thought", "tool", "code", "answer"),
    [
        ("Thought: a\nAction: PythonInterpreter\nAction Input: print(1)", " a\n", "PythonInterpreter", "print(1)", None),
        ("Thought: a Action: T\nAction Input: ```python\nx = 1\nprint(x)\n```", " a ", "T", "x = 1\nprint(x)", None),
        ("Thought: a\nAction: T\nAction Input: ```python\nprint(2", " a\n", "T", "print(2", None),  # still streaming
        ('Thought: a\nAction: T\nAction Input: {"command": "print(3)"}', " a\n", "T", "print(3)", None),  # JSON
        ("Thought: a\nAction: T\nAction Input: ```py\nprint(4)\n```", " a\n", "T", "print(4)", None),  # fence tag
        ("Thought: a\nAction: PythonInterpreter", " a\n", None, None, None),  # no input: not a call
        ("Thought: a\nAction: T\nFinal Answer: 3", " a\n", None, None, " 3"),  # the answer wins
        ("no format at all", "no format at all", None, None, None),
    ],
)
def test_react_parse(output, thought, tool, code, answer):
    reply = ReActProtocol().parse(output)
    assert reply.thought == thought
    assert (reply.call.tool, reply.call.code) == (tool, code) if tool else reply.call is None
    assert reply.answer == answer


def test_internlm2_tool_call_and_environment_turn():
    model = ScriptedModel([v2_call(SECRET_CODE), "The digest is in the output above."], INTERNLM2)
    steps, _ = run(model)

    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, ANSWER]
    assert steps[1].text == SECRET_CODE and steps[1].tool == "PythonInterpreter"
    assert steps[2].text.strip() == SECRET_OUTPUT
    first, second = model.prompts
    assert first.startswith("<|im_start|>system\n当开启工具以及代码时，根据需求选择合适的工具进行调用<|im_end|>\n"
                            "<|im_start|>system name=<|interpreter|>\n你现在已经能够在一个有状态的 Jupyter 笔记本环境中运行")
    assert first.endswith("<|im_start|>user\nWhat is the digest?<|im_end|>\n<|im_start|>assistant\n")
    assert second[len(first):] == (
        "Let me run code.<|action_start|><|interpreter|>\n"
        f"```python\n{SECRET_CODE}\n```<|action_end|>\n<|im_end|>\n"
        f"<|im_start|>environment name=<|interpreter|>\n{SECRET_OUTPUT}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_internlm2_without_interpreter_and_forced_final_turn():
    model = ScriptedModel([v2_call("print(1)"), "One."], INTERNLM2)
    steps, _ = run(model, tools=[])
    assert "<|interpreter|>\n" not in model.prompts[0].split("<|im_start|>user")[0]
    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, ANSWER]
    assert "interpreter is switched off" in steps[2].text
    assert f"<|im_start|>environment name=<|interpreter|>\n{steps[2].text}<|im_end|>\n" in model.prompts[1]

    model = ScriptedModel([v2_call("print(1)")], INTERNLM2)
    steps, _ = run(model, max_turns=1)
    assert model.prompts[0].endswith(f"<|im_start|>system\n{FORCE_STOP_EN}<|im_end|>\n<|im_start|>assistant\n")
    assert kinds(steps) == [THOUGHT, CODE, NOTICE, GAVE_UP]


def test_internlm2_empty_reply_gets_a_reminder_or_ends_as_in_lagent():
    model = ScriptedModel(["", "Two."], INTERNLM2)
    steps, _ = run(model, "1 + 1?")
    assert kinds(steps) == [OBSERVATION, ANSWER] and final_answer(steps) == "Two."
    assert "<|im_start|>assistant\n<|im_end|>\n<|im_start|>environment name=<|interpreter|>\nYour reply was empty." \
        in model.prompts[1]

    model = ScriptedModel(["", "Two."], INTERNLM2)
    steps, _ = run(model, "1 + 1?", protocol=protocol_for(INTERNLM2, departures=Departures.none()))
    assert model.calls == 1 and kinds(steps) == [ANSWER] and "empty" in final_answer(steps)


def test_stop_ends_the_run_before_the_code_runs():
    stop = threading.Event()
    model = ScriptedModel([v1_call('print("ran")'), "Final Answer: x"], INTERNLM)
    runs = run_agent(model, ReActProtocol(), "q", tools=[PythonInterpreter()], stop=stop)
    next(runs)
    stop.set()
    steps = list(runs)[-1]
    assert steps[-1].kind == STOPPED
    assert OBSERVATION not in kinds(steps)
    assert model.calls == 1


def test_model_failures_become_error_steps():
    model = ScriptedModel([v1_call("print(1)")], INTERNLM)
    steps, _ = run(model)
    assert steps[-1].kind == ERROR and "press Clear" in steps[-1].text
    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, ERROR]

    class BrokenModel:
        family = INTERNLM

        def stream_completion(self, prompt, stop_words=(), stop=None, **kwargs):
            yield "Thought: hm"
            raise RuntimeError("CUDA out of memory")

    steps, _ = run(BrokenModel())
    assert steps[-1].kind == ERROR and "CUDA out of memory" in steps[-1].text


def test_huge_tool_output_is_clipped_before_it_reaches_the_prompt():
    model = ScriptedModel([v1_call('print("x" * 30000)'), "Final Answer: many x"], INTERNLM)
    steps, _ = run(model)
    observation = steps[2].text
    assert len(observation) < 2 * MAX_OBSERVATION_CHARS and "characters left out" in observation
    assert observation.startswith("x" * 100)
    assert f"Response:{observation}\n" in model.prompts[1]


def test_tool_exceptions_become_observations():
    class FailingTool:
        name = "PythonInterpreter"
        description = "runs code"

        def __call__(self, code):
            raise OSError("no space left on device")

    model = ScriptedModel([v1_call("print(1)"), "Final Answer: x"], INTERNLM)
    steps, _ = run(model, tools=[FailingTool()])
    assert steps[2].kind == OBSERVATION and "no space left on device" in steps[2].text
    assert final_answer(steps) == "x"


def test_earlier_exchanges_that_do_not_fit_are_dropped_oldest_first():
    class SmallWindow(ScriptedModel):
        def fits(self, prompt):
            return len(prompt) < 900

    history = [PastExchange(f"question {i} " + "x" * 200, (Turn(f"Final Answer: answer {i}"),)) for i in range(4)]
    model = SmallWindow(["Final Answer: done"], INTERNLM)
    steps, _ = run(model, "new question", history=history, tools=[])
    prompt = model.prompts[0]
    assert len(prompt) < 900 and final_answer(steps) == "done"
    kept = [i for i in range(4) if f"answer {i}<eoa>" in prompt]
    assert kept and kept == list(range(4 - len(kept), 4)) and len(kept) < 4


def test_script_files_are_validated(tmp_path):
    script = tmp_path / "session.json"
    script.write_text(json.dumps({"family": "internlm2", "outputs": ["a", "b"]}))
    model = ScriptedModel.from_file(script)
    assert model.family is INTERNLM2 and model.outputs == ["a", "b"]
    for content, message in [
        ("{not json", "not valid JSON"),
        (json.dumps({"outputs": []}), "non-empty list of strings"),
        (json.dumps({"outputs": ["a"], "family": "gpt"}), "use one of internlm, internlm2, internlm3"),
        (json.dumps({"outputs": ["a"], "delay_s": -1}), "delay_s"),
    ]:
        script.write_text(content)
        with pytest.raises(ScriptError, match=message):
            ScriptedModel.from_file(script)
    with pytest.raises(ScriptError, match="cannot read"):
        ScriptedModel.from_file(tmp_path / "missing.json")


def test_shipped_demo_session_replays():
    from internlm_demo.agent import scripted

    model = ScriptedModel.from_file(scripted.__file__.replace("scripted.py", "demo_session.json"))
    model.delay_s = 0
    steps, _ = run(model, "What is 2**100?")
    assert steps[2].text.split()[0] == str(2**100)
    assert final_answer(steps) is not None


def test_tiny_demo_model_runs_the_loop_end_to_end():
    """A real (random) model: each turn's output is exactly the greedy completion of the prompt the
    protocol builds from the turns before it, and the run ends as the protocol reads the last output."""
    model = ChatModelCompletion(load_chat_model(DEMO_MODEL_ID, progress=False))
    assert model.info.is_demo
    protocol = protocol_for(model.family)
    tools = [PythonInterpreter()]
    _, snapshots = run(model, "What is 1 + 1?", max_turns=2, max_new_tokens=16, do_sample=False)
    steps = snapshots[-1]
    outputs = [step.text for step in steps if step.kind == MODEL]
    observations = [step.text for step in steps if step.kind == OBSERVATION]
    assert 1 <= len(outputs) <= 2
    turns = []
    for index, output in enumerate(outputs):
        prompt = protocol.build_prompt("What is 1 + 1?", [], turns, tools, force_final=index == 1)
        texts = list(model.stream_completion(prompt, protocol.stop_words, max_new_tokens=16, do_sample=False))
        assert output == (texts[-1] if texts else "")
        if index < len(observations):
            turns.append(Turn(output, observations[index]))
    last = protocol.parse(outputs[-1])
    if last.answer is not None:
        assert steps[-1].kind == ANSWER and steps[-1].text == last.answer.strip()
    else:
        assert len(outputs) == 2 and steps[-1].kind in (ANSWER, GAVE_UP)


@pytest.mark.parametrize("name", ["internlm-chat-7b-tiny", "internlm2-chat-7b-tiny"])
def test_raw_completion_matches_the_original_greedy_chat(name):
    model = ChatModelCompletion(load_chat_model(str(FIXTURES_DIR / name), progress=False))
    case = min(reference(name)["chat_cases"], key=lambda c: len(c["input_ids"]))
    *_, text = model.stream_completion(case["prompt"], protocol_for(model.family).stop_words,
                                       max_new_tokens=len(case["greedy"]["output_ids"]), do_sample=False)
    assert text == case["greedy"]["response"]


def test_context_overflow_is_an_error_step_with_advice():
    model = ChatModelCompletion(load_chat_model(str(FIXTURES_DIR / "internlm2-chat-7b-tiny"), progress=False))
    steps, _ = run(model, max_new_tokens=8)
    assert kinds(steps) == [ERROR]
    assert f"context window is {model.chat_model.context_window} tokens" in steps[0].text
    assert "press Clear" in steps[0].text


def test_special_tokens_decode_as_written():
    tokenizer = load_chat_model(str(FIXTURES_DIR / "internlm2-chat-7b-tiny"), progress=False).tokenizer
    text = v2_call("print(1)").removesuffix("<|action_end|>\n")
    ids = tokenizer.encode(text, add_special_tokens=False)
    specials = {tokenizer.token_id(t): t for t in tokenizer.special_tokens}
    assert decode_with_markers(tokenizer, ids, specials) == text
    assert InterpreterCallProtocol().parse(decode_with_markers(tokenizer, ids, specials)).call.code == "print(1)"


def test_cut_at_stop_word_takes_the_earliest():
    assert cut_at_stop_word("a<|action_end|>b<|im_end|>", ("<|im_end|>", "<|action_end|>")) == ("a", True)
    assert cut_at_stop_word("abc", ("<eoa>",)) == ("abc", False)
