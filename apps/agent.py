"""Agent demo: InternLM answers with the help of a sandboxed Python interpreter, speaking lagent's tool protocols.

    bash scripts/run.sh agent -- --model internlm2_5-7b-chat
    bash scripts/run.sh agent -- --agent-script internlm_demo/agent/demo_session.json

Without --model the embedded demo model is used; --agent-script (or INTERNLM_DEMO_AGENT_SCRIPT)
replays canned model outputs instead of a model, while the code still runs in the sandbox.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import streamlit as st

from internlm_demo import ModelFolderError, load_chat_model
from internlm_demo.agent.completion import ChatModelCompletion
from internlm_demo.agent.loop import (
    ANSWER,
    CODE,
    DEFAULT_MAX_TURNS,
    ERROR,
    GAVE_UP,
    MODEL,
    NOTICE,
    OBSERVATION,
    STOPPED,
    THOUGHT,
    Step,
    run_agent,
)
from internlm_demo.agent.protocol import CHINESE, ENGLISH, Departures, protocol_for
from internlm_demo.agent.sandbox import MINIMUM_LEVEL, WEAK, PythonInterpreter, probe_isolation
from internlm_demo.agent.scripted import ScriptedModel, ScriptError
from internlm_demo.agent.session import AgentConversation
from internlm_demo.settings import Settings

REDRAW_INTERVAL_S = 0.1  # redrawing the page for every token would slow a fast model down


@st.cache_resource(show_spinner="Loading the model…")
def load_model(settings: Settings) -> ChatModelCompletion:
    return ChatModelCompletion(load_chat_model(settings.model, **settings.model_options(), progress=False))


def read_settings() -> Settings:
    """Settings from the command line (after ``--``) and the environment; bad flags stop the page with a message."""
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage), contextlib.redirect_stdout(usage):
            return Settings.parse(sys.argv[1:], prog="bash scripts/run.sh agent --", app="agent")
    except SystemExit:
        st.error(f"The app's command-line arguments are not valid:\n\n```\n{usage.getvalue().strip()}\n```")
        st.stop()


def session_model(settings: Settings, state):
    """A scripted model per browser session (it keeps its place in the script), else the shared loaded model."""
    if not settings.agent_script:
        return load_model(settings)
    scripted = state.get("scripted_model")
    if scripted is None or scripted.source != settings.agent_script:
        scripted = state["scripted_model"] = ScriptedModel.from_file(settings.agent_script)
    return scripted


def conversation_of(state) -> AgentConversation:
    if "conversation" not in state:
        state["conversation"] = AgentConversation()
    return state["conversation"]


def clear_conversation(state) -> None:
    """Forget the conversation; a scripted session starts again from its first output."""
    conversation_of(state).clear()
    if "scripted_model" in state:
        state["scripted_model"].rewind()


def stop_run(state) -> None:
    conversation_of(state).stop()


def render_steps(steps: list[Step], expanded: bool) -> None:
    """Each model turn in an expander (thought, code, output), then the answer, error or stop notice.

    A turn that shows neither thought nor code shows the model's own text, so every turn is visible.
    """
    answered = {step.turn for step in steps if step.kind == ANSWER}
    turns = sorted({step.turn for step in steps if step.kind in (THOUGHT, CODE, OBSERVATION, NOTICE)
                    or step.kind == MODEL and step.turn not in answered})
    for turn in turns:
        in_turn = [step for step in steps if step.turn == turn]
        tools = [step.tool for step in in_turn if step.kind == CODE]
        shows_text = any(step.kind in (THOUGHT, CODE) for step in in_turn)
        label = tools[0] or "tool call" if tools else "thought" if shows_text else "reply"
        with st.expander(f"Step {turn} · {label}", expanded=expanded):
            for step in in_turn:
                if step.kind == THOUGHT:
                    st.markdown(step.text)
                elif step.kind == CODE:
                    st.code(step.text or " ", language="python")
                elif step.kind == MODEL and not shows_text:
                    st.caption("The model's reply (not in the tool format)")
                    st.code(step.text or "(empty)", language="text")
                elif step.kind == OBSERVATION:
                    st.caption("Output" if tools else "Feedback to the model")
                    st.code(step.text, language="text")
                elif step.kind == NOTICE:
                    st.caption(step.text)
    for step in steps:
        if step.kind == ANSWER:
            st.markdown(step.text)
        elif step.kind == ERROR:
            st.error(step.text)
        elif step.kind in (STOPPED, GAVE_UP):
            st.warning(step.text)


def stream_agent_run(placeholder, runs, conversation: AgentConversation) -> None:
    """Record and draw each snapshot of a run; redraw at most every REDRAW_INTERVAL_S unless a step was added."""
    drawn_at, drawn_kinds, steps = 0.0, None, []
    for steps in runs:
        conversation.record(steps)
        kinds = [step.kind for step in steps]
        if kinds != drawn_kinds or time.monotonic() - drawn_at >= REDRAW_INTERVAL_S:
            with placeholder.container():
                render_steps(steps, expanded=True)
            drawn_at, drawn_kinds = time.monotonic(), kinds
    with placeholder.container():
        render_steps(steps, expanded=True)


def main() -> None:
    st.set_page_config(page_title="InternLM agent", page_icon="🛠️")
    settings = read_settings()
    state = st.session_state
    conversation = conversation_of(state)
    conversation.stop()  # a run still marked as going was cut short by this rerun
    try:
        model = session_model(settings, state)
    except (ModelFolderError, ScriptError) as exc:
        st.error(f"The model cannot be used: {exc}")
        st.stop()
    isolation = probe_isolation()
    code_allowed = isolation.at_least(MINIMUM_LEVEL) or settings.allow_weak_sandbox
    interpreter = PythonInterpreter(minimum_level=WEAK if settings.allow_weak_sandbox else MINIMUM_LEVEL)
    question = st.chat_input("Ask something that needs a calculation or a bit of code")

    st.title("InternLM agent")
    if isinstance(model, ScriptedModel):
        st.info(f"Replaying the scripted session {model.source}: the model's outputs are canned, "
                "the code really runs in the sandbox.")
    elif model.info.is_demo:
        st.warning("This is the embedded demo model with random weights: its replies are noise and it will not "
                   "call tools sensibly. For InternLM: `.venv/bin/python download.py internlm2_5-7b-chat`, then "
                   "`bash scripts/run.sh agent -- --model internlm2_5-7b-chat`.")
    elif model.info.is_standin:
        real_id = model.info.stands_in_for
        st.info(f"**Stand-in model.** No InternLM weights are downloaded, so `{model.info.model_id}`, a small real "
                "model, answers instead; it was not trained to call tools. To use InternLM: "
                f"`.venv/bin/python download.py {real_id}`, then `bash scripts/run.sh agent -- --model {real_id}`.")
    if not isolation.at_least(MINIMUM_LEVEL):
        below = (f"The sandbox here reaches only the '{isolation.level}' isolation level, below the "
                 f"'{MINIMUM_LEVEL}' minimum (docs/agent-sandbox.md says what each level needs).")
        if settings.allow_weak_sandbox:
            st.warning(f"{below} Model code runs anyway because of `--allow-weak-sandbox`: "
                       "do not offer this page to anyone you do not trust.")
        else:
            st.error(f"{below} Model code will not run; start the app with `-- --allow-weak-sandbox` to accept it.")
    with st.sidebar:
        model_name = Path(model.source).name if isinstance(model, ScriptedModel) else model.info.model_id
        language = st.radio("Prompt language", ["English", "中文"], horizontal=True,
                            help="lagent's English or Chinese prompt texts, where lagent has both.")
        exact = st.toggle("lagent's exact behaviour", value=False,
                          help="Off: a last turn that asks for the answer, `Response:` as a stop word for "
                               "InternLM v1 and a reminder after an empty reply (docs/agent-protocols.md).")
        protocol = protocol_for(model.family, CHINESE if language == "中文" else ENGLISH,
                                Departures.none() if exact else Departures())
        st.caption(f"Model: {model_name} · protocol: {protocol.name}")
        use_interpreter = st.toggle("Python interpreter", value=code_allowed, disabled=not code_allowed,
                                    help="Let the model run Python code in a sandboxed process.")
        max_turns = st.slider("Max turns", 1, 8, DEFAULT_MAX_TURNS,
                              help="Model turns per question; the last one must give the answer.")
        max_new_tokens = st.slider("Max new tokens per turn", 32, 2048, 512, step=32)
        temperature = st.slider("Temperature", 0.0, 1.5, 0.1, step=0.05, help="0 picks the likeliest token.")
        st.button("Stop", on_click=stop_run, args=(state,), disabled=not question, width="stretch")
        st.button("Clear", on_click=clear_conversation, args=(state,), width="stretch")
        st.caption(f"Sandbox isolation: {isolation.level}. Code runs in a separate process with a fresh "
                   f"temporary folder and is killed after {interpreter.limits.timeout_s:g} s.", help=isolation.details)

    latest = None if question else len(conversation.exchanges) - 1  # only the newest exchange shows its steps open
    for index, exchange in enumerate(conversation.exchanges):
        with st.chat_message("user"):
            st.markdown(exchange.query)
        with st.chat_message("assistant"):
            render_steps(exchange.steps, expanded=index == latest)

    if question:
        with st.chat_message("user"):
            st.markdown(question)
        with st.chat_message("assistant"):
            history = conversation.history()
            stop = conversation.begin(question)
            runs = run_agent(model, protocol, question, history, tools=[interpreter] if use_interpreter else [],
                             max_turns=max_turns, stop=stop, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature)
            stream_agent_run(st.empty(), runs, conversation)
            conversation.finish()
        st.rerun()  # draw the page again with Stop disabled, now that nothing runs


if __name__ == "__main__":
    main()
