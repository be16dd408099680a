"""What each kind of OpenAI-compatible server understands beyond the OpenAI API, as data (docs/remote-servers.md).

A row per kind: the names it gives the sampling controls, its tokenizer endpoint, whether it answers requests side
by side, its window when it does not say; and the words servers use to state their window in a refusal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A server that does not say how long its window is gets its kind's default, or this one; both are shown as assumed.
DEFAULT_REMOTE_WINDOW = 4096

# How servers state their window, and the prompt length, when a request is too long for it.
WINDOW_IN_ERROR = (
    re.compile(r"maximum context length is (\d+) tokens"),  # OpenAI, vLLM, llama-cpp-python
    re.compile(r"model context length \((\d+)\)"),  # LMDeploy
    re.compile(r"context window is (\d+) tokens"),  # ours
    re.compile(r'"n_ctx":\s*(\d+)'),  # llama.cpp's server
)
PROMPT_IN_ERROR = (
    re.compile(r"(\d+) in the messages"),  # llama-cpp-python
    re.compile(r"you requested (\d+) tokens in the messages"),  # vLLM
    re.compile(r"Input length \((\d+)\)"),  # LMDeploy
    re.compile(r"the message is (\d+) tokens long"),  # ours
    re.compile(r'"n_prompt_tokens":\s*(\d+)'),  # llama.cpp's server
)


def number_in(text: str, patterns: tuple[re.Pattern, ...]) -> int | None:
    """The first number one of ``patterns`` finds in ``text``."""
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class TokenizeEndpoint:
    """A server's own token counter: POST ``{root}{path}`` with the text (or the messages) in ``field``."""

    path: str  # under the server's root, the address without /v1
    field: str  # "messages": the whole conversation, counted with its template; otherwise one text at a time
    extra: tuple[tuple[str, object], ...] = ()  # constant fields of the request
    names_model: bool = False  # the request carries the model's id
    answer: str = "count"  # the answer's field: a count, or ("tokens") the list of tokens


@dataclass(frozen=True)
class ServerKind:
    """What one kind of server understands beyond the OpenAI API."""

    name: str
    repetition_penalty: str | None = "repetition_penalty"  # the request's field; None: the server has none
    top_k_off: int | None = 0  # the top_k that turns top-k off; None: the server takes no top_k
    fixed: tuple[tuple[str, object], ...] = ()  # sent always, so that no default of the server's adds a filter
    tokenize: TokenizeEndpoint | None = None
    serial: bool = False  # answers one request at a time (and may cut a running one for a new one)
    assumed_window: int = DEFAULT_REMOTE_WINDOW  # its window when it does not say


VLLM_TOKENIZE = TokenizeEndpoint("/tokenize", "messages", (("add_generation_prompt", True),), names_model=True)
OUR_SERVER = ServerKind("internlm-demo server", tokenize=VLLM_TOKENIZE)
VLLM = ServerKind("vLLM", top_k_off=-1, tokenize=VLLM_TOKENIZE)
LMDEPLOY = ServerKind("LMDeploy api_server", tokenize=TokenizeEndpoint(
    "/v1/encode", "input", (("do_preprocess", False), ("add_bos", False)), answer="length"))
LLAMA_CPP = ServerKind("llama.cpp server", repetition_penalty="repeat_penalty", fixed=(("min_p", 0.0),),
                       tokenize=TokenizeEndpoint("/tokenize", "content", (("add_special", False),), answer="tokens"))
LLAMA_CPP_PYTHON = ServerKind(
    "llama-cpp-python server", repetition_penalty="repeat_penalty", fixed=(("min_p", 0.0),),
    tokenize=TokenizeEndpoint("/extras/tokenize/count", "input", names_model=True), serial=True, assumed_window=2048)
GENERIC = ServerKind("OpenAI-compatible server", repetition_penalty=None, top_k_off=None)
KIND_BY_OWNER = {"internlm-demo": OUR_SERVER, "vllm": VLLM, "lmdeploy": LMDEPLOY}
