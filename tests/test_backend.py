"""The ChatBackend protocol both backends meet, and the one context-budget rule they share."""

from __future__ import annotations

import inspect

import pytest

from internlm_demo import ChatBackend, ChatModel, ContextOverflowError
from internlm_demo.serving.backend import fit_history
from internlm_demo.serving.remote import RemoteChatModel

METHODS = ("count_tokens", "fit_history", "stream_chat", "chat")


@pytest.mark.parametrize("backend", [ChatModel, RemoteChatModel])
def test_backend_has_the_protocols_methods_with_its_parameters(backend):
    for name in METHODS:
        expected = list(inspect.signature(getattr(ChatBackend, name)).parameters)
        assert list(inspect.signature(getattr(backend, name)).parameters) == expected, f"{backend.__name__}.{name}"
    assert isinstance(inspect.getattr_static(backend, "context_window"), property)
    assert isinstance(backend.estimates_tokens, bool)


def words(query: str, history, meta) -> int:
    """A stand-in tokenizer: one token per word, two per turn of history for the format."""
    return len(query.split()) + sum(len(q.split()) + len(a.split()) + 2 for q, a in history)


def test_fit_history_drops_the_oldest_turns_first():
    history = [("one two", "three"), ("four", "five six"), ("seven", "eight")]  # 5, 5 and 4 tokens
    budget = fit_history(words, "nine ten", history, max_new_tokens=6, meta_instruction=None, window=18)
    # all turns: 2 + 14 = 16 (+6 > 18); without the first: 2 + 9 = 11 (+6 = 17 fits)
    assert budget.dropped == [0] and budget.history == history[1:]
    assert (budget.prompt_tokens, budget.max_new_tokens, budget.window) == (11, 6, 18)


def test_fit_history_shortens_the_reply_then_refuses():
    budget = fit_history(words, "a b c", [("x", "y")], max_new_tokens=10, meta_instruction=None, window=8)
    assert budget.dropped == [0] and (budget.prompt_tokens, budget.max_new_tokens) == (3, 5)
    with pytest.raises(ContextOverflowError, match="shorten it by at least 2 tokens"):
        fit_history(words, "a b c d e f g h i", [], max_new_tokens=1, meta_instruction=None, window=8)
