"""How an agent talks to the model: prompt layout and reply parsing, one protocol per InternLM generation.

InternLM v1 follows Lagent's ReAct protocol (``Thought:`` / ``Action:`` / ``Action Input:`` /
``Response:`` / ``Final Answer:``) inside the v1 chat markers, with a ``<|System|>:`` turn as in
Lagent's InternLM meta template. InternLM2 and later call the code interpreter with their own
tokens (``<|action_start|><|interpreter|>`` … ``<|action_end|>``) and read its results in the
``environment`` role.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

History = Sequence[tuple[str, str]]


class Tool(TypingProtocol):
    """What the agent needs from a tool: a name, a description for the model, and a call."""

    name: str
    description: str

    def __call__(self, code: str) -> str: ...


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked for, and its input (for the interpreter: the code, fences removed)."""

    tool: str
    code: str


@dataclass(frozen=True)
class Reply:
    """One model output, parsed. Neither ``call`` nor ``answer`` means the format was not followed."""

    thought: str
    call: ToolCall | None = None
    answer: str | None = None


@dataclass(frozen=True)
class Turn:
    """One finished model turn inside the current exchange and what was fed back after it."""

    output: str  # the model's text, cut at the stop word
    observation: str | None = None  # None when nothing was fed back (the exchange ended)


@dataclass(frozen=True)
class Markers:
    """Begin and end strings of one chat role."""

    begin: str
    end: str

    def wrap(self, content: str) -> str:
        return self.begin + content + self.end


def strip_code_fence(text: str) -> str:
    """The code inside a Markdown code block (closed or still being written), else the text stripped."""
    code = text.strip()
    if code.startswith("```"):
        code = code.partition("\n")[2].rstrip().removesuffix("```")
    return code.strip("\n").rstrip()


REACT_SYSTEM_PROMPT = """You are an assistant that can use external tools.
{tool_description}
To use a tool, reply in this format:
```
{thought} think about what you need to solve and whether a tool helps
{action} the tool name, one of [{tool_names}]
{action_input} the input to the tool
```
The tool's result comes back in this format:
```
{response} the result of the tool call
```
When you already know the answer, or need no tool, reply in this format:
```
{thought} how you reached the final answer
{finish} the final answer
```
Begin!"""

REACT_FORCE_FINAL = "Give the final answer now, based on the information above."

REACT_FORMAT_REMINDER = (
    "Your reply did not follow the format. To call a tool write Action: and Action Input:; "
    "to answer write Final Answer:."
)


@dataclass(frozen=True)
class ReActProtocol:
    """Lagent's ReAct prompt for InternLM v1: text fields inside ``<|System|>`` / ``<|User|>`` / ``<|Bot|>`` turns."""

    name: str = "ReAct (InternLM v1, Lagent)"
    system: Markers = Markers("<|System|>:", "\n")
    user: Markers = Markers("<|User|>:", "<eoh>\n")
    assistant: Markers = Markers("<|Bot|>:", "<eoa>\n")
    thought: str = "Thought:"
    action: str = "Action:"
    action_input: str = "Action Input:"
    response: str = "Response:"
    finish: str = "Final Answer:"
    system_prompt: str = REACT_SYSTEM_PROMPT
    force_final_prompt: str = REACT_FORCE_FINAL
    format_reminder: str = REACT_FORMAT_REMINDER
    # "\nResponse:" keeps the model from inventing the tool's result itself.
    stop_words: tuple[str, ...] = ("<eoa>", "\nResponse:")

    def build_prompt(self, query: str, history: History, turns: Sequence[Turn], tools: Sequence[Tool],
                     force_final: bool = False) -> str:
        """The whole prompt, ending where the model writes its next turn."""
        tool_description = "\n".join(f"{tool.name}: {tool.description}" for tool in tools) or "(no tools are available)"
        system_prompt = self.system_prompt.format(
            tool_description=tool_description, tool_names=", ".join(tool.name for tool in tools),
            thought=self.thought, action=self.action, action_input=self.action_input,
            response=self.response, finish=self.finish,
        )
        prompt = self.system.wrap(system_prompt)
        for old_query, old_answer in history:
            prompt += self.user.wrap(old_query) + self.assistant.wrap(old_answer)
        prompt += self.user.wrap(query)
        for turn in turns:
            prompt += self.assistant.wrap(turn.output.strip())
            if turn.observation is not None:
                prompt += self.system.wrap(self.response + turn.observation + "\n")
        if force_final:
            prompt += self.system.wrap(self.force_final_prompt)
        return prompt + self.assistant.begin

    def parse(self, text: str) -> Reply:
        """Split a (possibly still growing) output into thought, tool call and final answer."""
        thought = text.split(self.action)[0].split(self.thought)[-1].split(self.finish)[0].strip()
        if self.finish in text:
            return Reply(thought, answer=text.rsplit(self.finish, 1)[1].strip())
        before_input, has_input, code = text.rpartition(self.action_input)
        tools = re.findall(re.escape(self.action) + r"(.*?)\n", before_input)
        if not (has_input and tools):
            return Reply(thought)
        return Reply(thought, ToolCall(tools[-1].strip(), strip_code_fence(code)))

    def find_tool(self, call: ToolCall, tools: Sequence[Tool]) -> Tool | None:
        return next((tool for tool in tools if tool.name == call.tool), None)

    def unknown_tool_message(self, call: ToolCall, tools: Sequence[Tool]) -> str:
        if not tools:
            return f"{call.tool or 'That'} is not available: no tools are enabled. Answer with {self.finish}"
        names = ", ".join(tool.name for tool in tools)
        return f"{call.tool or 'An empty name'} is not a valid tool; use one of [{names}]."


