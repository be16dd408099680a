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
    MAX_OBSERVATION_CHARS,
    OBSERVATION,
    STOPPED,
    THOUGHT,
    final_answer,
    run_agent,
)
from internlm_demo.agent.protocol import (
    INTERNLM2_FORCE_FINAL,
    REACT_FORCE_FINAL,
    REACT_FORMAT_REMINDER,
    InterpreterCallProtocol,
    ReActProtocol,
    protocol_for,
)
from internlm_demo.agent.sandbox import PythonInterpreter
from internlm_demo.agent.scripted import ScriptedModel, ScriptError
from internlm_demo.models.families import INTERNLM, INTERNLM2
from tests.conftest import FIXTURES_DIR, reference

# Code whose output the script cannot know in advance: only a real run of it produces the digest.
SECRET_CODE = 'import hashlib\nprint(hashlib.sha256(b"internlm agent").hexdigest())'
SECRET_OUTPUT = hashlib.sha256(b"internlm agent").hexdigest()


def v1_call(code: str, tool: str = "PythonInterpreter", thought: str = "I should run code.") -> str:
    return f"Thought: {thought}\nAction: {tool}\nAction Input: ```python\n{code}\n```"


def v2_call(code: str, thought: str = "Let me run code.") -> str:
    return f"{thought}<|action_start|><|interpreter|>\n```python\n{code}\n```<|action_end|>\n"


def run(model, query="What is the digest?", history=(), tools=None, **kwargs):
    tools = [PythonInterpreter()] if tools is None else tools
    snapshots = list(run_agent(model, protocol_for(model.family), query, history, tools=tools, **kwargs))
    return snapshots[-1], snapshots


def kinds(steps):
    return [step.kind for step in steps]


def test_react_v1_runs_the_code_and_feeds_the_real_output_back():
    model = ScriptedModel([v1_call(SECRET_CODE), "Thought: I have the digest.\nFinal Answer: done"], INTERNLM)
    steps, snapshots = run(model)

    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, THOUGHT, ANSWER]
    assert steps[0].text == "I should run code."
    assert steps[1].text == SECRET_CODE and steps[1].tool == "PythonInterpreter"
    assert steps[2].text.strip() == SECRET_OUTPUT
    assert final_answer(steps) == "done"
    first, second = model.prompts
    assert first.startswith("<|System|>:You are an assistant that can use external tools.\n")
    assert PythonInterpreter().description in first and "one of [PythonInterpreter]" in first
    assert first.endswith("<|User|>:What is the digest?<eoh>\n<|Bot|>:")
    # The model's turn, closed by <eoa>, then the sandbox's real output in a system turn.
    assert second.startswith(first)
    assert second[len(first):] == (
        f"{v1_call(SECRET_CODE)}<eoa>\n<|System|>:Response:{steps[2].text}\n\n<|Bot|>:"
    )
    assert len(snapshots) > 5, "the run streams partial steps, not only finished ones"


def test_react_v1_history_and_sandbox_errors_reach_the_model():
    model = ScriptedModel([v1_call("print(1 / 0)"), "Thought: it failed.\nFinal Answer: cannot divide by zero"],
                          INTERNLM)
    steps, _ = run(model, "Divide 1 by 0", history=[("Hi", "Hello!")])

    assert "ZeroDivisionError" in steps[2].text
    assert "<|User|>:Hi<eoh>\n<|Bot|>:Hello!<eoa>\n<|User|>:Divide 1 by 0<eoh>\n" in model.prompts[0]
    assert f"<|System|>:Response:{steps[2].text}\n" in model.prompts[1]


def test_stop_word_cuts_a_response_the_model_invents():
    invented = v1_call("print(6 * 7)") + "\nResponse: 41\nThought: so it is 41\nFinal Answer: 41"
    model = ScriptedModel([invented, "Final Answer: 42"], INTERNLM)
    steps, _ = run(model)

    assert kinds(steps) == [THOUGHT, CODE, OBSERVATION, ANSWER]
    assert steps[1].text == "print(6 * 7)"
    assert steps[2].text.strip() == str(6 * 7)
    assert "41" not in model.prompts[1]


