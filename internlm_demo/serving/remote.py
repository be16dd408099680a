"""A chat model served by an OpenAI-compatible server (LMDeploy ``api_server``, vLLM, our own), as a ChatBackend."""

from __future__ import annotations

import json
import math
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import httpx

from ..generation.params import GenerationParams, GenerationStats
from ..models.families import FAMILIES, INTERNLM, INTERNLM2, INTERNLM3, Family
from .backend import Budget, History, fit_history

# A server that does not say how long its window is (LMDeploy, OpenAI) gets this one.
DEFAULT_REMOTE_WINDOW = 4096
TOKENS_PER_MESSAGE = 4  # role markers around each message, as in ChatML
GENERIC_FAMILY = replace(INTERNLM2, name="openai-compatible", default_meta_instruction="")
START_HINT = "start one with `bash scripts/run.sh server -- --model MODEL` (port 23333), or fix --api-base"


class RemoteBackendError(Exception):
    """The server cannot be reached or refused a request; the message says which and what to do."""


@dataclass(frozen=True)
class RemoteModelInfo:
    """The ModelInfo facts of a served model; ``folder`` holds the server's address."""

    model_id: str
    folder: str
    family: str
    dtype: str = "served remotely"
    device_map: dict = field(default_factory=dict)
    context_window: int = DEFAULT_REMOTE_WINDOW
    is_demo: bool = False
    engine: str = "the server's own"
    is_standin: bool = False
    stands_in_for: str = ""


def family_of_served_model(card: dict) -> Family:
    """The family a model card names (our server says it), else the one its id suggests."""
    by_name = {family.name: family for family in FAMILIES}
    if card.get("family") in by_name:
        return by_name[card["family"]]
    model_id = str(card.get("id", "")).lower()
    for marker, family in (("internlm3", INTERNLM3), ("internlm2", INTERNLM2), ("internlm", INTERNLM)):
        if marker in model_id:
            return family
    return GENERIC_FAMILY


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token count: one per CJK character, one per four other characters."""
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in ("W", "F"))
    return wide + math.ceil((len(text) - wide) / 4)


def described_error(body) -> str:
    """The explanation inside an error body (OpenAI, vLLM and FastAPI shapes)."""
    error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error)


def error_message(response: httpx.Response) -> str:
    """The server's own explanation of a failed request."""
    try:
        return described_error(response.json())
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase


