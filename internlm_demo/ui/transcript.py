"""A conversation as a JSON file: export it with its settings and library versions, import it back, checked."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone

from ..serving.backend import ChatBackend
from .conversation import PARAM_LIMITS, ChatParams, Conversation, Message, Notice, clear, param_range

EXPORT_FORMAT = "internlm-demo.conversation"
EXPORT_VERSION = 1
EXPORT_LIBRARIES = ("torch", "transformers", "sentencepiece", "safetensors", "accelerate", "httpx", "streamlit")


class ConversationFileError(ValueError):
    """An imported conversation file is unusable; the message says what is wrong in it."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in EXPORT_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def export_json(conversation: Conversation, model: ChatBackend, params: ChatParams) -> str:
    """The conversation as a JSON document that ``import_json`` reads back."""
    info = model.info
    document = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # No folder: a local path says where the user keeps things and means nothing on another machine.
        "model": {"id": info.model_id, "family": info.family, "dtype": info.dtype,
                  "context_window": info.context_window, "is_demo": info.is_demo},
        "generation": asdict(params),
        "messages": [{k: v for k, v in asdict(m).items() if v is not None and v is not False}
                     for m in conversation.messages[: len(conversation.messages) // 2 * 2]],  # answered turns
        "libraries": library_versions(),
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


@dataclass(frozen=True)
class ImportedConversation:
    messages: list[Message]
    params: ChatParams
    model_id: str  # the model the file was made with


def import_json(data: str | bytes, model: ChatBackend) -> ImportedConversation:
    """Read an exported conversation; ConversationFileError says precisely what is wrong.

    Settings beyond this model's window are lowered to it.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ConversationFileError(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    except json.JSONDecodeError as exc:
        raise ConversationFileError(f"the file is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise ConversationFileError(f'this is not a conversation exported by this app (its "format" must be "{EXPORT_FORMAT}").')
    if not isinstance(document.get("version"), int) or document["version"] > EXPORT_VERSION:
        raise ConversationFileError(
            f"the file has format version {document.get('version')!r}; this app reads version {EXPORT_VERSION} — update the app."
        )
    messages = read_messages(document.get("messages"))
    params = read_params(document.get("generation", {}), model)
    model_entry = document.get("model") if isinstance(document.get("model"), dict) else {}
    return ImportedConversation(messages, params, str(model_entry.get("id", "unknown")))


def read_messages(entries) -> list[Message]:
    if not isinstance(entries, list):
        raise ConversationFileError('"messages" must be a list of {"role", "content"} objects.')
    messages = []
    for number, entry in enumerate(entries, start=1):
        expected = "user" if number % 2 else "assistant"
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ConversationFileError(f'message {number} must be an object with a text "content".')
        if entry.get("role") != expected:
            raise ConversationFileError(
                f"message {number} has role {entry.get('role')!r} but should be {expected!r}: "
                "turns must alternate user, assistant, starting with user."
            )
        seed = entry.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConversationFileError(f'message {number} has a "seed" that is not an integer.')
        messages.append(Message(expected, entry["content"], stopped=entry.get("stopped") is True, seed=seed))
    if len(messages) % 2:
        raise ConversationFileError(f"the last message ({len(messages)}) is a question without a reply; remove it or add the reply.")
    return messages


def read_params(entries, model: ChatBackend) -> ChatParams:
    """ChatParams from a file's "generation" object: defaults for missing keys, checked ranges."""
    if not isinstance(entries, dict):
        raise ConversationFileError('"generation" must be an object of settings.')
    known = {f.name: f for f in fields(ChatParams)}
    unknown = sorted(set(entries) - set(known))
    if unknown:
        raise ConversationFileError(f'"generation" has unknown settings: {", ".join(unknown)}.')
    values = asdict(ChatParams.defaults_for(model))
    for name, value in entries.items():
        if name == "system_prompt":
            if value is not None and not isinstance(value, str):
                raise ConversationFileError('"system_prompt" must be text or null.')
        elif name == "seed" and value is None:
            pass
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConversationFileError(f'"{name}" must be a number, not {value!r}.')
        else:
            if known[name].type.startswith("int"):
                if value != int(value):
                    raise ConversationFileError(f'"{name}" must be a whole number, not {value}.')
                value = int(value)
            else:
                value = float(value)
            low, high = param_range(name, model)
            if PARAM_LIMITS[name][1] is None:  # a window-sized setting from a longer-context model is lowered
                value = min(value, high)
            if not low <= value <= high:
                raise ConversationFileError(f'"{name}" is {value}, outside {low}…{high}.')
        values[name] = value
    if not model.family.has_system_prompt:
        values["system_prompt"] = None
    elif values["system_prompt"] is None:
        values["system_prompt"] = model.family.default_meta_instruction
    return ChatParams(**values)


def apply_import(conversation: Conversation, imported: ImportedConversation) -> None:
    """Replace the history with an imported one (stopping a running reply)."""
    clear(conversation)
    conversation.messages.extend(imported.messages)
    conversation.notice = Notice("imported", detail=imported.model_id)


def offer_import(conversation: Conversation, imported: ImportedConversation) -> bool:
    """Apply ``imported`` at once into an empty conversation (True); otherwise keep it as the offer the
    user must accept (``accept_import``) or decline (``decline_import``) first (False)."""
    if not conversation.messages and conversation.pending is None:
        apply_import(conversation, imported)
        return True
    conversation.offered_import = imported
    return False


def accept_import(conversation: Conversation) -> ImportedConversation | None:
    """Replace the conversation with the offered import; returns it (None when nothing was offered)."""
    imported = conversation.offered_import
    if imported is not None:
        apply_import(conversation, imported)
    return imported


def decline_import(conversation: Conversation) -> None:
    conversation.offered_import = None
