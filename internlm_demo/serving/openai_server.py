"""A minimal OpenAI-compatible server for one ChatModel: ``/v1/models``, ``/v1/chat/completions`` and vLLM's ``/tokenize``.

Run: ``python -m internlm_demo.serving.openai_server --model internlm-chat-7b --port 23333``
(binds 127.0.0.1 unless ``--host`` says otherwise). Streaming answers are server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from typing import Annotated

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..errors import ContextOverflowError, ModelFolderError, PortInUseError
from ..generation.params import GenerationStats
from ..models.tokenizer import settled_text
from ..settings import Settings
from .chat_model import Budget, ChatModel, History
from .limits import BodySizeLimit, GenerationSlots, RequestError, error_body, wait_for_disconnect


def encodable(text: str) -> str:
    """Refuse text that is not Unicode a model can read (JSON allows lone UTF-16 surrogates such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone surrogate {text[exc.start]!a} at character {exc.start}; "
                         "send valid Unicode (surrogates only in pairs)") from None
    return text


Text = Annotated[str, AfterValidator(encodable)]
Number = Annotated[float, Field(allow_inf_nan=False)]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Text = ""


class ChatMessage(BaseModel):
    role: Text
    content: Text | list[ContentPart]

    def text(self) -> str:
        """The message text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        if any(part.type != "text" for part in self.content):
            raise RequestError("only text content parts are supported")
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    model: Text | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    repetition_penalty: Number | None = Field(default=None, gt=0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what a torch generator accepts
    n: int = 1


class TokenizeChatRequest(BaseModel):
    """vLLM's ``/tokenize`` for a conversation: its prompt length with the template, as generation would see it."""

    model: Text | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True


def error_response(message: str, status: int = 400, code: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message, status, code), status, headers, media_type="application/json")


def split_messages(model: ChatModel, messages: list[ChatMessage]) -> tuple[str | None, History, str]:
    """(meta instruction, history pairs, query) of an OpenAI message list."""
    meta = None
    if messages[0].role == "system":
        if not model.family.has_system_prompt:
            raise RequestError(f"{model.info.model_id} ({model.family.name}) has no system prompt; leave out the system message")
        meta, messages = messages[0].text(), messages[1:]
    roles = [m.role for m in messages]
    alternating = [("user", "assistant")[i % 2] for i in range(len(roles))]
    if not roles or roles != alternating or roles[-1] != "user":
        raise RequestError("messages must be an optional system message, then user/assistant turns in order, ending with user")
    texts = [m.text() for m in messages]
    return meta, list(zip(texts[:-1:2], texts[1:-1:2])), texts[-1]


def generation_kwargs(request: ChatCompletionRequest, max_new_tokens: int) -> dict:
    """ChatModel keyword arguments; temperature 0 means greedy, as in the OpenAI API."""
    kwargs = {"max_new_tokens": max_new_tokens, "top_p": request.top_p, "top_k": request.top_k,
              "repetition_penalty": request.repetition_penalty, "seed": request.seed}
    if request.temperature is not None:  # unset: the model's own defaults (the stand-in's are greedy)
        kwargs["do_sample"] = request.temperature > 0
        kwargs["temperature"] = request.temperature or None
    return kwargs


