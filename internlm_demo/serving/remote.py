"""A chat model on an OpenAI-compatible server (ours, vLLM, LMDeploy, llama.cpp's servers), as a ChatBackend.

Servers differ in data, held in ``server_kinds``: the names they give the sampling controls, where they say
their context window and count tokens, whether they answer requests side by side. A stream is a reply
only when it ends as the protocol says (a ``finish_reason``, then ``[DONE]``); anything else is an error that
names the likely cause, or a reply marked cut. docs/remote-servers.md has what each server exposes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import queue
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache

import httpx

from ..generation.admission import Admission
from ..generation.params import GenerationParams, GenerationStats
from ..models.families import FAMILIES, INTERNLM, INTERNLM2, INTERNLM3, Family
from .backend import Budget, History, fit_history
from .server_kinds import (
    DEFAULT_REMOTE_WINDOW,
    GENERIC,
    KIND_BY_OWNER,
    LLAMA_CPP,
    LLAMA_CPP_PYTHON,
    PROMPT_IN_ERROR,
    WINDOW_IN_ERROR,
    ServerKind,
    TokenizeEndpoint,
    number_in,
)

# Counting text by text, the template's markers are added generously: ChatML puts 5 tokens around each message;
# the prompt adds the reply's header, a BOS and, in llama-cpp-python's ChatML, a system block even when none is sent.
MESSAGE_MARKER_TOKENS = 6
PROMPT_MARKER_TOKENS = 10
STOP_POLL_S = 0.05  # how often a waiting stream looks at its stop event
TIMEOUT = httpx.Timeout(10.0, read=600.0)
GENERIC_FAMILY = replace(INTERNLM2, name="openai-compatible", default_meta_instruction="")
START_HINT = "start one with `bash scripts/run.sh server -- --model MODEL` (port 23333), or fix --api-base"


class RemoteBackendError(Exception):
    """The server cannot be reached, refused a request or broke a reply; the message says which and what to do."""


@dataclass(frozen=True)
class RemoteModelInfo:
    """The ModelInfo facts of a served model; ``folder`` holds the server's address, ``engine`` its kind."""

    model_id: str
    folder: str
    family: str
    dtype: str = "served remotely"
    device_map: dict = field(default_factory=dict)
    context_window: int = DEFAULT_REMOTE_WINDOW
    is_demo: bool = False
    engine: str = GENERIC.name
    is_standin: bool = False
    stands_in_for: str = ""
    window_assumed: bool = True  # no server said this window: a flag, the kind's default, or ours


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
    """A conservative tokenizer-free count: two per CJK character, one per three other characters.

    Measured on SmolLM2's tokenizer, English runs about 3.5 characters a token (chars/4 was 13% low).
    """
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in ("W", "F"))
    return 2 * wide + math.ceil((len(text) - wide) / 3)


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


_LOOP_LOCK = threading.Lock()


@cache
def http_loop() -> asyncio.AbstractEventLoop:
    """The event loop, on its own thread, that every remote request runs on (so a stop can cancel it anywhere)."""
    with _LOOP_LOCK:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="remote-http", daemon=True).start()
        return loop


def on_http_loop(coroutine) -> concurrent.futures.Future:
    return asyncio.run_coroutine_threadsafe(coroutine, http_loop())


