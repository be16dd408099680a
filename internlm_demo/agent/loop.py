"""The ReAct loop: ask the model, run the tool it calls, feed the result back, until it answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .completion import CompletionModel
from .protocol import AgentProtocol, History, Reply, Tool, Turn

log = logging.getLogger(__name__)

THOUGHT, CODE, OBSERVATION, ANSWER, ERROR, STOPPED = "thought", "code", "observation", "answer", "error", "stopped"
MODEL = "model"  # a finished turn's raw output: kept for the history, shown when nothing else shows it
NOTICE = "notice"  # a remark for the user about a turn, never sent to the model
GAVE_UP = "gave_up"  # the run used all its turns without a final answer
MAX_OBSERVATION_CHARS = 4000  # what a tool output may cost in the prompt; the sandbox caps it again
DEFAULT_MAX_TURNS = 4  # lagent's ReAct default


@dataclass(frozen=True)
class Step:
    """One thing the agent did, as the UI shows it. ``kind`` is one of the constants above."""

    kind: str
    text: str
    turn: int
    tool: str = ""  # for CODE and OBSERVATION: which tool


def final_answer(steps: Sequence[Step]) -> str | None:
    """The answer an agent run ended with, or None when it was stopped or failed."""
    return next((step.text for step in reversed(steps) if step.kind == ANSWER), None)


def turns_of(steps: Sequence[Step]) -> list[Turn]:
    """The model turns of a run and what was fed back after each, as the prompt shows them."""
    turns: list[Turn] = []
    for step in steps:
        if step.kind == MODEL:
            turns.append(Turn(step.text))
        elif step.kind == OBSERVATION and turns and turns[-1].observation is None:
            turns[-1] = Turn(turns[-1].output, step.text)
    return turns


def clip(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """``text`` shortened in the middle to at most about ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n… [{len(text) - 2 * half} characters left out] …\n{text[-half:]}"


def reply_steps(reply: Reply, turn: int, tool_name: str = "") -> list[Step]:
    """How one parsed model output is shown (for a turn still streaming, too)."""
    steps = [Step(THOUGHT, reply.thought.strip(), turn)] if reply.thought.strip() else []
    if reply.call is not None:
        steps.append(Step(CODE, reply.call.code, turn, tool_name or reply.call.tool))
    if reply.answer is not None and reply.answer.strip():
        steps.append(Step(ANSWER, reply.answer.strip(), turn))
    return steps


def run_agent(model: CompletionModel, protocol: AgentProtocol, query: str, history: History = (),
              tools: Sequence[Tool] = (), max_turns: int = DEFAULT_MAX_TURNS, stop: threading.Event | None = None,
              **generate_kwargs) -> Iterator[list[Step]]:
    """Yield the steps so far, again after every change, until an answer, a stop or an error.

    Earlier exchanges that do not fit the model's context window are left out, oldest first.
    Nothing is raised: a failing model or tool becomes an ERROR step, a set ``stop`` event a
    STOPPED step.
    """
    steps: list[Step] = []
    try:
        yield from _agent_turns(model, protocol, query, history, tools, max(1, max_turns), stop, steps,
                                generate_kwargs)
    except Exception as exc:  # the UI must get a message, never a traceback
        log.exception("agent run failed")
        yield [*steps, Step(ERROR, f"The agent stopped: {exc}", steps[-1].turn if steps else 1)]


def _agent_turns(model: CompletionModel, protocol: AgentProtocol, query: str, history: History,
                 tools: Sequence[Tool], max_turns: int, stop: threading.Event | None, steps: list[Step],
                 generate_kwargs: dict) -> Iterator[list[Step]]:
    """The loop itself; appends finished steps to ``steps``."""
    departures = protocol.departures
    turns: list[Turn] = []
    history = list(history)
    for turn in range(1, max_turns + 1):
        last_turn = turn == max_turns
        force = last_turn and protocol.forced_final_turn
        prompt = protocol.build_prompt(query, history, turns, tools, force_final=force)
        while history and not _fits(model, prompt):
            history = history[1:]
            prompt = protocol.build_prompt(query, history, turns, tools, force_final=force)
        output = ""
        for output in model.stream_completion(prompt, protocol.stop_words, stop=stop, **generate_kwargs):
            reply = protocol.parse(output)
            yield [*steps, *reply_steps(reply, turn, _tool_name(protocol, reply, tools))]
        reply = protocol.parse(output)
        tool_name = _tool_name(protocol, reply, tools)
        steps += [Step(MODEL, output, turn), *reply_steps(reply, turn, tool_name)]
        if stop is not None and stop.is_set():
            steps.append(Step(STOPPED, "Stopped.", turn))
            yield list(steps)
            return
        empty_reply = reply.call is None and not (reply.answer or "").strip()
        if reply.answer is not None and not (empty_reply and departures.empty_reply_reminder):
            if empty_reply:
                steps.append(Step(ANSWER, "(The model's reply was empty.)", turn))
            yield list(steps)
            return
        no_answer = Step(GAVE_UP, f"No final answer was reached within {max_turns} turns.", turn)
        if last_turn and departures.force_final_turn:
            if reply.call is not None:
                steps += [Step(NOTICE, "Not run: this was the last turn.", turn, tool_name), no_answer]
            elif not reply.thought.strip():
                steps.append(no_answer)
            else:  # asked for the answer, the model replied in plain text: that text is its answer
                steps[-1] = Step(ANSWER, reply.thought.strip(), turn)  # shown as the answer, not a thought
            yield list(steps)
            return
        yield list(steps)
        observation = _observe(protocol, reply, tools)
        steps.append(Step(OBSERVATION, observation, turn, tool_name))
        turns.append(Turn(output, observation))
        if last_turn:
            steps.append(no_answer)
        yield list(steps)
    return


def _fits(model: CompletionModel, prompt: str) -> bool:
    fits = getattr(model, "fits", None)
    return fits is None or fits(prompt)


def _tool_name(protocol: AgentProtocol, reply: Reply, tools: Sequence[Tool]) -> str:
    """The name of the tool a reply calls, as the UI shows it ("" when it calls none)."""
    if reply.call is None:
        return ""
    tool = protocol.find_tool(reply.call, tools)
    return tool.name if tool is not None else reply.call.tool


def _observe(protocol: AgentProtocol, reply: Reply, tools: Sequence[Tool]) -> str:
    """What goes back to the model after a turn that did not answer."""
    if reply.call is None:
        return protocol.no_call_message(reply)
    tool = protocol.find_tool(reply.call, tools)
    if tool is None:
        return protocol.unknown_tool_message(reply.call, tools)
    if not reply.call.code.strip():
        return "The tool input was empty; send the code to run."
    try:
        return clip(tool(reply.call.code))
    except Exception as exc:  # a tool that fails is an observation for the model, not a crash
        log.exception("tool %s failed", tool.name)
        return f"The tool {tool.name} failed: {exc}"