INTERPRETER_SYSTEM_PROMPT = (
    "You can run Python code by sending it in this format:\n"
    "<|action_start|><|interpreter|>\n```python\ncode\n```<|action_end|>\n"
    "Each piece of code runs in a fresh, sandboxed Python process with a time limit and no network; "
    "print what you want to see. Use it for:\n"
    "- arithmetic and other mathematics, where you should analyse the problem and compute the answer in code\n"
    "- data processing and analysis\n"
    "- text processing\n"
    "Then answer the user in a friendly way based on the output."
)

INTERNLM2_FORCE_FINAL = "Give the final answer now, based on the information above, without running more code."

INTERNLM2_FORMAT_REMINDER = "Your reply was empty. Answer the user, or run code as described."


@dataclass(frozen=True)
class InterpreterCallProtocol:
    """InternLM2's tool-call format: action tokens in the assistant turn, results in the ``environment`` role."""

    name: str = "InternLM2 tool calls"
    system: Markers = Markers("<|im_start|>system\n", "<|im_end|>\n")
    interpreter_system: Markers = Markers("<|im_start|>system name=<|interpreter|>\n", "<|im_end|>\n")
    user: Markers = Markers("<|im_start|>user\n", "<|im_end|>\n")
    assistant: Markers = Markers("<|im_start|>assistant\n", "<|im_end|>\n")
    environment: Markers = Markers("<|im_start|>environment name=<|interpreter|>\n", "<|im_end|>\n")
    action_start: str = "<|action_start|>"
    action_end: str = "<|action_end|>"
    interpreter: str = "<|interpreter|>"
    meta_instruction: str = ""
    interpreter_prompt: str = INTERPRETER_SYSTEM_PROMPT
    force_final_prompt: str = INTERNLM2_FORCE_FINAL
    format_reminder: str = INTERNLM2_FORMAT_REMINDER
    stop_words: tuple[str, ...] = ("<|im_end|>", "<|action_end|>")

    def build_prompt(self, query: str, history: History, turns: Sequence[Turn], tools: Sequence[Tool],
                     force_final: bool = False) -> str:
        """The whole prompt, ending where the model writes its next turn."""
        prompt = self.system.wrap(self.meta_instruction) if self.meta_instruction else ""
        if tools:
            prompt += self.interpreter_system.wrap(self.interpreter_prompt)
        for old_query, old_answer in history:
            prompt += self.user.wrap(old_query) + self.assistant.wrap(old_answer)
        prompt += self.user.wrap(query)
        for turn in turns:
            prompt += self.assistant.wrap(self._canonical(turn.output))
            if turn.observation is not None:
                prompt += self.environment.wrap(turn.observation)
        if force_final:
            prompt += self.system.wrap(self.force_final_prompt)
        return prompt + self.assistant.begin

    def parse(self, text: str) -> Reply:
        """Text before an action is the thought; without an action the whole text is the answer."""
        before, has_action, action = text.partition(self.action_start)
        if not has_action:
            return Reply("", answer=text.strip())
        if action.startswith(self.interpreter):
            name, body = self.interpreter, action[len(self.interpreter):]
        else:
            name, _, body = action.partition("\n")
        code = body.split(self.action_end)[0]
        return Reply(before.strip(), ToolCall(name.strip(), strip_code_fence(code)))

    def find_tool(self, call: ToolCall, tools: Sequence[Tool]) -> Tool | None:
        # The interpreter channel has no tool names: it is the (only) interpreter that is switched on.
        return tools[0] if call.tool == self.interpreter and tools else None

    def unknown_tool_message(self, call: ToolCall, tools: Sequence[Tool]) -> str:
        if call.tool == self.interpreter:
            return "The code interpreter is switched off; answer without running code."
        return f"{call.tool or 'That action'} is not available here; only the code interpreter can be called."

    def _canonical(self, output: str) -> str:
        """The assistant turn as the model was trained to see it: thought, then the action block."""
        reply = self.parse(output)
        if reply.call is None:
            return output.strip()
        thought = reply.thought + "\n" if reply.thought else ""
        code_block = f"```python\n{reply.call.code}\n```"
        return f"{thought}{self.action_start}{reply.call.tool}\n{code_block}{self.action_end}\n"


AgentProtocol = ReActProtocol | InterpreterCallProtocol


def protocol_for(family) -> AgentProtocol:
    """ReAct in v1 markers for InternLM v1 chat models, the tool-call format for ChatML (InternLM2/3) models."""
    if family.user_turn.startswith("<|im_start|>"):
        return InterpreterCallProtocol(meta_instruction=family.default_meta_instruction)
    return ReActProtocol()
