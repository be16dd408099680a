"""Agent demo: InternLM answers with the help of a sandboxed Python interpreter, speaking lagent's tool protocols.

    bash scripts/run.sh agent -- --model internlm2_5-7b-chat
    bash scripts/run.sh agent -- --agent-script internlm_demo/agent/demo_session.json

Without --model the stand-in model answers (internlm_demo/models/standin.py); --agent-script (or
INTERNLM_DEMO_AGENT_SCRIPT) replays canned model outputs instead of a model, while the code still runs in the sandbox.
"""

from __future__ import annotations

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
from internlm_demo.errors import SettingsError, error_text
from internlm_demo.settings import Settings
from internlm_demo.i18n import LANGUAGES, labels

REDRAW_INTERVAL_S = 0.1  # redrawing the page for every token would slow a fast model down


@st.cache_resource(show_spinner=False)
def load_model(settings: Settings) -> ChatModelCompletion:
    return ChatModelCompletion(load_chat_model(settings.model, **settings.model_options(), progress=False))


def read_settings(t) -> Settings:
    """Settings from the command line (after ``--``) and the environment; bad flags stop the page with a message."""
    try:
        return Settings.read(sys.argv[1:], prog="bash scripts/run.sh agent --", app="agent")
    except SettingsError as exc:
        st.error(t("bad_flags", usage=str(exc).strip()))
        st.stop()


def session_model(settings: Settings, state, t):
    """A scripted model per browser session (it keeps its place in the script), else the shared loaded model."""
    if not settings.agent_script:
        with st.spinner(t("loading_model")):
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


def render_steps(steps: list[Step], expanded: bool, t) -> None:
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
        label = tools[0] or t("tool_call") if tools else t("thought") if shows_text else t("reply")
        with st.expander(t("step", turn=turn, label=label), expanded=expanded):
            for step in in_turn:
                if step.kind == THOUGHT:
                    st.markdown(step.text)
                elif step.kind == CODE:
                    st.code(step.text or " ", language="python")
                elif step.kind == MODEL and not shows_text:
                    st.caption(t("model_reply"))
                    st.code(step.text or t("empty"), language="text")
                elif step.kind == OBSERVATION:
                    st.caption(t("output") if tools else t("feedback"))
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


def stream_agent_run(placeholder, runs, conversation: AgentConversation, t) -> None:
    """Record and draw each snapshot of a run; redraw at most every REDRAW_INTERVAL_S unless a step was added."""
    drawn_at, drawn_kinds, steps = 0.0, None, []
    for steps in runs:
        conversation.record(steps)
        kinds = [step.kind for step in steps]
        if kinds != drawn_kinds or time.monotonic() - drawn_at >= REDRAW_INTERVAL_S:
            with placeholder.container():
                render_steps(steps, expanded=True, t=t)
            drawn_at, drawn_kinds = time.monotonic(), kinds
    with placeholder.container():
        render_steps(steps, expanded=True, t=t)


def main() -> None:
    st.set_page_config(page_title=labels(LANGUAGES[0], "agent")("page_title"), page_icon="🛠️")
    page_language = st.sidebar.radio(labels(LANGUAGES[0], "agent")("language"), LANGUAGES, horizontal=True)
    t = labels(page_language, "agent")
    settings = read_settings(t)
    state = st.session_state
    conversation = conversation_of(state)
    conversation.stop()  # a run still marked as going was cut short by this rerun
    try:
        model = session_model(settings, state, t)
    except (ModelFolderError, ScriptError) as exc:
        st.error(t("model_unusable", error=error_text(exc, page_language)))
        st.stop()
    isolation = probe_isolation()
    code_allowed = isolation.at_least(MINIMUM_LEVEL) or settings.allow_weak_sandbox
    interpreter = PythonInterpreter(minimum_level=WEAK if settings.allow_weak_sandbox else MINIMUM_LEVEL)
    question = st.chat_input(t("placeholder"))

    st.title(t("page_title"))
    if isinstance(model, ScriptedModel):
        st.info(t("scripted", source=model.source))
    elif model.info.is_demo:
        st.warning(t("demo_banner"))
    elif model.info.is_standin:
        st.info(t("standin_banner", model_id=model.info.model_id, real_id=model.info.stands_in_for))
    if not isolation.at_least(MINIMUM_LEVEL):
        below = t("sandbox_below", level=isolation.level, minimum=MINIMUM_LEVEL)
        if settings.allow_weak_sandbox:
            st.warning(t("sandbox_weak_allowed", below=below))
        else:
            st.error(t("sandbox_refused", below=below))
    with st.sidebar:
        model_name = Path(model.source).name if isinstance(model, ScriptedModel) else model.info.model_id
        language = st.radio(t("prompt_language"), ["English", "中文"], horizontal=True, help=t("prompt_language_help"))
        exact = st.toggle(t("exact"), value=False, help=t("exact_help"))
        protocol = protocol_for(model.family, CHINESE if language == "中文" else ENGLISH,
                                Departures.none() if exact else Departures())
        st.caption(t("model_protocol", model=model_name, protocol=protocol.name))
        use_interpreter = st.toggle(t("interpreter"), value=code_allowed, disabled=not code_allowed,
                                    help=t("interpreter_help"))
        max_turns = st.slider(t("max_turns"), 1, 8, DEFAULT_MAX_TURNS, help=t("max_turns_help"))
        max_new_tokens = st.slider(t("max_new_tokens"), 32, 2048, 512, step=32)
        temperature = st.slider(t("temperature"), 0.0, 1.5, 0.1, step=0.05, help=t("temperature_help"))
        st.button(t("stop"), on_click=stop_run, args=(state,), disabled=not question, width="stretch")
        st.button(t("clear"), on_click=clear_conversation, args=(state,), width="stretch")
        st.caption(t("sandbox_caption", level=isolation.level, timeout=f"{interpreter.limits.timeout_s:g}"),
                   help=isolation.details)

    latest = None if question else len(conversation.exchanges) - 1  # only the newest exchange shows its steps open
    for index, exchange in enumerate(conversation.exchanges):
        with st.chat_message("user"):
            st.markdown(exchange.query)
        with st.chat_message("assistant"):
            render_steps(exchange.steps, expanded=index == latest, t=t)

    if question:
        with st.chat_message("user"):
            st.markdown(question)
        with st.chat_message("assistant"):
            history = conversation.history()
            stop = conversation.begin(question)
            runs = run_agent(model, protocol, question, history, tools=[interpreter] if use_interpreter else [],
                             max_turns=max_turns, stop=stop, max_new_tokens=max_new_tokens,
                             do_sample=temperature > 0, temperature=temperature)
            stream_agent_run(st.empty(), runs, conversation, t)
            conversation.finish()
        st.rerun()  # draw the page again with Stop disabled, now that nothing runs


if __name__ == "__main__":
    main()
