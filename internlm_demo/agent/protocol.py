"""How the agent talks to each InternLM generation, with lagent 0.2.4 as the reference.

InternLM v1 follows lagent's ``ReActProtocol`` (``Thought:`` / ``Action:`` / ``Action Input:`` /
``Response:`` / ``Final Answer:``) in the meta template of the tutorial-era lagent (commit 511b038,
the same code as lagent 0.1.2). InternLM2 and InternLM3 follow lagent's ``Internlm2Protocol``:
``<|action_start|><|interpreter|>`` calls in the assistant turn, results in the ``environment`` role,
with ``INTERNLM2_META``'s role markers. Every instruction text comes from the installed ``lagent``
package; docs/agent-protocols.md gives the evidence and each place where we differ on purpose.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from lagent.actions import ActionExecutor, InvalidAction, NoAction
from lagent.actions import PythonInterpreter as LagentPythonInterpreter
from lagent.agents.internlm2_agent import INTERPRETER_CN, META_CN
from lagent.agents.react import CALL_PROTOCOL_CN, CALL_PROTOCOL_EN, FORCE_STOP_PROMPT_CN, FORCE_STOP_PROMPT_EN

ENGLISH, CHINESE = "en", "zh"


class Tool(TypingProtocol):
    """What the agent needs from a tool: a name, a description for the model, and a call."""

    name: str
    description: str

    def __call__(self, code: str) -> str: ...


@dataclass(frozen=True)
class Departures:
    """Where the agent differs from lagent on purpose; ``Departures.none()`` is lagent's exact behaviour.

    ``force_final_turn``: InternLM2/3 get a last turn that asks for the answer (lagent's
    ``Internlm2Agent`` has none), and a tool called in the last turn is not run (lagent's ReAct runs
    it, then gives up). ``stop_at_response``: ``"\\nResponse:"`` ends a v1 turn, so a model cannot
    invent the tool's result (lagent takes the invented one). ``empty_reply_reminder``: an empty
    InternLM2/3 reply is answered with a reminder and another turn (lagent ends with an empty answer).
    """

    force_final_turn: bool = True
    stop_at_response: bool = True
    empty_reply_reminder: bool = True

    @classmethod
    def none(cls) -> Departures:
        return cls(False, False, False)


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked for: its name, the input as lagent hands it over, and the code to run."""

    tool: str
    code: str
    raw_input: str = ""


@dataclass(frozen=True)
class Reply:
    """One model output, parsed. Neither ``call`` nor ``answer`` means the format was not followed.

    ``thought`` and ``answer`` are the raw text lagent keeps (not stripped).
    """

    thought: str
    call: ToolCall | None = None
    answer: str | None = None


@dataclass(frozen=True)
class Turn:
    """One finished model turn and what was fed back after it (None: nothing, the exchange ended)."""

    output: str  # the model's text, cut at the stop word
    observation: str | None = None


@dataclass(frozen=True)
class PastExchange:
    """An earlier question with the model turns that answered it (the last one is the answer)."""

    query: str
    turns: tuple[Turn, ...]


History = Sequence[PastExchange]


class Prompt(str):
    """Prompt text that remembers which spans are tool output: those are tokenized as plain text.

    A tool's output may contain strings such as ``<|im_end|>`` or ``<eoa>``; read as control tokens
    they would let the output forge turns, so the tokenizer must not read them there.
    """

    plain_spans: tuple[tuple[int, int], ...] = ()

    @classmethod
    def join(cls, pieces: Sequence[tuple[str, bool]]) -> Prompt:
        """The concatenation of ``(text, plain)`` pieces."""
        prompt = cls("".join(text for text, _ in pieces))
        spans, start = [], 0
        for text, plain in pieces:
            if plain and text:
                spans.append((start, start + len(text)))
            start += len(text)
        prompt.plain_spans = tuple(spans)
        return prompt


@dataclass(frozen=True)
class Markers:
    """Begin and end strings of one chat role."""

    begin: str
    end: str

    def wrap(self, content: str, plain: bool = False) -> list[tuple[str, bool]]:
        return [(self.begin, False), (content, plain), (self.end, False)]


def extract_code(text: str) -> str:
    """The code in a tool input: inside its first Markdown fence (closed or still being written), as
    lagent's interpreters cut it, else the whole text; without the fence's language tag."""
    code = text
    if "```python" in text:
        code = text.split("```python")[1].split("```")[0]
    elif "```" in text:
        code = text.split("```")[1]
        tag, newline, rest = code.partition("\n")
        code = rest if newline and re.fullmatch(r"[\w+-]*", tag.strip()) else code
    return code.strip("\n").rstrip()


def _json_command(text: str) -> str | None:
    """The ``command`` of a JSON Action Input, read as lagent's ``JsonParser`` reads it; None when not JSON."""
    match = re.search(r"^\s*(```json\n)?(.*)\n```\s*$", text, re.S)
    try:
        data = json.loads(match.group(2).strip() if match else text)
    except json.JSONDecodeError:
        return None
    command = data.get("command") if isinstance(data, dict) else None
    return command if isinstance(command, str) else None


