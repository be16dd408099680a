"""The OpenAI-compatible server under hostile and careless clients, as a real process on 127.0.0.1.

Limits come from the environment (``INTERNLM_DEMO_MAX_*``), as an operator would set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time

import httpx
import pytest

from tests.servers import free_port, running_server

MiB = 1024 * 1024


@contextlib.contextmanager
def openai_server(**limits):
    """The server on the tiny demo model; ``limits`` become INTERNLM_DEMO_<NAME> variables."""
    port = free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    env = {f"INTERNLM_DEMO_{name.upper()}": str(value) for name, value in limits.items()}
    command = [sys.executable, "-m", "internlm_demo.serving.openai_server", "--port", str(port),
               "--model", "internlm-demo-tiny"]
    with running_server(command, f"{api_base}/models", env=env):
        yield api_base


@pytest.fixture(scope="module")
def server():
    with openai_server() as api_base:
        yield api_base


def models_latency(api_base: str) -> float:
    started = time.monotonic()
    response = httpx.get(f"{api_base}/models", timeout=30)
    assert response.status_code == 200
    return time.monotonic() - started


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the HTTP response on ``sock`` (the server closes or sends Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), json.loads(body)


def send_huge_body(api_base: str, chunked: bool, total: int = 50 * MiB) -> tuple[int, dict]:
    """POST a valid chat request of ``total`` bytes, slowly; stop sending once the server answers."""
    port = int(api_base.split(":")[2].split("/")[0])
    filler = "x" * (total - 100)
    body = json.dumps({"messages": [{"role": "user", "content": filler}], "max_tokens": 1}).encode()
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + framing + b"\r\n")
        sock.setblocking(False)
        pieces = [body[start:start + MiB] for start in range(0, len(body), MiB)]
        frames = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces] + [b"0\r\n\r\n"] if chunked else pieces
        for frame in frames:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.sendall(frame)
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered before the body ended
            time.sleep(0.02)
        sock.setblocking(True)
        return read_response(sock)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50_mb_body_is_refused_and_the_server_stays_responsive(server, chunked):
    outcome = {}
    sender = threading.Thread(target=lambda: outcome.update(result=send_huge_body(server, chunked)))
    sender.start()
    latencies = []
    while sender.is_alive() and len(latencies) < 20:
        latencies.append(models_latency(server))
        time.sleep(0.1)
    sender.join(timeout=60)
    status, body = outcome["result"]
    assert status == 413
    assert body["error"]["type"] == "request_too_large"
    assert "2097152 bytes" in body["error"]["message"] and "INTERNLM_DEMO_MAX_BODY_BYTES" in body["error"]["message"]
    assert max(latencies) < 2.0, latencies


@pytest.mark.parametrize(("change", "expected"), [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "surrogate"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}]}, "surrogate"),
    ({"seed": 2**70}, "seed"),
    ({"seed": -(2**64)}, "seed"),
])
def test_malformed_values_are_400_with_the_field_named(server, change, expected):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    response = httpx.post(f"{server}/chat/completions", content=json.dumps(body), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and expected in error["message"]


def test_nan_temperature_is_400(server):
    content = '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    response = httpx.post(f"{server}/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "temperature" in response.json()["error"]["message"]


def long_request(stream: bool) -> dict:
    """A request the demo model answers with all its 1900 tokens (seconds of work; checked by hand)."""
    return {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 1900,
            "temperature": 1000.0, "top_p": 1.0, "seed": 9, "stream": stream}


async def hold_streams(api_base: str, count: int, opened: asyncio.Event, release: asyncio.Event) -> list[int]:
    """Open ``count`` streaming requests, keep them open until ``release``; their status codes."""
    limits = httpx.Limits(max_connections=count + 5, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        statuses = []

        async def one() -> None:
            async with client.stream("POST", f"{api_base}/chat/completions", json=long_request(True)) as response:
                statuses.append(response.status_code)
                if len(statuses) == count:
                    opened.set()
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await release.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return statuses


def test_models_answers_during_80_slow_streams():
    with openai_server(max_concurrent_requests=2, max_queued_requests=100) as api_base:
        loop = asyncio.new_event_loop()
        opened, release = asyncio.Event(), asyncio.Event()
        result = {}

        def clients() -> None:
            result["statuses"] = loop.run_until_complete(hold_streams(api_base, 80, opened, release))

        thread = threading.Thread(target=clients)
        thread.start()
        try:
            time.sleep(1.0)  # every request has arrived: 2 generate, 78 wait in the queue
            latencies = [models_latency(api_base) for _ in range(5)]
        finally:
            loop.call_soon_threadsafe(release.set)
            thread.join(timeout=60)
        assert max(latencies) < 2.0, latencies
        # The server is whole again once the clients left: a short reply comes at once.
        started = time.monotonic()
        reply = httpx.post(f"{api_base}/chat/completions", timeout=30,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert reply.status_code == 200 and time.monotonic() - started < 5


def test_a_full_queue_is_429_and_a_long_wait_is_503():
    with openai_server(max_concurrent_requests=1, max_queued_requests=1, queue_timeout_s=1) as api_base:
        with httpx.Client(timeout=30) as client, client.stream(
                "POST", f"{api_base}/chat/completions", json=long_request(True)) as first:
            assert first.status_code == 200
            results = {}
            waiting = threading.Thread(target=lambda: results.update(second=client.post(
                f"{api_base}/chat/completions", json=long_request(False))))
            waiting.start()
            time.sleep(0.3)
            third = httpx.post(f"{api_base}/chat/completions", json=long_request(False), timeout=30)
            assert third.status_code == 429
            assert "1 request(s) already wait" in third.json()["error"]["message"]
            assert third.json()["error"]["type"] == "rate_limit_exceeded" and "Retry-After" in third.headers
            waiting.join(timeout=30)
        second = results["second"]
        assert second.status_code == 503 and "waited 1 s" in second.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_hangs_up_cancels_its_generation(stream):
    with openai_server(max_concurrent_requests=1) as api_base:
        def hang_up() -> None:
            with contextlib.suppress(httpx.TimeoutException), httpx.Client(timeout=0.3) as client:
                with client.stream("POST", f"{api_base}/chat/completions", json=long_request(stream)) as response:
                    for _ in response.iter_bytes():
                        pass

        # Eight long requests, each dropped by its client after 0.3 s: 20 s or more of generation, one at a time,
        # if they ran on (measured: 25 s when a hang-up is not noticed).
        droppers = [threading.Thread(target=hang_up) for _ in range(8)]
        for dropper in droppers:
            dropper.start()
        for dropper in droppers:
            dropper.join()
        started = time.monotonic()
        reply = httpx.post(f"{api_base}/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert reply.status_code == 200
        assert time.monotonic() - started < 8.0