class RemoteChatModel:
    """``chat`` / ``stream_chat`` / ``fit_history`` against ``{api_base}/chat/completions``.

    The server applies the prompt template; token counts here are estimates because the
    OpenAI protocol has no tokenizer endpoint.
    """

    estimates_tokens = True

    def __init__(self, api_base: str, info: RemoteModelInfo, family: Family, client: httpx.Client | None = None):
        self.api_base = api_base.rstrip("/")
        self.info = info
        self.family = family
        self.client = client or httpx.Client(timeout=httpx.Timeout(10.0, read=600.0))

    @classmethod
    def connect(cls, api_base: str, model: str | None = None) -> RemoteChatModel:
        """Ask the server which models it serves and pick ``model`` (default: its first)."""
        api_base = api_base.rstrip("/")
        client = httpx.Client(timeout=httpx.Timeout(10.0, read=600.0))
        response = cls._request(client, "GET", f"{api_base}/models", api_base)
        body = response.json()
        cards = (body.get("data") if isinstance(body, dict) else None) or []
        if not cards:
            raise RemoteBackendError(f"the server at {api_base} serves no models; start it with a --model.")
        served = [card.get("id") for card in cards]
        card = next((c for c in cards if c.get("id") == model), None) if model else cards[0]
        if card is None:
            raise RemoteBackendError(f"the server at {api_base} does not serve {model!r}; it serves {', '.join(served)}.")
        family = family_of_served_model(card)
        info = RemoteModelInfo(
            model_id=card["id"],
            folder=api_base,
            family=family.name,
            context_window=int(card.get("max_model_len") or DEFAULT_REMOTE_WINDOW),
            is_demo=bool(card.get("is_demo", False)),
            is_standin=bool(card.get("is_standin", False)),
            stands_in_for=str(card.get("stands_in_for") or ""),
        )
        return cls(api_base, info, family, client)

    @property
    def context_window(self) -> int:
        return self.info.context_window

    def fit_history(self, query: str, history: History | None, max_new_tokens: int,
                    meta_instruction: str | None = None, window: int | None = None) -> Budget:
        """Drop the oldest whole turns until the estimated prompt + ``max_new_tokens`` fit the window."""
        return fit_history(self.count_tokens, query, history, max_new_tokens, meta_instruction,
                           window or self.context_window)

    def messages(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> list[dict]:
        """The OpenAI ``messages`` list for a turn; without ``meta_instruction`` the server's default applies."""
        send_system = self.family.has_system_prompt and meta_instruction is not None
        messages = [{"role": "system", "content": meta_instruction}] if send_system else []
        for old_query, old_response in history or []:
            messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": old_response}]
        return [*messages, {"role": "user", "content": query}]

    def count_tokens(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> int:
        """Estimated prompt length in tokens."""
        messages = self.messages(query, history, meta_instruction)
        return sum(estimate_tokens(m["content"]) + TOKENS_PER_MESSAGE for m in messages)

    def request_body(self, messages: list[dict], params: GenerationParams) -> dict:
        """A streaming chat-completions request; top-k and repetition penalty only when they do something."""
        body = {
            "model": self.info.model_id,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
        }
        if params.top_k and params.top_k > 0:
            body["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            body["repetition_penalty"] = params.repetition_penalty
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def stream_chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
                    stats: GenerationStats | None = None, stop: threading.Event | None = None,
                    **generate_kwargs) -> Iterator[str]:
        """Yield the response so far as the server streams it; ``stop`` closes the stream."""
        stats = stats if stats is not None else GenerationStats()
        params = GenerationParams.from_kwargs(self.family.chat_defaults, generate_kwargs)
        body = self.request_body(self.messages(query, history, meta_instruction), params)
        url = f"{self.api_base}/chat/completions"
        text, chunks = "", 0
        start = time.perf_counter()
        stats.finish_reason = "length"
        try:
            with self.client.stream("POST", url, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise RemoteBackendError(
                        f"the server at {self.api_base} answered {response.status_code}: {error_message(response)}"
                    )
                for event in self._events(response):
                    if stop is not None and stop.is_set():
                        stats.finish_reason = "stopped"
                        break
                    if event.get("usage"):
                        stats.prompt_tokens = event["usage"].get("prompt_tokens", 0)
                        stats.new_tokens = event["usage"].get("completion_tokens", chunks)
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            if chunks == 0:
                                stats.time_to_first_token_s = time.perf_counter() - start
                            chunks += 1
                            stats.new_tokens = max(stats.new_tokens, chunks)
                            text += delta
                            stats.duration_s = time.perf_counter() - start
                            yield text
                        if choice.get("finish_reason"):
                            stats.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
        except httpx.TransportError as exc:
            raise RemoteBackendError(f"lost the connection to {self.api_base} ({exc}); is the server still running?") from exc
        finally:
            stats.duration_s = time.perf_counter() - start

    def chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
             **generate_kwargs) -> tuple[str, History]:
        """Generate a whole reply; returns it and the history with the new turn appended."""
        final = deque(self.stream_chat(query, history, meta_instruction, **generate_kwargs), maxlen=1)
        response = final[0] if final else ""
        return response, [*(history or []), (query, response)]

    def _events(self, response: httpx.Response) -> Iterator[dict]:
        """The JSON payloads of a server-sent event stream, up to ``[DONE]``."""
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                return
            try:
                event = json.loads(payload)
            except ValueError as exc:
                raise RemoteBackendError(f"the server at {self.api_base} sent a malformed event: {payload[:200]}") from exc
            if event.get("error"):
                raise RemoteBackendError(f"the server at {self.api_base} failed: {described_error(event)}")
            yield event

    @staticmethod
    def _request(client: httpx.Client, method: str, url: str, api_base: str) -> httpx.Response:
        try:
            response = client.request(method, url)
        except httpx.TransportError as exc:
            raise RemoteBackendError(f"cannot reach an OpenAI-compatible server at {api_base} ({exc}); {START_HINT}.") from exc
        if response.status_code >= 400:
            raise RemoteBackendError(
                f"{url} answered {response.status_code}: {error_message(response)}; "
                "--api-base must end in /v1 (e.g. http://127.0.0.1:23333/v1)."
            )
        try:
            response.json()
        except ValueError as exc:
            raise RemoteBackendError(f"{url} did not answer with JSON; is {api_base} an OpenAI-compatible API?") from exc
        return response