def test_last_turn_forces_the_final_answer_and_runs_no_more_code():
    model = ScriptedModel([v1_call(SECRET_CODE), v1_call('print("second run")')], INTERNLM)
    steps, _ = run(model, max_turns=2)

    assert REACT_FORCE_FINAL not in model.prompts[0]
    assert model.prompts[1].endswith(f"<|System|>:{REACT_FORCE_FINAL}\n<|Bot|>:")
    observations = [step.text for step in steps if step.kind == OBSERVATION]
    assert observations[0].strip() == SECRET_OUTPUT
    assert observations[1] == "Not run: this was the last turn."
    assert not any("second run" in text for text in observations)
    assert steps[-1].kind == ANSWER and "within 2 turns" in steps[-1].text


def test_max_turns_bounds_replies_that_ignore_the_format():
    model = ScriptedModel(["I think it is four.", "Still four.", "Four, finally."], INTERNLM)
    steps, _ = run(model, max_turns=3)

    assert model.calls == 3
    assert kinds(steps) == [THOUGHT, OBSERVATION, THOUGHT, OBSERVATION, ANSWER]
    assert [s.text for s in steps if s.kind == OBSERVATION] == [REACT_FORMAT_REMINDER] * 2
    assert f"<|Bot|>:I think it is four.<eoa>\n<|System|>:Response:{REACT_FORMAT_REMINDER}\n" in model.prompts[1]
    # Asked for the final answer, a plain-text reply is taken as the answer.
    assert final_answer(steps) == "Four, finally."


def test_unknown_tool_and_switched_off_interpreter_are_reported_to_the_model():
    model = ScriptedModel([v1_call("1 + 1", tool="Calculator"), "Final Answer: 2"], INTERNLM)
    steps, _ = run(model)
    assert steps[2].text == "Calculator is not a valid tool; use one of [PythonInterpreter]."
    assert f"Response:{steps[2].text}" in model.prompts[1]

    model = ScriptedModel([v1_call("1 + 1"), "Final Answer: 2"], INTERNLM)
    steps, _ = run(model, tools=[])
    assert "no tools are enabled" in steps[2].text
    assert "(no tools are available)" in model.prompts[0]


@pytest.mark.parametrize(
    ("output", "thought", "tool", "code", "answer"),
    [
        ("Thought: a\nAction: PythonInterpreter\nAction Input: print(1)", "a", "PythonInterpreter", "print(1)", None),
        ("Thought: a Action: T\nAction Input: ```python\nx = 1\nprint(x)\n```", "a", "T", "x = 1\nprint(x)", None),
        ("Thought: a\nAction: T\nAction Input: ```python\nprint(2", "a", "T", "print(2", None),  # still streaming
        ("Thought: a\nAction: PythonInterpreter", "a", None, None, None),  # no input: not a call
        ("Thought: a\nAction: T\nFinal Answer: 3", "a", None, None, "3"),  # the answer wins
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
    assert first.startswith(f"<|im_start|>system\n{INTERNLM2.default_meta_instruction}<|im_end|>\n"
                            "<|im_start|>system name=<|interpreter|>\n")
    assert first.endswith("<|im_start|>user\nWhat is the digest?<|im_end|>\n<|im_start|>assistant\n")
    assert second[len(first):] == (
        "Let me run code.\n<|action_start|><|interpreter|>\n"
        f"```python\n{SECRET_CODE}\n```<|action_end|>\n<|im_end|>\n"
        f"<|im_start|>environment name=<|interpreter|>\n{steps[2].text}<|im_end|>\n<|im_start|>assistant\n"
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
    assert model.prompts[0].endswith(f"<|im_start|>system\n{INTERNLM2_FORCE_FINAL}<|im_end|>\n<|im_start|>assistant\n")
    assert [s.text for s in steps if s.kind == OBSERVATION] == ["Not run: this was the last turn."]
    assert steps[-1].kind == ANSWER


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
    assert kinds(steps)[:3] == [THOUGHT, CODE, OBSERVATION]

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
    model = ChatModelCompletion(load_chat_model(None, progress=False))
    assert model.info.is_demo
    steps, _ = run(model, "What is 1 + 1?", max_turns=2, max_new_tokens=16, seed=0)
    assert steps[-1].kind == ANSWER
    assert {step.turn for step in steps} <= {1, 2}


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