def _lagent_error(action) -> str:
    """The message one of lagent's built-in actions returns when called without a message of its own."""
    return action("").errmsg


REACT_NO_ACTION = _lagent_error(NoAction())  # "Please follow the format"
REACT_INVALID_ACTION = _lagent_error(InvalidAction())
# Tool descriptions exactly as lagent's ActionExecutor lists them, for tools lagent has under the same name.
LAGENT_TOOL_INFO = {info["name"]: info for info in ActionExecutor([LagentPythonInterpreter()]).get_actions_info()}

# The meta template of the tutorial-era lagent demo: HFTransformer's default for InternLM-chat-7b at 511b038.
V1_SYSTEM = Markers("<|System|>:", "\n")
V1_USER = Markers("<|User|>:", "\n")
V1_ASSISTANT = Markers("<|Bot|>:", "<eoa>\n")


@dataclass(frozen=True)
class ReActProtocol:
    """lagent's ReAct for InternLM v1, rendered with the tutorial-era meta template."""

    name: str = "ReAct (InternLM v1, lagent)"
    language: str = ENGLISH
    departures: Departures = Departures()
    system: Markers = V1_SYSTEM
    user: Markers = V1_USER
    assistant: Markers = V1_ASSISTANT
    thought: str = "Thought:"
    action: str = "Action:"
    action_input: str = "Action Input:"
    response: str = "Response:"
    finish: str = "Final Answer:"

    forced_final_turn: bool = True  # lagent's ReAct asks for the final answer in its last turn

    @property
    def stop_words(self) -> tuple[str, ...]:
        return ("<eoa>", "\nResponse:") if self.departures.stop_at_response else ("<eoa>",)

    @property
    def force_final_prompt(self) -> str:
        return FORCE_STOP_PROMPT_CN if self.language == CHINESE else FORCE_STOP_PROMPT_EN

    def system_prompt(self, tools: Sequence[Tool]) -> str:
        """lagent's call protocol with the tools listed as its ActionExecutor lists them."""
        infos = [LAGENT_TOOL_INFO.get(tool.name, {"name": tool.name, "description": tool.description})
                 for tool in tools]
        template = CALL_PROTOCOL_CN if self.language == CHINESE else CALL_PROTOCOL_EN
        return template.format(
            tool_description=infos, action_names=[tool.name for tool in tools], thought=self.thought,
            action=self.action, action_input=self.action_input, response=self.response, finish=self.finish,
        )

    def build_prompt(self, query: str, history: History, turns: Sequence[Turn], tools: Sequence[Tool],
                     force_final: bool = False) -> Prompt:
        """The whole prompt, ending where the model writes its next turn.

        Earlier exchanges appear as (question, final answer), as the tutorial-era ReAct kept them.
        """
        pieces = self.system.wrap(self.system_prompt(tools))
        for past in history:
            pieces += self.user.wrap(past.query) + self.assistant.wrap(self.answer_text(past.turns))
        pieces += self.user.wrap(query)
        for turn in turns:
            pieces += self.assistant.wrap(turn.output)
            if turn.observation is not None:
                pieces += [(self.system.begin + self.response, False), (turn.observation, True),
                           ("\n" + self.system.end, False)]
        if force_final:
            pieces += self.system.wrap(self.force_final_prompt)
        return Prompt.join([*pieces, (self.assistant.begin, False)])

    def parse(self, text: str) -> Reply:
        """Split a (possibly still growing) output as lagent's ``ReActProtocol.parse`` does."""
        thought = text.split(self.action)[0].split(self.thought)[-1].split(self.finish)[0]
        if self.finish in text:
            return Reply(thought, answer=text.split(self.finish)[-1])
        tools = re.findall(re.escape(self.action) + r"(.*?)\n", text)
        inputs = re.findall(re.escape(self.action_input) + r"(.*)", text, re.DOTALL)
        if not (tools and inputs):
            return Reply(thought)
        raw_input = inputs[-1].strip().strip('"')
        code = _json_command(raw_input)
        return Reply(thought, ToolCall(tools[-1].strip(), extract_code(raw_input if code is None else code),
                                       raw_input))

    def answer_text(self, turns: Sequence[Turn]) -> str:
        """What an exchange answered, as the tutorial-era ReAct kept it in the session history."""
        reply = self.parse(turns[-1].output) if turns else Reply("")
        return reply.answer if reply.answer is not None else (turns[-1].output if turns else "")

    def no_call_message(self, reply: Reply) -> str:
        return REACT_NO_ACTION

    def find_tool(self, call: ToolCall, tools: Sequence[Tool]) -> Tool | None:
        return next((tool for tool in tools if tool.name == call.tool), None)

    def unknown_tool_message(self, call: ToolCall, tools: Sequence[Tool]) -> str:
        return REACT_INVALID_ACTION


INTERNLM2_EMPTY_REPLY = "Your reply was empty. Answer the user, or run code as described."  # ours, see Departures