class Progress:
    """The latest text of a generation that runs in a thread, awaited on the event loop without a thread.

    Only the newest text is kept, so a slow reader costs no memory and reads every change it can.
    """

    def __init__(self) -> None:
        self.text = ""
        self.error: str | None = None
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def update(self, text: str) -> None:
        """From the generating thread: the reply so far."""
        self.text = text
        self._loop.call_soon_threadsafe(self._changed.set)

    def finish(self, error: str | None = None) -> None:
        """From the generating thread: the reply is complete, or failed with ``error``."""
        self.error, self.finished = error, True
        self._loop.call_soon_threadsafe(self._changed.set)

    async def texts(self):
        """The reply so far each time it changed, until the generation finished."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            finished = self.finished  # read before the text: the last text is set before finished
            yield self.text
            if finished:
                return


def generate_in_thread(model: ChatModel, progress: Progress, stop: threading.Event, meta: str | None,
                       history: History, query: str, kwargs: dict, stats: GenerationStats) -> None:
    """Generate the reply into ``progress``; concurrent requests become concurrent engine slots."""
    try:
        for text in model.stream_chat(query, history, meta, stats=stats, stop=stop, **kwargs):
            progress.update(text)
        progress.finish()
    except Exception as exc:  # noqa: BLE001 - the client gets the reason, not a dropped connection
        progress.finish(f"generation failed: {exc}")


def plan_reply(model: ChatModel, request: ChatCompletionRequest) -> tuple[str | None, Budget, str]:
    """(meta instruction, budget, query) of a request; tokenizes, so it runs off the event loop."""
    meta, history, query = split_messages(model, request.messages)
    max_tokens = request.max_completion_tokens or request.max_tokens or model.family.chat_defaults["max_new_tokens"]
    try:
        return meta, model.fit_history(query, history, max_tokens, meta), query
    except ContextOverflowError as exc:
        raise RequestError(str(exc)) from exc


class ClientGone(Exception):
    """The client hung up before its answer was ready."""


async def unless_client_leaves(http: Request, awaitable):
    """The result of ``awaitable``; ClientGone (and ``awaitable`` cancelled) if the client hangs up first."""
    work = asyncio.ensure_future(awaitable)
    hang_up = asyncio.ensure_future(wait_for_disconnect(http))
    try:
        await asyncio.wait({work, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hang_up.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        raise ClientGone
    return work.result()


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that runs ``on_close`` however the stream ends: finished, failed or hung up on."""

    def __init__(self, content, on_close, **kwargs):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def create_app(model: ChatModel, settings: Settings | None = None) -> FastAPI:
    """The FastAPI application serving ``model`` within the limits in ``settings``."""
    settings = settings or Settings()
    slots = GenerationSlots(settings.max_concurrent_requests, settings.max_queued_requests, settings.queue_timeout_s)
    app = FastAPI(title="internlm-demo OpenAI-compatible API")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error_response(f"invalid request: {problems}")

    @app.exception_handler(RequestError)
    async def refused_request(_request: Request, exc: RequestError) -> Response:
        return error_response(str(exc), exc.status, exc.code, exc.headers)

    @app.get("/v1/models")
    async def list_models() -> dict:
        card = {"id": model.info.model_id, "object": "model", "created": created, "owned_by": "internlm-demo",
                "max_model_len": model.context_window, "family": model.family.name, "is_demo": model.info.is_demo,
                "engine": model.engine_facts(), "is_standin": model.info.is_standin,
                "stands_in_for": model.info.stands_in_for}
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize(request: TokenizeChatRequest) -> dict:
        if request.model not in (None, model.info.model_id):
            raise RequestError(f"model {request.model!r} is not served here; use {model.info.model_id!r}",
                               status=404, code="model_not_found")
        meta, history, query = split_messages(model, request.messages)
        count = await anyio.to_thread.run_sync(model.count_tokens, query, history, meta)
        return {"count": count, "max_model_len": model.context_window}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest, http: Request):
        if request.model not in (None, model.info.model_id):
            raise RequestError(f"model {request.model!r} is not served here; use {model.info.model_id!r}",
                               status=404, code="model_not_found")
        if request.n != 1:
            raise RequestError("only n=1 is supported")
        meta, budget, query = await anyio.to_thread.run_sync(plan_reply, model, request)
        kwargs = generation_kwargs(request, budget.max_new_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        headers = {"X-Dropped-Turns": str(len(budget.dropped))}

        def start_generation() -> tuple[Progress, threading.Event, GenerationStats]:
            progress, stop, stats = Progress(), threading.Event(), GenerationStats()
            threading.Thread(target=generate_in_thread, daemon=True,
                             args=(model, progress, stop, meta, budget.history, query, kwargs, stats)).start()
            return progress, stop, stats

        try:
            if request.stream:
                held = contextlib.AsyncExitStack()
                await unless_client_leaves(http, held.enter_async_context(slots.slot()))
                progress, stop, stats = start_generation()
                held.callback(stop.set)  # a client that went away stops the generation
                include_usage = bool((request.stream_options or {}).get("include_usage"))
                events = stream_events(progress, stats, completion_id, model.info.model_id, include_usage)
                return ClosingStreamingResponse(events, held.aclose, media_type="text/event-stream", headers=headers)

            async def whole_completion() -> Response:
                async with slots.slot():
                    progress, stop, stats = start_generation()
                    try:
                        text = [text async for text in progress.texts()][-1]
                    finally:
                        stop.set()
                if progress.error is not None:
                    return error_response(progress.error, 500, "server_error")
                return JSONResponse(completion_body(text, stats, completion_id, model.info.model_id), headers=headers)

            return await unless_client_leaves(http, whole_completion())
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    return app


def finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def completion_body(text: str, stats: GenerationStats, completion_id: str, model_id: str) -> dict:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(stats)}],
        "usage": usage(stats),
    }


async def stream_events(progress: Progress, stats: GenerationStats, completion_id: str, model_id: str,
                        include_usage: bool):
    """Server-sent events: a role chunk, content deltas, a finish chunk, usage if asked, ``[DONE]``."""

    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model_id, "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    sent = ""
    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    text = ""
    async for text in progress.texts():
        # Deltas cannot be taken back: while generating, only the settled part goes out (a later "." may
        # remove the space before it); a stop word cut can make the text shrink for a moment.
        if (shown := settled_text(text)).startswith(sent) and len(shown) > len(sent):
            yield event([{"index": 0, "delta": {"content": shown[len(sent):]}, "finish_reason": None}])
            sent = shown
    if text.startswith(sent) and len(text) > len(sent):  # the held-back ending of the final text
        yield event([{"index": 0, "delta": {"content": text[len(sent):]}, "finish_reason": None}])
    if progress.error is not None:
        yield f"data: {json.dumps({'error': {'message': progress.error, 'type': 'server_error', 'code': 500}})}\n\n"
    else:
        yield event([{"index": 0, "delta": {}, "finish_reason": finish_reason(stats)}])
        if include_usage:
            yield event([], usage=usage(stats))
    yield "data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    """Load the model named by ``--model`` and serve it until interrupted."""
    import uvicorn

    from .chat_model import load_chat_model

    settings = Settings.parse(argv, prog="python -m internlm_demo.serving.openai_server", app="server")
    try:
        settings.check_port()  # before the model loads, which takes a while
    except PortInUseError as exc:
        sys.exit(f"error: {exc}")
    try:
        model = load_chat_model(settings.model, **settings.model_options())
    except ModelFolderError as exc:
        sys.exit(f"cannot load the model: {exc}")
    print(f"serving {model.info.model_id} at http://{settings.host}:{settings.port}/v1", flush=True)
    if model.info.is_standin:
        real_id = model.info.stands_in_for
        print(f"{model.info.model_id} is a small stand-in model (no InternLM weights are downloaded); to serve InternLM: "
              f"`.venv/bin/python download.py {real_id}`, then add `--model {real_id}`.", flush=True)
    uvicorn.run(create_app(model, settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
