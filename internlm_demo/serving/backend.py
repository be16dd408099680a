"""What a page needs from a chat backend, local or remote: the ChatBackend protocol, the context budget, the factory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import ContextOverflowError
from ..generation.params import GenerationStats
from ..models.families import Family

History = list[tuple[str, str]]


@dataclass(frozen=True)
class Budget:
    """How a conversation fits the context window."""

    history: History  # the turns that are kept
    dropped: list[int]  # indices (into the original history) of turns left out, oldest first
    prompt_tokens: int
    max_new_tokens: int
    window: int


class ChatBackend(Protocol):
    """A chat model as the pages, the agent and the OpenAI-compatible server use it.

    Met by ``ChatModel`` (in process) and ``RemoteChatModel`` (an OpenAI-compatible server);
    ``info`` carries the ModelInfo facts (model_id, folder, family, dtype, device_map, context_window, is_demo,
    is_standin, stands_in_for).
    """

    info: object
    family: Family
    estimates_tokens: bool  # token counts are estimates (no tokenizer here)
    window_assumed: bool  # the context window is an assumption (a remote server that does not say its own)
    unsupported_controls: frozenset[str]  # ChatParams settings the backend cannot honour (a remote server's gaps)

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> int: ...

    def fit_history(self, query: str, history: History | None, max_new_tokens: int,
                    meta_instruction: str | None = None, window: int | None = None) -> Budget: ...

    def stream_chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
                    stats: GenerationStats | None = None, stop: threading.Event | None = None,
                    **generate_kwargs) -> Iterator[str]: ...

    def chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
             **generate_kwargs) -> tuple[str, History]: ...


def fit_history(count_tokens: Callable[[str, History, str | None], int], query: str, history: History | None,
                max_new_tokens: int, meta_instruction: str | None, window: int) -> Budget:
    """Drop the oldest whole turns until prompt + ``max_new_tokens`` fit ``window`` tokens.

    When even the query alone leaves less room than ``max_new_tokens``, the reply is shortened;
    when the query alone does not fit, ContextOverflowError says by how much.
    """
    history = list(history or [])
    dropped: list[int] = []
    kept_from = 0
    while True:
        kept = history[kept_from:]
        tokens = count_tokens(query, kept, meta_instruction)
        if tokens + max_new_tokens <= window or kept_from == len(history):
            break
        dropped.append(kept_from)
        kept_from += 1
    if tokens >= window:
        raise ContextOverflowError(
            f"the message is {tokens} tokens long with the prompt format, but the model's context window is "
            f"{window} tokens; shorten it by at least {tokens - window + 1} tokens."
        )
    return Budget(kept, dropped, tokens, min(max_new_tokens, window - tokens), window)


def open_backend(settings) -> ChatBackend:
    """The chat backend ``settings`` names: a RemoteChatModel with ``api_base``, else a local ChatModel."""
    if settings.api_base:
        from .remote import RemoteChatModel

        return RemoteChatModel.connect(settings.api_base, settings.api_model, settings.api_context_window,
                                       settings.api_serial)
    from .chat_model import load_chat_model

    return load_chat_model(settings.model, **settings.model_options(), progress=False)