class RemoteChatModel:
    """``chat`` / ``stream_chat`` / ``fit_history`` against ``{api_base}/chat/completions``.

    Tokens are counted by the server's tokenize endpoint where it has one, else estimated
    conservatively; a server that answers one request at a time is queued here, in arrival order.
    """

    estimates_tokens = True  # until the server's kind is known

    def __init__(self, api_base: str, info: RemoteModelInfo, family: Family, kind: ServerKind = GENERIC,
                 slots: int | None = None, client: httpx.AsyncClient | None = None):
        self.api_base = api_base.rstrip("/")
        self.root = self.api_base.removesuffix("/v1")
        self.info = info
        self.family = family
        self.kind = kind
        self.estimates_tokens = kind.tokenize is None
        self.admission = Admission(slots) if slots else None  # None: the server takes requests side by side
        self.client = client or httpx.AsyncClient(timeout=TIMEOUT)
        self._counts: dict = {}  # the server's counts, by text (or by conversation)
        self._count_scale = 1.0  # raised when the server shows that counts here were low

    @classmethod
    def connect(cls, api_base: str, model: str | None = None, context_window: int | None = None,
                serial: bool = False) -> RemoteChatModel:
        """Ask the server what it serves and what kind it is; pick ``model`` (default: its first).

        ``context_window`` is assumed when the server does not say its own; ``serial`` queues requests here
        even when the server is not known to take one at a time.
        """
        api_base = api_base.rstrip("/")
        remote = cls(api_base, RemoteModelInfo("", api_base, GENERIC_FAMILY.name), GENERIC_FAMILY)
        body = remote._get_json(f"{api_base}/models")
        cards = (body.get("data") if isinstance(body, dict) else None) or []
        if not cards:
            raise RemoteBackendError(f"the server at {api_base} serves no models; start it with a --model.")
        served = [card.get("id") for card in cards]
        card = next((c for c in cards if c.get("id") == model), None) if model else cards[0]
        if card is None:
            raise RemoteBackendError(f"the server at {api_base} does not serve {model!r}; it serves {', '.join(served)}.")
        kind, props = remote._server_kind(card)
        family = family_of_served_model(card)
        settings = props.get("default_generation_settings") or {}
        reported = card.get("max_model_len") or settings.get("n_ctx") or props.get("n_ctx")
        info = RemoteModelInfo(
            model_id=card["id"],
            folder=api_base,
            family=family.name,
            context_window=int(reported or context_window or kind.assumed_window),
            is_demo=bool(card.get("is_demo", False)),
            engine=kind.name,
            is_standin=bool(card.get("is_standin", False)),
            stands_in_for=str(card.get("stands_in_for") or ""),
            window_assumed=not reported,
        )
        slots = 1 if serial or kind.serial else props.get("total_slots")
        return cls(api_base, info, family, kind, slots if isinstance(slots, int) else None, remote.client)

    @property
    def context_window(self) -> int:
        return self.info.context_window

    @property
    def window_assumed(self) -> bool:
        """No server said this window: it comes from --api-context-window or a default."""
        return self.info.window_assumed

    @property
    def unsupported_controls(self) -> frozenset[str]:
        """The sidebar's settings this server cannot honour."""
        missing = set()
        if self.kind.repetition_penalty is None:
            missing.add("repetition_penalty")
        if self.kind.top_k_off is None:
            missing.add("top_k")
        return frozenset(missing)

    def fit_history(self, query: str, history: History | None, max_new_tokens: int,
                    meta_instruction: str | None = None, window: int | None = None) -> Budget:
        """Drop the oldest whole turns until the prompt + ``max_new_tokens`` fit the window."""
        return fit_history(self.count_tokens, query, history, max_new_tokens, meta_instruction,
                           window or self.context_window)

    def messages(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> list[dict]:
        """The OpenAI ``messages`` list for a turn; without a (non-empty) system prompt the server's default applies."""
        send_system = self.family.has_system_prompt and bool(meta_instruction and meta_instruction.strip())
        messages = [{"role": "system", "content": meta_instruction}] if send_system else []
        for old_query, old_response in history or []:
            messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": old_response}]
        return [*messages, {"role": "user", "content": query}]

    def count_tokens(self, query: str, history: History | None = None, meta_instruction: str | None = None) -> int:
        """Prompt length in tokens: the server's count where it has a tokenizer endpoint, else an estimate."""
        messages = self.messages(query, history, meta_instruction)
        tokenize = self.kind.tokenize
        try:
            if tokenize is not None and tokenize.field == "messages":
                counted = self._server_count(tokenize, messages)
            else:
                counted = sum(self._text_tokens(m["content"]) + MESSAGE_MARKER_TOKENS for m in messages)
                counted += PROMPT_MARKER_TOKENS
        except RemoteBackendError:  # the server is gone: the next request will say so; estimate meanwhile
            counted = sum(estimate_tokens(m["content"]) + MESSAGE_MARKER_TOKENS for m in messages) + PROMPT_MARKER_TOKENS
        return math.ceil(counted * self._count_scale)

    def request_body(self, messages: list[dict], params: GenerationParams) -> dict:
        """A streaming chat-completions request, each control under the name this server gives it."""
        kind = self.kind
        body = {
            "model": self.info.model_id,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            **dict(kind.fixed),
        }
        if kind.top_k_off is not None:
            body["top_k"] = params.top_k if params.top_k > 0 else kind.top_k_off
        if kind.repetition_penalty is not None:
            body[kind.repetition_penalty] = params.repetition_penalty
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def stream_chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
                    stats: GenerationStats | None = None, stop: threading.Event | None = None,
                    **generate_kwargs) -> Iterator[str]:
        """Yield the response so far as the server streams it; ``stop`` cancels the request at once.

        A serial server's requests wait here for their turn (``stats.waiting`` / ``queue_ahead``). A stream that
        breaks off raises RemoteBackendError naming the likely cause; one the server ended without a
        ``finish_reason`` ends with ``stats.finish_reason == "cut"``.
        """
        stats = stats if stats is not None else GenerationStats()
        stop = stop or threading.Event()
        params = GenerationParams.from_kwargs(self.family.chat_defaults, generate_kwargs)
        messages = self.messages(query, history, meta_instruction)
        if self.admission is None:
            yield from self._stream(messages, params, stats, stop)
            return
        with self.admission.turn(stats, cancel=stop) as granted:
            if not granted:
                stats.finish_reason = "stopped"
                return
            yield from self._stream(messages, params, stats, stop)

    def chat(self, query: str, history: History | None = None, meta_instruction: str | None = None,
             **generate_kwargs) -> tuple[str, History]:
        """Generate a whole reply; returns it and the history with the new turn appended."""
        final = deque(self.stream_chat(query, history, meta_instruction, **generate_kwargs), maxlen=1)
        response = final[0] if final else ""
        return response, [*(history or []), (query, response)]

    def _stream(self, messages: list[dict], params: GenerationParams, stats: GenerationStats,
                stop: threading.Event) -> Iterator[str]:
        arrivals: queue.SimpleQueue = queue.SimpleQueue()
        start = time.perf_counter()
        request = on_http_loop(self._post_stream(self.request_body(messages, params), arrivals))
        text, finish, done, usage = "", None, False, None
        try:
            while not done:
                if stop.is_set():
                    stats.finish_reason = "stopped"
                    return
                try:
                    what, value, at = arrivals.get(timeout=STOP_POLL_S)
                except queue.Empty:
                    continue
                if what == "refused":
                    raise self._refusal(value, messages)
                if what == "unreachable":
                    raise RemoteBackendError(f"lost the connection to {self.api_base} ({value}); "
                                             "is the server still running?")
                if what in ("ended", "lost"):
                    raise self._broken_stream(text, finish, messages, value)
                event = self._event(value)
                if event == "[DONE]":
                    done = True
                    continue
                if event is None:
                    continue
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if not text:
                            stats.time_to_first_token_s = at - start
                        text += delta
                        stats.new_tokens += 1
                        stats.duration_s = at - start
                        yield text
                    finish = choice.get("finish_reason") or finish
        finally:
            request.cancel()
            stats.duration_s = stats.duration_s or time.perf_counter() - start
        self._account(stats, text, messages, usage)
        if finish is None:
            if not text:
                raise RemoteBackendError(
                    f"{self._who()} ended the reply at once, with no text and no finish_reason: another request "
                    "most likely interrupted it (llama.cpp's server stops a running reply when a new one arrives; "
                    "start it with --interrupt_requests false, or start this app with --api-serial); send it again.")
            stats.finish_reason = "cut"
        else:
            stats.finish_reason = "length" if finish == "length" else "stop"

    async def _post_stream(self, body: dict, arrivals: queue.SimpleQueue) -> None:
        """On the HTTP loop: POST the request and pass each line on with its arrival time; cancelling hangs up."""
        try:
            async with self.client.stream("POST", f"{self.api_base}/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    arrivals.put(("refused", response, time.perf_counter()))
                    return
                async for line in response.aiter_lines():
                    arrivals.put(("line", line, time.perf_counter()))
            arrivals.put(("ended", None, time.perf_counter()))
        except httpx.ConnectError as exc:
            arrivals.put(("unreachable", exc, time.perf_counter()))
        except httpx.TransportError as exc:
            arrivals.put(("lost", exc, time.perf_counter()))

    def _event(self, line: str):
        """The JSON payload of one server-sent event line, "[DONE]", or None for other lines."""
        if not line.startswith("data:"):
            return None
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            return payload
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise RemoteBackendError(f"{self._who()} sent a malformed event: {payload[:200]}") from exc
        if event.get("error"):
            self._learn_window(json.dumps(event))
            raise RemoteBackendError(f"{self._who()} failed: {described_error(event)}")
        return event

    def _refusal(self, response: httpx.Response, messages: list[dict]) -> RemoteBackendError:
        explanation = error_message(response)
        learned = self._learn_window(response.text, messages)
        return RemoteBackendError(f"{self._who()} answered {response.status_code}: {explanation}{learned}")

    def _broken_stream(self, text: str, finish: str | None, messages: list[dict], lost) -> RemoteBackendError:
        """The error for a stream that ended without ``[DONE]``: the window when it brought nothing, else the server."""
        how = f" ({lost})" if lost else ""
        if text or finish:
            return RemoteBackendError(
                f"{self._who()} broke off the reply after {len(text)} characters without finishing it{how}: "
                "is the server still running? What came is kept above; send the message again to retry.")
        refusal = self._probe_refusal(messages)
        if refusal is None:
            return RemoteBackendError(f"{self._who()} closed the stream without a reply{how} and no longer "
                                      "answers: is the server still running?")
        learned = self._learn_window(refusal, messages)
        cause = ("" if learned else
                 f" Most likely the conversation is longer than the server's context window, which is not "
                 f"{self.context_window} tokens as assumed here: start this app with --api-context-window N, "
                 "or shorten the conversation (Clear).")
        return RemoteBackendError(f"{self._who()} closed the stream without a reply (no text, no finish_reason, "
                                  f"no [DONE]){how}.{cause}{learned}")

    def _probe_refusal(self, messages: list[dict]) -> str | None:
        """Ask again without streaming, for one token: a server past its window then answers an error that says so.

        None when the server no longer answers.
        """
        body = {"model": self.info.model_id, "messages": messages, "max_tokens": 1, "stream": False}
        for _attempt in range(2):  # the first may meet the connection the broken stream left behind
            try:
                response = on_http_loop(self.client.post(f"{self.api_base}/chat/completions", json=body)).result(60)
            except (httpx.HTTPError, concurrent.futures.TimeoutError):
                continue
            return response.text if response.status_code >= 400 else ""
        return None

    def _learn_window(self, error_text: str, messages: list[dict] | None = None) -> str:
        """Take the window (and the prompt's true length) a refusal states; what changed, for the message."""
        window = number_in(error_text, WINDOW_IN_ERROR)
        if window is None:
            return ""
        said = ""
        prompt_tokens = number_in(error_text, PROMPT_IN_ERROR)
        if prompt_tokens and messages:
            counted = self.count_tokens(*self._turn_of(messages))
            if counted < prompt_tokens:
                self._count_scale *= prompt_tokens / counted
                said = f" Counts here were low ({counted} for {prompt_tokens}); they are corrected."
        if window != self.context_window or self.info.window_assumed:
            self.info = replace(self.info, context_window=window, window_assumed=False)
            said = (f" The server's window is {window} tokens; it is used from now on, so older turns are left out "
                    f"to fit: send your message again.{said}")
        return said

    def _turn_of(self, messages: list[dict]) -> tuple[str, History, str | None]:
        """(query, history, system prompt) back from a messages list."""
        meta = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [m["content"] for m in messages if m["role"] != "system"]
        return turns[-1], list(zip(turns[:-1:2], turns[1:-1:2])), meta

    def _account(self, stats: GenerationStats, text: str, messages: list[dict], usage: dict | None) -> None:
        """Token counts: the server's usage, else the count here (the server's tokenizer where it has one: a
        chunk may hold several tokens)."""
        if usage:
            stats.prompt_tokens = usage.get("prompt_tokens", 0)
            stats.new_tokens = usage.get("completion_tokens", stats.new_tokens)
            return
        stats.prompt_tokens = self.count_tokens(*self._turn_of(messages))
        tokenize = self.kind.tokenize
        if text and tokenize is not None and tokenize.field != "messages":
            try:
                stats.new_tokens = self._server_count(tokenize, text)
            except RemoteBackendError:
                pass

    def _text_tokens(self, text: str) -> int:
        tokenize = self.kind.tokenize
        return estimate_tokens(text) if tokenize is None else self._server_count(tokenize, text)

    def _server_count(self, tokenize: TokenizeEndpoint, content) -> int:
        """The server's token count of a text (or a messages list), remembered."""
        key = json.dumps(content, ensure_ascii=False) if not isinstance(content, str) else content
        if key not in self._counts:
            body = {**dict(tokenize.extra), tokenize.field: content}
            if tokenize.names_model:
                body["model"] = self.info.model_id
            answer = self._post_json(f"{self.root}{tokenize.path}", body)
            counted = answer.get(tokenize.answer) if isinstance(answer, dict) else None
            if isinstance(counted, list):
                counted = len(counted)
            if not isinstance(counted, int):
                raise RemoteBackendError(f"{self.root}{tokenize.path} did not answer a token count: {str(answer)[:200]}")
            if len(self._counts) > 512:
                self._counts.clear()
            self._counts[key] = counted
        return self._counts[key]

    def _server_kind(self, card: dict) -> tuple[ServerKind, dict]:
        """The kind of server (and llama.cpp's /props), from the card's owner, else from the endpoints it has."""
        owner = str(card.get("owned_by", ""))
        if owner in KIND_BY_OWNER:
            return KIND_BY_OWNER[owner], {}
        try:
            props = self._get_json(f"{self.root}/props")
            if isinstance(props, dict) and "default_generation_settings" in props:
                return LLAMA_CPP, props
        except RemoteBackendError:
            pass
        try:
            if "count" in self._post_json(f"{self.root}/extras/tokenize/count", {"input": "hi"}):
                return LLAMA_CPP_PYTHON, {}
        except (RemoteBackendError, TypeError):
            pass
        return GENERIC, {}

    def _who(self) -> str:
        return f"{self.info.model_id or 'the model'} on the server at {self.api_base}"

    def _get_json(self, url: str):
        return self._json(on_http_loop(self._request("GET", url)).result())

    def _post_json(self, url: str, body: dict):
        return self._json(on_http_loop(self._request("POST", url, body)).result())

    async def _request(self, method: str, url: str, body: dict | None = None) -> httpx.Response:
        try:
            return await self.client.request(method, url, json=body)
        except httpx.ConnectError as exc:
            raise RemoteBackendError(f"cannot reach an OpenAI-compatible server at {self.api_base}: nothing answers "
                                     f"there ({exc}); {START_HINT}.") from exc
        except httpx.TransportError as exc:
            raise RemoteBackendError(f"cannot reach an OpenAI-compatible server at {self.api_base} ({exc}); "
                                     f"{START_HINT}.") from exc

    def _json(self, response: httpx.Response):
        url = response.request.url
        if response.status_code >= 400:
            raise RemoteBackendError(
                f"{url} answered {response.status_code}: {error_message(response)}; "
                "--api-base must end in /v1 (e.g. http://127.0.0.1:23333/v1)."
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RemoteBackendError(f"{url} did not answer with JSON; is {self.api_base} an OpenAI-compatible API?") from exc
