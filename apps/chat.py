"""InternLM chat page. Run from the repository root:

    bash scripts/run.sh chat -- --model ID_OR_PATH [--num-gpus N] [--dtype float16] [--api-base URL] [--port N]

(``streamlit run apps/chat.py -- ...`` works too, on .streamlit/config.toml's 127.0.0.1:6006). This file only lays out
the page and wires it to internlm_demo.ui (conversation: the handlers and the state; transcript: export/import).
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import streamlit as st

from internlm_demo import ModelFolderError
from internlm_demo.errors import SettingsError, error_text
from internlm_demo.serving.backend import open_backend
from internlm_demo.serving.remote import RemoteBackendError
from internlm_demo.settings import Settings
from internlm_demo.ui import conversation as chat
from internlm_demo.ui import transcript
from internlm_demo.ui.clipboard import copy_button_html
from internlm_demo.i18n import LANGUAGES, labels, turn_list
from internlm_demo.ui.markdown import display_markdown
from internlm_demo.ui.model_facts import model_facts, served_by

# A streaming reply is re-rendered at most this often, whatever the device's speed; a session waiting
# for a generation slot looks less often, so that many waiting sessions do not slow those generating.
STREAM_REFRESH_S = 0.05
QUEUED_REFRESH_S = 0.5
USAGE = "bash scripts/run.sh chat -- --model ID_OR_PATH [--num-gpus N] [--dtype float16] [--api-base URL] [--port N]"


@st.cache_resource(show_spinner=False)
def load_model(settings: Settings):
    """One model per process and settings, shared by every browser session."""
    return open_backend(settings)


@st.cache_resource(show_spinner=False)
def conversations() -> chat.ConversationStore:
    """Every conversation of this process by id; the page keeps its id in the URL (``?c=``)."""
    return chat.ConversationStore()


def parse_settings(t) -> Settings:
    """The flags after ``--``; wrong ones (or ``--help``) show argparse's words on the page."""
    try:
        return Settings.read(sys.argv[1:], prog=USAGE.split(" -- ")[0] + " --", app="chat")
    except SettingsError as exc:
        st.error(t("bad_flags", usage=USAGE))
        st.code(str(exc).strip(), language=None, wrap_lines=True)
        st.stop()


def load_or_explain(settings: Settings, language: str):
    """The model, or an error panel (in ``language``) with the fix and a stopped page."""
    t = labels(language, "chat")
    try:
        with st.spinner(t("loading_model")):
            return load_model(settings)
    except (ModelFolderError, RemoteBackendError) as exc:
        st.error(t("load_failed", error=error_text(exc, language)))
    except Exception as exc:  # noqa: BLE001 - out of memory, a broken CUDA setup...: a message, not a traceback
        st.error(t("load_failed", error=t("load_unexpected", kind=type(exc).__name__, error=exc)))
    st.info(t("load_fix_remote", api_base=settings.api_base) if settings.api_base else t("load_fix"))
    st.stop()


def conversation() -> chat.Conversation:
    """This session's conversation: the one the URL names after a reload or a reconnect, else a new one."""
    if "conversation" not in st.session_state:
        conversation_id, st.session_state.conversation = conversations().open(st.query_params.get("c"))
        st.query_params["c"] = conversation_id
    return st.session_state.conversation


def current_params(model) -> chat.ChatParams:
    """The sidebar's settings (defaults for keys whose widgets are not shown)."""
    values = asdict(chat.ChatParams.defaults_for(model))
    values.update({name: st.session_state[f"param_{name}"] for name in values if f"param_{name}" in st.session_state})
    return chat.ChatParams(**values)


def on_send(model) -> None:
    chat.send(conversation(), model, current_params(model), st.session_state.draft)


def on_regenerate(model) -> None:
    chat.regenerate(conversation(), model, current_params(model))


def on_import(model) -> None:
    upload = st.session_state.import_file
    if upload is None:
        return
    try:
        imported = transcript.import_json(upload.getvalue(), model)
    except transcript.ConversationFileError as exc:
        conversation().notice = chat.Notice("import_error", detail=str(exc))
        return
    if transcript.offer_import(conversation(), imported):
        use_imported_params(imported)


def on_accept_import() -> None:
    imported = transcript.accept_import(conversation())
    if imported is not None:
        use_imported_params(imported)


def use_imported_params(imported: transcript.ImportedConversation) -> None:
    for name, value in asdict(imported.params).items():
        st.session_state[f"param_{name}"] = value


def import_offer(conv: chat.Conversation, t) -> None:
    """Ask before an imported file replaces a conversation that has messages."""
    offered = conv.offered_import
    if offered is None:
        return
    st.warning(t("import_confirm", imported=len(offered.messages), model_id=offered.model_id, current=len(conv.messages)),
               icon=":material/upload_file:")
    replace_column, keep_column, _ = st.columns([1, 2, 2])
    replace_column.button(t("import_replace"), key="import_replace", on_click=on_accept_import, type="primary")
    keep_column.button(t("import_keep"), key="import_keep", on_click=transcript.decline_import, args=(conv,))


