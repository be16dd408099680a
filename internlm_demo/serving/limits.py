"""What the OpenAI-compatible server lets one client take: body size, generation slots, a place in the queue.

Everything here runs on the event loop and never blocks it: a waiting request is a future, not a thread.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request


class RequestError(ValueError):
    """A request the server refuses (400 unless said otherwise); the message tells the client what to change."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers


def error_body(message: str, status: int, code: str) -> bytes:
    """The OpenAI-style error document."""
    return json.dumps({"error": {"message": message, "type": code, "code": status}}).encode()


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before more of it is read.

    A declared Content-Length is checked before anything is read; a chunked body is counted as it arrives.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.refuse(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self.refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay_then_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay_then_receive, send)

    async def refuse(self, send) -> None:
        message = (f"the request body is larger than {self.max_bytes} bytes, the most this server accepts; "
                   "shorten the messages or raise the limit (--max-body-bytes / INTERNLM_DEMO_MAX_BODY_BYTES)")
        data = error_body(message, 413, "request_too_large")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


class GenerationSlots:
    """At most ``active`` requests generate at once; up to ``queued`` more wait in arrival order.

    A full queue is 429; a wait longer than ``timeout_s`` is 503.
    """

    def __init__(self, active: int, queued: int, timeout_s: float):
        self.active, self.queued, self.timeout_s = active, queued, timeout_s
        self._running = 0
        self._waiting: deque[asyncio.Future] = deque()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the ``async with`` block."""
        if self._running < self.active and not self._waiting:
            self._running += 1
        else:
            await self._wait_for_slot()
        try:
            yield
        finally:
            self._release()

    async def _wait_for_slot(self) -> None:
        if len(self._waiting) >= self.queued:
            raise RequestError(
                f"the server is busy: {self._running} request(s) generate and {len(self._waiting)} request(s) already "
                f"wait, the most it queues (--max-queued-requests / INTERNLM_DEMO_MAX_QUEUED_REQUESTS); retry later",
                429, "rate_limit_exceeded", {"Retry-After": "5"})
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await asyncio.wait_for(turn, self.timeout_s)
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot reached this request just as it gave up: pass it on
            elif turn in self._waiting:
                self._waiting.remove(turn)
            if isinstance(exc, TimeoutError):
                raise RequestError(
                    f"the server is overloaded: this request waited {self.timeout_s:g} s for a free generation slot "
                    f"(--queue-timeout-s / INTERNLM_DEMO_QUEUE_TIMEOUT_S); retry later",
                    503, "server_overloaded", {"Retry-After": "5"}) from None
            raise

    def _release(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next waiting request
                return
        self._running -= 1


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client of ``request`` (whose body was already read) hangs up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