@dataclass(frozen=True)
class InterpreterCallProtocol:
    """lagent's ``Internlm2Protocol`` (code interpreter only) in ``INTERNLM2_META``'s role markers."""

    name: str = "InternLM2 tool calls (lagent)"
    language: str = CHINESE  # lagent 0.2.4 ships the InternLM2 texts in Chinese only
    departures: Departures = Departures()
    system: Markers = Markers("<|im_start|>system\n", "<|im_end|>\n")
    interpreter_system: Markers = Markers("<|im_start|>system name=<|interpreter|>\n", "<|im_end|>\n")
    user: Markers = Markers("<|im_start|>user\n", "<|im_end|>\n")
    assistant: Markers = Markers("<|im_start|>assistant\n", "<|im_end|>\n")
    environment: Markers = Markers("<|im_start|>environment name=<|interpreter|>\n", "<|im_end|>\n")
    action_start: str = "<|action_start|>"
    action_end: str = "<|action_end|>"
    interpreter: str = "<|interpreter|>"
    plugin: str = "<|plugin|>"
    meta_prompt: str = META_CN
    interpreter_prompt: str = INTERPRETER_CN
    stop_words: tuple[str, ...] = ("<|im_end|>", "<|action_end|>")

    @property
    def forced_final_turn(self) -> bool:
        """lagent's Internlm2Agent has no forced final turn; ours asks with lagent's ReAct text."""
        return self.departures.force_final_turn

    @property
    def force_final_prompt(self) -> str:
        return FORCE_STOP_PROMPT_EN if self.language == ENGLISH else FORCE_STOP_PROMPT_CN

    def build_prompt(self, query: str, history: History, turns: Sequence[Turn], tools: Sequence[Tool],
                     force_final: bool = False) -> Prompt:
        """The whole prompt, ending where the model writes its next turn; earlier tool calls included."""
        pieces = self.system.wrap(self.meta_prompt) if self.meta_prompt else []
        if tools and self.interpreter_prompt:
            pieces += self.interpreter_system.wrap(self.interpreter_prompt)
        for past in history:
            pieces += self._exchange(past.query, past.turns)
        pieces += self._exchange(query, turns)
        if force_final:
            pieces += self.system.wrap(self.force_final_prompt)
        return Prompt.join([*pieces, (self.assistant.begin, False)])

    def _exchange(self, query: str, turns: Sequence[Turn]) -> list[tuple[str, bool]]:
        pieces = self.user.wrap(query)
        for turn in turns:
            pieces += self.assistant.wrap(self._assistant_content(turn.output))
            if turn.observation is not None:
                pieces += self.environment.wrap(turn.observation, plain=True)
        return pieces

    def parse(self, text: str) -> Reply:
        """Read an output as lagent's ``Internlm2Protocol.parse`` does: plugin call, interpreter call or answer."""
        for name in (self.plugin, self.interpreter):
            if name in text:
                thought, body = self._split_call(text, name)
                raw_input = body.split(self.action_end)[0].strip()
                return Reply(thought, ToolCall(name, extract_code(raw_input), raw_input))
        return Reply("", answer=text.split(self.action_start)[0])

    def _split_call(self, text: str, name: str) -> tuple[str, str]:
        if self.action_start + name in text:
            thought, body, *_ = text.split(self.action_start + name)
            return thought, body
        # A call without <|action_start|>: lagent still takes it, cutting the text at a stray start token.
        thought, body, *_ = text.split(name)
        return thought[:thought.rfind(self.action_start)].strip() if self.action_start in thought \
            else thought.strip(), body

    def _assistant_content(self, output: str) -> str:
        """The assistant turn as lagent writes it back: the text, then the call rebuilt from its input."""
        reply = self.parse(output)
        if reply.call is None:
            return reply.answer
        return f"{reply.thought}{self.action_start}{reply.call.tool}\n{reply.call.raw_input}{self.action_end}\n"

    def answer_text(self, turns: Sequence[Turn]) -> str:
        return self.parse(turns[-1].output).answer or "" if turns else ""

    def no_call_message(self, reply: Reply) -> str:
        return INTERNLM2_EMPTY_REPLY

    def find_tool(self, call: ToolCall, tools: Sequence[Tool]) -> Tool | None:
        # The interpreter channel has no tool names: it is the (only) interpreter that is switched on.
        return tools[0] if call.tool == self.interpreter and tools else None

    def unknown_tool_message(self, call: ToolCall, tools: Sequence[Tool]) -> str:
        if call.tool == self.interpreter:
            return "The code interpreter is switched off; answer without running code."
        return f"{call.tool} is not available here; only the code interpreter can be called."


AgentProtocol = ReActProtocol | InterpreterCallProtocol


def protocol_for(family, language: str = ENGLISH, departures: Departures = Departures()) -> AgentProtocol:
    """ReAct for InternLM v1 chat models, lagent's InternLM2 protocol for ChatML (InternLM2/3) models.

    ``language`` ("en" or "zh") picks lagent's English or Chinese texts where lagent has both.
    """
    if family.user_turn.startswith("<|im_start|>"):
        return InterpreterCallProtocol(language=language, departures=departures)
    return ReActProtocol(language=language, departures=departures)
