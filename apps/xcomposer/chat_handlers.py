"""Handlers of the XComposer chat tab and the app's header: plain functions over a ChatSession, no browser needed."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from internlm_demo.errors import ContextOverflowError, ModelFolderError, error_text
from internlm_demo.i18n import LANGUAGES, labels
from internlm_demo.xcomposer import Exchange, ImageRejectedError, load_image

from .context import ModelProvider

PREVIEW_SIZE = 512
CURSOR = "▌"
EMPTY_MESSAGE = {"text": "", "files": []}
RUNNING_REPLIES: dict[str, threading.Event] = {}  # browser session → the Stop of its reply being written


def session_key(request: gr.Request | None) -> str:
    """The browser session a Gradio event came from ("" outside Gradio)."""
    return getattr(request, "session_hash", None) or ""


@dataclass
class ChatSession:
    """One browser session: the conversation the model sees and the messages the chatbot shows."""

    exchanges: list[Exchange] = field(default_factory=list)
    display: list[dict] = field(default_factory=list)


def new_session() -> ChatSession:
    return ChatSession()


def model_banner(provider: ModelProvider, language: str = LANGUAGES[0]) -> str:
    """Markdown naming the loaded model; a demo model is flagged loudly."""
    t = labels(language, "xcomposer")
    try:
        model = provider.get()
    except ModelFolderError as exc:
        return f"**{t('no_model')}** {error_text(exc, language)}"
    info = model.info
    devices = ", ".join(sorted(set(info.device_map.values())))
    line = f"**{t('model')}:** `{info.model_id}` · {info.dtype} · {devices}"
    if info.is_demo:
        line += f"\n\n**{t('demo_warning')}**"
    return line


def save_preview(image, folder: Path) -> str:
    """A small RGB PNG of the upload for the chat history (the original may be huge, CMYK or 16-bit)."""
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    descriptor, path = tempfile.mkstemp(suffix=".png", dir=folder)
    with os.fdopen(descriptor, "wb") as file:
        preview.save(file, format="PNG")
    return path


@functools.cache
def preview_folder() -> Path:
    """This process's own folder for upload previews (mode 0700), removed when the app exits."""
    folder = Path(tempfile.mkdtemp(prefix="internlm-demo-xcomposer-previews-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def remove_previews(display: list[dict]) -> None:
    """Delete the preview files a chat display shows (they are this app's, in ``preview_folder``)."""
    for message in display:
        content = message.get("content")
        if isinstance(content, dict) and Path(content.get("path", "")).parent == preview_folder():
            Path(content["path"]).unlink(missing_ok=True)


def add_message(provider: ModelProvider, message: dict | None, session: ChatSession, language: str = LANGUAGES[0]):
    """Take the user's text and image: encode the image, queue the turn. Returns (chatbot, session, textbox)."""
    text = (message or {}).get("text") or ""
    files = (message or {}).get("files") or []
    if not text.strip() and not files:
        return session.display, session, EMPTY_MESSAGE
    display = list(session.display)
    image_embeds = None
    if files:
        upload = files[-1]["path"] if isinstance(files[-1], dict) else files[-1]
        try:
            model = provider.get()
            image = load_image(upload)
            image_embeds = model.encode_image(image)
        except (ImageRejectedError, ModelFolderError) as exc:  # shown in the chat; the text stays for a retry
            reason = error_text(exc, language)
            gr.Warning(reason)
            display.append({"role": "assistant", "content": f"✗ {reason}"})
            return display, replace(session, display=display), {"text": text, "files": []}
        display.append({"role": "user", "content": {"path": save_preview(image, preview_folder())}})
    if text:
        display.append({"role": "user", "content": text})
    exchanges = [*session.exchanges, Exchange(text=text, image=image_embeds)]
    return display, ChatSession(exchanges, display), EMPTY_MESSAGE


def answer(
    provider: ModelProvider,
    session: ChatSession,
    max_output_tokens: int,
    num_beams: int,
    repetition_penalty: float,
    do_sample: bool,
    language: str = LANGUAGES[0],
    request: gr.Request = None,
) -> Iterator[tuple[list[dict], ChatSession]]:
    """Stream the reply to the pending turn, if there is one. Yields (chatbot, session).

    ``stop_reply`` from the same browser session ends it; the reply keeps what was written."""
    t = labels(language, "xcomposer")
    if not session.exchanges or session.exchanges[-1].response is not None:
        yield session.display, session
        return
    try:
        model = provider.get()
        kept, dropped = model.fit_conversation(session.exchanges, int(max_output_tokens))
    except (ModelFolderError, ContextOverflowError) as exc:
        message = error_text(exc, language)
        gr.Warning(message)
        display = [*session.display, {"role": "assistant", "content": f"✗ {message}"}]
        yield display, ChatSession(session.exchanges[:-1], display)
        return
    if dropped:
        gr.Info(t("dropped", dropped=dropped))
    display = [*session.display, {"role": "assistant", "content": CURSOR}]
    reply = ""
    stop = RUNNING_REPLIES[session_key(request)] = threading.Event()
    try:
        for reply in model.stream_conversation(
            kept,
            stop=stop,
            max_length=int(max_output_tokens),
            num_beams=int(num_beams),
            repetition_penalty=float(repetition_penalty),
            do_sample=bool(do_sample),
        ):
            display[-1] = {"role": "assistant", "content": reply + CURSOR}
            yield display, session
    except (RuntimeError, ValueError) as exc:  # e.g. CUDA out of memory: report it, keep the app alive
        message = t("generation_failed", error=exc)
        gr.Warning(message)
        display[-1] = {"role": "assistant", "content": f"✗ {message}"}
        yield display, ChatSession(session.exchanges[:-1], display)
        return
    finally:
        if RUNNING_REPLIES.get(session_key(request)) is stop:
            del RUNNING_REPLIES[session_key(request)]
    display[-1] = {"role": "assistant", "content": reply or "…"}
    exchanges = [*session.exchanges[:-1], replace(session.exchanges[-1], response=reply)]
    yield display, ChatSession(exchanges, display)


def stop_reply(request: gr.Request = None) -> None:
    """Stop the reply this browser session is writing; what it wrote so far stays in the chat."""
    stop = RUNNING_REPLIES.get(session_key(request))
    if stop is not None:
        stop.set()


def regenerate(session: ChatSession, language: str = LANGUAGES[0]) -> tuple[list[dict], ChatSession]:
    """Forget the last reply so that ``answer`` writes it again."""
    if not session.exchanges:
        gr.Info(labels(language, "xcomposer")("nothing_to_regenerate"))
        return session.display, session
    last_user = max((i for i, m in enumerate(session.display) if m["role"] == "user"), default=-1)
    display = session.display[: last_user + 1]
    exchanges = [*session.exchanges[:-1], replace(session.exchanges[-1], response=None)]
    return display, ChatSession(exchanges, display)


def forget_session(session: ChatSession) -> None:
    """When Gradio drops a closed browser session's state: its upload previews go with it."""
    remove_previews(session.display)


def clear_history(session: ChatSession | None = None) -> tuple[list[dict], ChatSession, dict]:
    """An empty chat; the cleared conversation's upload previews are deleted."""
    if session is not None:
        forget_session(session)
    return [], new_session(), EMPTY_MESSAGE


def switch_language(provider: ModelProvider, current: str):
    """Flip between English and 中文: returns (language, the button's new label, the model banner)."""
    language = LANGUAGES[1] if current == LANGUAGES[0] else LANGUAGES[0]
    return language, gr.update(value=labels(language, "xcomposer")("switch")), model_banner(provider, language)


def relabel_chat_tab(language: str):
    """Labels of the chat tab in ``language``, one update per component."""
    t = labels(language, "xcomposer")
    return (
        gr.update(label=t("tab_chat")),
        gr.update(label=t("chatbot")),
        gr.update(placeholder=t("input")),
        gr.update(label=t("parameters")),
        gr.update(label=t("max_output_tokens")),
        gr.update(label=t("num_beams")),
        gr.update(label=t("repetition_penalty")),
        gr.update(label=t("do_sample")),
        gr.update(value=t("stop")),
        gr.update(value=t("regenerate")),
        gr.update(value=t("clear")),
    )
