"""Raw-prompt completion: the agent writes the whole prompt itself, so it cannot use ``ChatModel.chat``."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from ..errors import ContextOverflowError
from ..generation.params import GenerationParams, GenerationStats
from ..models.families import Family
from ..models.tokenizer import InternLMTokenizer


class CompletionModel(Protocol):
    """Anything that continues a prompt: yields the completion so far, cut before the first stop word."""

    family: Family  # picks the agent protocol

    def stream_completion(self, prompt: str, stop_words: Sequence[str] = (), stop: threading.Event | None = None,
                          **generate_kwargs) -> Iterator[str]: ...

    # Optional: ``fits(prompt) -> bool`` says whether a prompt leaves room to write; earlier exchanges
    # are dropped until it does.


def decode_with_markers(tokenizer: InternLMTokenizer, ids: Sequence[int], special_ids: dict[int, str]) -> str:
    """Text of ``ids`` with special tokens kept verbatim, as the model wrote them.

    ``InternLMTokenizer.decode`` either drops special tokens or, like the original, puts a space
    before them; the agent needs ``<|action_start|>`` and friends exactly as generated.
    """
    pieces: list[str] = []
    run: list[int] = []
    for token in ids:
        marker = special_ids.get(token)
        if marker is None:
            run.append(token)
            continue
        pieces.append(tokenizer.decode(run) + marker)
        run = []
    pieces.append(tokenizer.decode(run))
    return "".join(pieces)


def cut_at_stop_word(text: str, stop_words: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop word, and whether one was found."""
    cut = min((i for i in (text.find(word) for word in stop_words) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class ChatModelCompletion:
    """A loaded ``ChatModel`` used for raw completions with extra stop words."""

    def __init__(self, chat_model):
        self.chat_model = chat_model
        self.family = chat_model.family
        self.info = chat_model.info
        tokenizer = chat_model.tokenizer
        self._special_ids = {tokenizer.token_id(text): text for text in tokenizer.special_tokens}

    def stream_completion(self, prompt: str, stop_words: Sequence[str] = (), stop: threading.Event | None = None,
                          stats: GenerationStats | None = None, **generate_kwargs) -> Iterator[str]:
        """Yield the completion so far after each token that completes text; ``prompt`` gets BOS, nothing else.

        Raises ContextOverflowError before generating when the prompt leaves no room in the window.
        """
        model = self.chat_model
        params = GenerationParams.from_kwargs(model.family.chat_defaults, generate_kwargs)
        prompt_ids = self.encode(prompt)
        window = model.context_window
        if len(prompt_ids) >= window:
            raise ContextOverflowError(
                f"the agent's prompt (instructions, conversation and tool outputs) is {len(prompt_ids)} tokens, "
                f"but the model's context window is {window} tokens; press Clear to start a new conversation."
            )
        params.max_new_tokens = min(params.max_new_tokens, window - len(prompt_ids))
        stop_ids = set(model.stop_ids) | {model.tokenizer.token_id(w) for w in stop_words if self._is_token(w)}
        ids: list[int] = []
        text = ""
        tokens = model.generate_tokens(prompt_ids, params, stop_ids, stats, stop)
        try:
            for token in tokens:
                ids.append(token)
                decoded = decode_with_markers(model.tokenizer, ids, self._special_ids)
                if decoded.endswith("\ufffd") or decoded == text:
                    continue  # half a character, or a token that adds no text yet
                decoded, stopped = cut_at_stop_word(decoded, stop_words)
                if decoded != text:
                    text = decoded
                    yield text
                if stopped:
                    return
        finally:
            tokens.close()

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids with BOS; a tool's output (a ``Prompt``'s plain spans) never becomes control tokens."""
        return self.chat_model.tokenizer.encode(prompt, plain_spans=getattr(prompt, "plain_spans", ()))

    def fits(self, prompt: str) -> bool:
        """Whether ``prompt`` leaves room in the context window for the model to write."""
        return len(self.encode(prompt)) < self.chat_model.context_window

    def _is_token(self, word: str) -> bool:
        try:
            self.chat_model.tokenizer.token_id(word)
        except KeyError:
            return False
        return True
