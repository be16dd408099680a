"""Small OpenAI-compatible servers on 127.0.0.1 that misbehave as real ones were seen to (docs/remote-servers.md).

Each answers ``/v1/models`` with one card and streams ``/v1/chat/completions`` as its ``scenario`` says; it keeps
every request body it got, and when a client hung up on it.
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.servers import send_json

WORDS = ["Hello", " there", ",", " friend", "."]


def chunk(content: str | None = None, finish_reason: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return f"data: {json.dumps(event)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


class FakeServer(ThreadingHTTPServer):
    """``scenario``: complete, empty (200 and nothing: a window exceeded on llama-cpp-python), cut ([DONE] without
    finish_reason after some text), interrupted ([DONE] alone), drop (text, then the connection closes), slow (no
    byte for 30 s), slow_words (a word every 0.2 s, counting requests at once)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, scenario: str, card: dict, window: int = 1024, extra_routes: dict | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.scenario = scenario
        self.card = card
        self.window = window
        self.extra_routes = extra_routes or {}  # "GET /props", "POST /tokenize"... -> function(body) -> JSON answer
        self.bodies: list[dict] = []
        self.hung_up_at: float | None = None
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def prompt_tokens(self, messages: list[dict]) -> int:
        """This server's own count: a token per two characters of JSON."""
        return len(json.dumps(messages)) // 2


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_GET(self):
        if f"GET {self.path}" in self.server.extra_routes:
            return self.send_json(200, self.server.extra_routes[f"GET {self.path}"]({}))
        if self.path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [self.server.card]})
        self.send_json(404, {"detail": "Not Found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if f"POST {self.path}" in self.server.extra_routes:
            return self.send_json(200, self.server.extra_routes[f"POST {self.path}"](body))
        if self.path != "/v1/chat/completions":
            return self.send_json(404, {"detail": "Not Found"})
        self.server.bodies.append(body)
        tokens = self.server.prompt_tokens(body["messages"])
        if not body.get("stream"):
            if tokens >= self.server.window:  # llama-cpp-python's words for a prompt past n_ctx
                return self.send_json(400, {"error": {"message": (
                    f"This model's maximum context length is {self.server.window} tokens. However, you requested "
                    f"{tokens + 1} tokens ({tokens} in the messages, 1 in the completion)."),
                    "type": "invalid_request_error", "code": "context_length_exceeded"}})
            return self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": "Hi"},
                                                     "finish_reason": "length"}]})
        getattr(self, f"stream_{self.server.scenario}")()

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def stream_complete(self):
        self.start_stream()
        self.wfile.write(b"".join(chunk(word) for word in WORDS) + chunk(finish_reason="stop") + DONE)

    def stream_empty(self):
        self.start_stream()

    def stream_cut(self):
        self.start_stream()
        self.wfile.write(b"".join(chunk(word) for word in WORDS[:3]) + DONE)

    def stream_interrupted(self):
        self.start_stream()
        self.wfile.write(DONE)

    def stream_drop(self):
        self.start_stream()
        self.wfile.write(b"".join(chunk(word) for word in WORDS[:2]))

    def stream_slow(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # nothing sent; notice the client hanging up
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1, 2):  # MSG_PEEK: b"" once the client has closed
                self.server.hung_up_at = time.monotonic()
                return

    def stream_slow_words(self):
        with self.server.lock:
            self.server.running += 1
            self.server.most_at_once = max(self.server.most_at_once, self.server.running)
        try:
            self.start_stream()
            for word in WORDS:
                time.sleep(0.2)
                self.wfile.write(chunk(word))
                self.wfile.flush()
        finally:
            with self.server.lock:  # before the last bytes, which may let the client send its next request
                self.server.running -= 1
        self.wfile.write(chunk(finish_reason="stop") + DONE)

    def send_json(self, status: int, body: dict) -> None:
        send_json(self, status, body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_server(scenario: str, card: dict | None = None, **options) -> Iterator[FakeServer]:
    server = FakeServer(scenario, card or {"id": "some-model", "object": "model"}, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
