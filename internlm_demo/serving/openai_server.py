"""A minimal OpenAI-compatible server for one ChatModel: ``/v1/models`` and ``/v1/chat/completions``.

Run: ``python -m internlm_demo.serving.openai_server --model internlm-chat-7b --port 23333``
(binds 127.0.0.1 unless ``--host`` says otherwise). Streaming answers are server-sent events.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import uuid

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from ..errors import ContextOverflowError, ModelFolderError
from ..generation.admission import GpuQueue, process_queue
from ..generation.params import GenerationStats
from ..settings import Settings
from .chat_model import ChatModel, History

DEFAULT_PORT = 23333  # LMDeploy's api_server default, so --api-base URLs stay interchangeable


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict]

    def text(self) -> str:
        """The message text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" for part in self.content):
            raise RequestError("only text content parts are supported")
        return "".join(part.get("text", "") for part in self.content)


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = None
    n: int = 1


class RequestError(ValueError):
    """A request the server refuses with 400; the message tells the client what to change."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(message: str, status: int = 400, code: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": code, "code": status}}, status_code=status)


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
    if request.temperature == 0:
        kwargs["do_sample"] = False
    else:
        kwargs["temperature"] = request.temperature
    return kwargs


def generate_in_thread(model: ChatModel, gpu_queue: GpuQueue, items: queue.Queue, stop: threading.Event,
                       meta: str | None, history: History, query: str, kwargs: dict, stats: GenerationStats) -> None:
    """Put ("text", so_far) items and then ("end", None) or ("error", message) on ``items``.

    Generation stays on one thread: torch's inference mode is per thread.
    """
    try:
        with gpu_queue.turn(cancel=stop) as granted:
            if granted:
                for text in model.stream_chat(query, history, meta, stats=stats, stop=stop, **kwargs):
                    items.put(("text", text))
        items.put(("end", None))
    except Exception as exc:  # noqa: BLE001 - the client gets the reason, not a dropped connection
        items.put(("error", f"generation failed: {exc}"))


def create_app(model: ChatModel, gpu_queue: GpuQueue | None = None) -> FastAPI:
    """The FastAPI application serving ``model``; generation goes through ``gpu_queue``."""
    gpu_queue = gpu_queue or process_queue()
    app = FastAPI(title="internlm-demo OpenAI-compatible API")
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error_response(f"invalid request: {problems}")

    @app.exception_handler(RequestError)
    async def refused_request(_request: Request, exc: RequestError) -> JSONResponse:
        return error_response(str(exc), exc.status, exc.code)

    @app.get("/v1/models")
    def list_models() -> dict:
        card = {"id": model.info.model_id, "object": "model", "created": created, "owned_by": "internlm-demo",
                "max_model_len": model.context_window, "family": model.family.name, "is_demo": model.info.is_demo}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        if request.model not in (None, model.info.model_id):
            raise RequestError(f"model {request.model!r} is not served here; use {model.info.model_id!r}",
                               status=404, code="model_not_found")
        if request.n != 1:
            raise RequestError("only n=1 is supported")
        meta, history, query = split_messages(model, request.messages)
        max_tokens = request.max_completion_tokens or request.max_tokens or model.family.chat_defaults["max_new_tokens"]
        try:
            budget = model.fit_history(query, history, max_tokens, meta)
        except ContextOverflowError as exc:
            raise RequestError(str(exc)) from exc
        stats, stop, items = GenerationStats(), threading.Event(), queue.Queue()
        worker = threading.Thread(
            target=generate_in_thread, daemon=True,
            args=(model, gpu_queue, items, stop, meta, budget.history, query,
                  generation_kwargs(request, budget.max_new_tokens), stats),
        )
        worker.start()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream:
            include_usage = bool((request.stream_options or {}).get("include_usage"))
            events = stream_events(items, stop, stats, completion_id, model.info.model_id, include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"X-Dropped-Turns": str(len(budget.dropped))})
        return await whole_completion(items, stop, stats, completion_id, model.info.model_id, len(budget.dropped))

    return app


def finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


async def next_item(items: queue.Queue) -> tuple[str, str | None]:
    return await anyio.to_thread.run_sync(items.get)


async def whole_completion(items: queue.Queue, stop: threading.Event, stats: GenerationStats,
                           completion_id: str, model_id: str, dropped: int) -> JSONResponse:
    text = ""
    try:
        while (item := await next_item(items))[0] == "text":
            text = item[1]
    finally:
        stop.set()
    if item[0] == "error":
        return error_response(item[1], 500, "server_error")
    body = {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(stats)}],
        "usage": usage(stats),
    }
    return JSONResponse(body, headers={"X-Dropped-Turns": str(dropped)})


async def stream_events(items: queue.Queue, stop: threading.Event, stats: GenerationStats,
                        completion_id: str, model_id: str, include_usage: bool):
    """Server-sent events: a role chunk, content deltas, a finish chunk, usage if asked, ``[DONE]``."""

    def event(choices: list, **extra) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": model_id, "choices": choices, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    sent = ""
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        while (item := await next_item(items))[0] == "text":
            text = item[1]
            # A stop word cut can make the text shrink for a moment; only growth is news.
            if text.startswith(sent) and len(text) > len(sent):
                yield event([{"index": 0, "delta": {"content": text[len(sent):]}, "finish_reason": None}])
                sent = text
        if item[0] == "error":
            yield f"data: {json.dumps({'error': {'message': item[1], 'type': 'server_error', 'code': 500}})}\n\n"
        else:
            yield event([{"index": 0, "delta": {}, "finish_reason": finish_reason(stats)}])
            if include_usage:
                yield event([], usage=usage(stats))
        yield "data: [DONE]\n\n"
    finally:
        stop.set()  # a client that went away stops the generation


def main(argv: list[str] | None = None) -> None:
    """Load the model named by ``--model`` and serve it until interrupted."""
    import uvicorn

    from .chat_model import load_chat_model

    settings = Settings.parse(argv, prog="python -m internlm_demo.serving.openai_server", defaults={"port": DEFAULT_PORT})
    try:
        model = load_chat_model(settings.model, **settings.model_options())
    except ModelFolderError as exc:
        sys.exit(f"cannot load the model: {exc}")
    print(f"serving {model.info.model_id} at http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(create_app(model), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