def sidebar(model, conv: chat.Conversation, language: str) -> None:
    t = labels(language, "chat")
    with st.sidebar:
        params = generation_controls(model, t)
        st.header(t("context"))
        context_meter(chat.context_meter(conv, model, params), t)
        st.header(t("conversation"))
        st.download_button(t("export"), data=transcript.export_json(conv, model, params), on_click="ignore",
                           file_name=f"conversation-{model.info.model_id}.json", mime="application/json",
                           icon=":material/download:", disabled=len(conv.messages) < 2)
        st.file_uploader(t("import"), type=["json"], key="import_file", on_change=on_import, args=(model,))
        uploader_text(language)
        st.header(t("model_panel"))
        model_panel(model_facts(model, conv.last_stats), t)


def generation_controls(model, t) -> chat.ChatParams:
    """The original demo's sliders and the rest of the settings; values live in session_state.

    A setting the backend cannot honour (a remote server without it) is shown disabled, saying why.
    """
    for name, value in asdict(chat.ChatParams.defaults_for(model)).items():
        st.session_state.setdefault(f"param_{name}", value)
    st.header(t("generation"))
    for name in ("max_length", "max_new_tokens"):
        low, high = chat.param_range(name, model)
        # the window can shrink (a remote server that said its own): keep the value inside the new range
        st.session_state[f"param_{name}"] = min(st.session_state[f"param_{name}"], int(high))
        st.slider(t(name), int(low), int(high), step=1, key=f"param_{name}")
    unsupported = t("control_unsupported", server=model.info.engine, api_base=model.info.folder)
    for name, step in (("top_p", 0.01), ("temperature", 0.01), ("repetition_penalty", 0.005), ("top_k", 1)):
        low, high = chat.param_range(name, model)
        kind = int if name == "top_k" else float
        off = name in model.unsupported_controls
        st.slider(t(name), kind(low), kind(high), step=step, key=f"param_{name}", disabled=off,
                  help=unsupported if off else None)
    low, high = chat.param_range("seed", model)
    st.number_input(t("seed"), int(low), int(high), step=1, key="param_seed", placeholder=t("seed_random"))
    if model.family.has_system_prompt:
        st.text_area(t("system_prompt"), key="param_system_prompt", height=120,
                     placeholder=t("system_prompt_server_default") if served_by(model) else None)
    return current_params(model)


def uploader_text(language: str) -> None:
    """Streamlit words its upload box in English only; in another language CSS hides its words and shows ours."""
    if language == LANGUAGES[0]:
        return
    t = labels(language, "chat")
    box = '[data-testid="stSidebar"] [data-testid="stFileUploaderDropzone"]'
    st.html(f"""<style>
{box} button [data-testid="stMarkdownContainer"] p,
{box} [data-testid="stFileUploaderDropzoneInstructions"] span {{ display: none; }}
{box} button [data-testid="stMarkdownContainer"]::after {{ content: "{t('upload_browse')}"; }}
{box} [data-testid="stFileUploaderDropzoneInstructions"] > div::after {{
  content: "{t('upload_limit', limit=st.get_option('server.maxUploadSize'))}"; font-size: 0.875rem; }}
</style>""")


def context_meter(meter: chat.ContextMeter, t) -> None:
    used = meter.prompt_tokens / meter.window if meter.window else 1.0
    st.progress(min(used, 1.0), text=t("meter", used=meter.prompt_tokens, window=meter.window, reply=meter.reply_tokens))
    if meter.dropped_turns:
        st.caption(t("meter_dropped", turns=turn_list(t, meter.dropped_turns)))
    if meter.estimated:
        st.caption(t("meter_estimated"))
    if meter.assumed:
        st.caption(t("meter_assumed", window=meter.window))


def model_panel(facts: dict, t) -> None:
    lines = [(t("model_id"), f"`{facts['model_id']}`"), (t("family"), facts["family"]), (t("dtype"), facts["dtype"])]
    if facts["served_by"]:
        lines.append((t("device_map"), t("remote", api_base=facts["served_by"])))
    else:
        lines.append((t("device_map"), facts["device_map"]))
        memory = facts["memory"]
        shown = ", ".join(f"{device}: {size / 2**30:.2f} GiB" for device, size in memory.items()) if memory else t("memory_cpu")
        lines.append((t("memory"), shown))
    lines.append((t("engine"), facts["engine"]))
    speed, first = facts["tokens_per_s"], facts["time_to_first_token_s"]
    lines.append((t("tokens_per_s"), f"{speed:.1f}" if speed else t("not_yet")))
    first_shown = f"{first * 1000:.0f} ms" if first is not None else t("not_yet")
    if first is not None and facts["prompt_tokens"]:
        first_shown += t("ttft_prompt", tokens=facts["prompt_tokens"])
    lines.append((t("ttft"), first_shown))
    st.markdown("\n".join(f"- **{label}:** {value}" for label, value in lines))


def show_messages(conv: chat.Conversation, t) -> None:
    for message in conv.messages:
        with st.chat_message(message.role):
            st.markdown(display_markdown(message.content))
            if message.stopped:
                st.caption(t("stopped_mark"))
            if message.cut:
                st.caption(t("cut_mark"))
            if message.role == "assistant" and message.content:
                st.html(copy_button_html(message.content, t("copy"), t("copied"), t("copy_failed")),
                        unsafe_allow_javascript=True)


def show_notice(notice: chat.Notice | None, t) -> None:
    if notice is None:
        return
    if notice.kind == "dropped":
        st.info(t("dropped_notice", turns=turn_list(t, notice.turns)), icon=":material/content_cut:")
    elif notice.kind == "overflow":
        st.error(t("overflow_notice", tokens=notice.tokens, window=notice.window))
    elif notice.kind == "error":
        st.error(t("error_notice", error=notice.detail))
        if notice.partial:
            st.caption(t("partial_kept"))
            st.markdown(display_markdown(notice.partial))
    elif notice.kind == "imported":
        st.success(t("imported", model_id=notice.detail))
    elif notice.kind == "import_error":
        st.error(t("import_failed", error=notice.detail))


def live_reply(t, drawn_queued: bool) -> None:
    """The reply being generated, re-run on a timer (a fragment) so generation never waits for rendering."""
    conv = conversation()
    pending = conv.pending
    if pending is None or pending.done.is_set() or (pending.state == "queued") != drawn_queued:
        st.rerun()  # the whole page collects the finished reply, or picks the refresh rate of the new state
    with st.chat_message("assistant"):
        state = pending.state
        status = st.empty()  # one slot, so the elements below keep their place as the state changes
        if state == "queued":
            status.info(t("queued", ahead=pending.queue_ahead) if pending.queue_ahead else t("waiting"),
                        icon=":material/hourglass_top:")
        elif state == "stopping":
            status.caption(t("stopping"))
        st.markdown(display_markdown(pending.text) + " ▌")
        st.button(t("stop"), key="stop", on_click=chat.stop, args=(conv,), icon=":material/stop_circle:",
                  disabled=state == "stopping")


def language_choice() -> str:
    """The language switch; the address keeps the choice (``?lang=``), so that a reload keeps it too."""
    wanted = st.query_params.get("lang")
    language = st.sidebar.radio(labels(LANGUAGES[0], "chat")("language"), LANGUAGES, horizontal=True, key="language",
                                index=LANGUAGES.index(wanted) if wanted in LANGUAGES else 0)
    st.query_params["lang"] = language
    return language


def main() -> None:
    st.set_page_config(page_title=labels(LANGUAGES[0], "chat")("title"), page_icon="💬")
    language = language_choice()
    t = labels(language, "chat")
    title = st.empty()  # named after the served model once a server says which
    title.title(t("title"))
    model = load_or_explain(parse_settings(t), language)
    remote = served_by(model) is not None
    if remote:
        title.title(t("title_remote", model_id=model.info.model_id))
    if model.info.is_demo:
        st.warning(t("demo_banner", model_id=model.info.model_id), icon=":material/science:")
    elif model.info.is_standin:
        st.info(t("standin_banner", model_id=model.info.model_id, real_id=model.info.stands_in_for),
                icon=":material/swap_horiz:")

    conv = conversation()
    chat.collect(conv)
    sidebar(model, conv, language)
    show_messages(conv, t)
    show_notice(conv.notice, t)
    import_offer(conv, t)
    if conv.pending is not None:
        queued = conv.pending.state == "queued"
        st.fragment(live_reply, run_every=QUEUED_REFRESH_S if queued else STREAM_REFRESH_S)(t, queued)
    elif conv.messages:
        regenerate_column, clear_column, _ = st.columns([1, 1, 3])
        regenerate_column.button(t("regenerate"), key="regenerate", on_click=on_regenerate, args=(model,),
                                 icon=":material/refresh:")
        clear_column.button(t("clear"), key="clear", on_click=chat.clear, args=(conv,), icon=":material/delete:")
    if conv.draft is not None:  # a message that was not answered goes back into the message box
        st.session_state.draft, conv.draft = conv.draft, None
    placeholder = t("placeholder_remote", model_id=model.info.model_id) if remote else t("placeholder")
    st.chat_input(placeholder, key="draft", on_submit=on_send, args=(model,), disabled=conv.pending is not None)


main()
