"""RemoteChatModel against real HTTP servers on 127.0.0.1: the project's OpenAI-compatible server
(started as ``python -m internlm_demo.serving.openai_server``) and, for failures, a plain server that answers 500.

Replies are compared with the same model folder loaded here: the protocol must carry every
turn, setting and seed unchanged.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from internlm_demo import GenerationStats, load_chat_model
from internlm_demo.models.loading import DEMO_MODEL_ID
from internlm_demo.serving.remote import RemoteBackendError, RemoteChatModel
from tests.conftest import FIXTURES_DIR, REPO, last, streamed
from tests.servers import free_port, running_server

APP = str(REPO / "apps" / "chat.py")
INTERNLM2_MODEL = FIXTURES_DIR / "internlm2-chat-7b-tiny"
LONG_REPLY_MODEL = FIXTURES_DIR / "internlm-chat-7b-tiny"  # a 2k window; random weights rarely pick EOS


@contextlib.contextmanager
def openai_server(*flags):
    """``python -m internlm_demo.serving.openai_server`` on a free 127.0.0.1 port; yields its /v1 base URL."""
    port = free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    command = [sys.executable, "-m", "internlm_demo.serving.openai_server", "--port", str(port), *map(str, flags)]
    with running_server(command, f"{api_base}/models"):
        yield api_base


@pytest.fixture(scope="module")
def demo_server():
    with openai_server("--model", DEMO_MODEL_ID) as api_base:
        yield api_base


@pytest.fixture(scope="module")
def internlm2_server():
    with openai_server("--model", INTERNLM2_MODEL) as api_base:
        yield api_base


@pytest.fixture(scope="module")
def long_reply_server():
    with openai_server("--model", LONG_REPLY_MODEL) as api_base:
        yield api_base


@pytest.fixture(scope="module")
def long_reply_model():
    return load_chat_model(LONG_REPLY_MODEL, progress=False)


@pytest.fixture(scope="module")
def demo_model():
    return load_chat_model(DEMO_MODEL_ID, progress=False)


@pytest.fixture(scope="module")
def internlm2_model():
    return load_chat_model(INTERNLM2_MODEL, progress=False)


def test_models_endpoint_describes_the_served_model(demo_server, demo_model):
    cards = httpx.get(f"{demo_server}/models").json()["data"]
    assert [card["id"] for card in cards] == [demo_model.info.model_id]
    assert cards[0]["max_model_len"] == demo_model.context_window and cards[0]["family"] == "internlm"

    remote = RemoteChatModel.connect(demo_server)
    assert remote.info.model_id == "internlm-demo-tiny" and remote.info.is_demo
    assert remote.family is demo_model.family and remote.context_window == demo_model.context_window


def test_streamed_reply_matches_the_local_model(demo_server, demo_model):
    remote = RemoteChatModel.connect(demo_server)
    settings = {"max_new_tokens": 30, "temperature": 0.9, "top_p": 0.7, "top_k": 50, "repetition_penalty": 1.1, "seed": 4}
    local_stats, remote_stats = GenerationStats(), GenerationStats()
    expected = last(demo_model.stream_chat("你好，world!", [], stats=local_stats, **settings))
    partials = list(remote.stream_chat("你好，world!", [], stats=remote_stats, **settings))
    assert partials[-1] == expected
    assert all(later.startswith(earlier) for earlier, later in pairwise(partials))
    assert len(partials) > 1  # it really streamed
    assert (remote_stats.prompt_tokens, remote_stats.new_tokens) == (local_stats.prompt_tokens, local_stats.new_tokens)
    assert remote_stats.finish_reason == local_stats.finish_reason
    assert 0 < remote_stats.time_to_first_token_s <= remote_stats.duration_s


def test_history_and_greedy_decoding_travel_through_the_protocol(demo_server, demo_model):
    remote = RemoteChatModel.connect(demo_server)
    history = [("What is 1+1?", "2"), ("和 2+2 呢？", "4")]
    expected = streamed(demo_model, "And 3+3?", history, max_new_tokens=12, do_sample=False)
    reply, new_history = remote.chat("And 3+3?", history, max_new_tokens=12, do_sample=False)
    assert (reply, new_history) == (expected, [*history, ("And 3+3?", expected)])


def test_whole_completion_without_streaming(demo_server, demo_model):
    body = {"model": "internlm-demo-tiny", "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 10, "seed": 2, "temperature": 0.5}
    response = httpx.post(f"{demo_server}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    completion = response.json()
    stats = GenerationStats()
    expected = last(demo_model.stream_chat("hello", [], stats=stats, max_new_tokens=10, seed=2, temperature=0.5))
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert completion["usage"]["completion_tokens"] == stats.new_tokens
    assert completion["usage"]["prompt_tokens"] == stats.prompt_tokens


def test_system_prompt_reaches_an_internlm2_server(internlm2_server, internlm2_model):
    remote = RemoteChatModel.connect(internlm2_server)
    assert remote.family.has_system_prompt and remote.family.name == "internlm2"
    settings = {"max_new_tokens": 6, "seed": 9}
    pirate = streamed(internlm2_model, "Who are you?", [], meta_instruction="You are a pirate.", **settings)
    plain = streamed(internlm2_model, "Who are you?", [], meta_instruction="", **settings)
    assert pirate != plain  # precondition: the system prompt changes this reply
    assert remote.chat("Who are you?", [], meta_instruction="You are a pirate.", **settings)[0] == pirate
    assert remote.chat("Who are you?", [], meta_instruction="", **settings)[0] == plain


def test_stop_closes_the_stream_and_keeps_what_came(internlm2_server, internlm2_model):
    remote = RemoteChatModel.connect(internlm2_server)
    stop, stats = threading.Event(), GenerationStats()
    settings = {"max_new_tokens": 100, "seed": 1}
    received = []
    for text in remote.stream_chat("Tell me a story.", [], "Be brief.", stats=stats, stop=stop, **settings):
        received.append(text)
        if len(received) == 3:
            stop.set()
    assert stats.finish_reason == "stopped" and len(received) == 3
    full, _ = internlm2_model.chat("Tell me a story.", [], "Be brief.", max_new_tokens=8, seed=1)
    assert received[-1] and full.startswith(received[-1])
    # The server goes on serving after a client hung up on it.
    assert remote.chat("hi", [], "Be brief.", max_new_tokens=2, seed=1)[0] == streamed(
        internlm2_model, "hi", [], "Be brief.", max_new_tokens=2, seed=1)


def test_concurrent_requests_share_the_engine_without_bleed_and_a_stop_leaves_the_rest(long_reply_server, long_reply_model):
    """Four clients at once, each with its own history: each gets its own greedy reply; one hangs up midway."""
    card = httpx.get(f"{long_reply_server}/models").json()["data"][0]
    assert card["engine"]["name"] == "engine" and card["engine"]["slots"] == long_reply_model.engine.slots >= 4
    remote = RemoteChatModel.connect(long_reply_server)
    conversations = [(f"question {i}: 你好 {'!' * i}", [(f"earlier {i}", f"answer {i}")]) for i in range(4)]
    settings = {"max_new_tokens": 40, "do_sample": False}
    expected = [streamed(long_reply_model, query, history, **settings) for query, history in conversations]
    assert len(set(expected)) == len(expected)  # a reply that went to the wrong client would show
    stopped, results, stops = 1, {}, [threading.Event() for _ in conversations]

    def ask(index):
        received = []
        for text in remote.stream_chat(*conversations[index], stop=stops[index], **settings):
            received.append(text)
            if index == stopped and len(received) == 2:
                stops[index].set()
        results[index] = received

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for index, received in results.items():
        if index == stopped:
            assert len(received) == 2 and expected[index].startswith(received[-1]) and received[-1] != expected[index]
        else:
            assert received[-1] == expected[index], index
    assert len(results) == len(conversations)


def test_unreachable_server_is_a_clear_error():
    api_base = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(RemoteBackendError, match="cannot reach an OpenAI-compatible server at .*Connection refused.*internlm_demo.serving.openai_server"):
        RemoteChatModel.connect(api_base)


def test_server_refusals_become_readable_errors(demo_server):
    with pytest.raises(RemoteBackendError, match="does not serve 'gpt-4'; it serves internlm-demo-tiny"):
        RemoteChatModel.connect(demo_server, "gpt-4")
    remote = RemoteChatModel.connect(demo_server)
    with pytest.raises(RemoteBackendError, match="answered 400: the message is .* context window is 2048 tokens"):
        list(remote.stream_chat("长" * 3000, [], max_new_tokens=4))
    response = httpx.post(f"{demo_server}/chat/completions", json={"messages": [
        {"role": "assistant", "content": "hi"}]})
    assert response.status_code == 400 and "ending with user" in response.json()["error"]["message"]
    response = httpx.post(f"{demo_server}/chat/completions", json={"messages": [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and "has no system prompt" in response.json()["error"]["message"]
    response = httpx.post(f"{demo_server}/chat/completions", json={"messages": [], "max_tokens": -1})
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]
    with pytest.raises(RemoteBackendError, match="answered 404: .*/v1"):
        RemoteChatModel.connect(demo_server.removesuffix("/v1"))


class FailingHandler(BaseHTTPRequestHandler):
    """Lists a model, then fails every completion as an overloaded server would."""

    def do_GET(self):
        self.reply(200, {"object": "list", "data": [{"id": "internlm2_5-7b-chat", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(500, {"error": {"message": "CUDA out of memory", "type": "server_error"}})

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_server_failures_and_shutdown_become_readable_errors():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api_base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    remote = RemoteChatModel.connect(api_base)
    assert remote.family.name == "internlm2"  # guessed from the model id; the server did not say
    assert remote.context_window == 4096 and remote.estimates_tokens
    with pytest.raises(RemoteBackendError, match="answered 500: CUDA out of memory"):
        remote.chat("hi")
    server.shutdown()
    server.server_close()
    with pytest.raises(RemoteBackendError, match="is the server still running"):
        remote.chat("hi")


def test_chat_page_with_api_base(demo_server, demo_model, monkeypatch):
    monkeypatch.setattr(sys, "argv", [APP, "--api-base", demo_server])
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert "demo" in app.warning[0].value.lower()  # the server said it serves the demo model
    app.number_input(key="param_seed").set_value(12).run()
    app.slider(key="param_max_new_tokens").set_value(16).run()
    app.chat_input[0].set_value("你好 remote").run()
    deadline = time.monotonic() + 60
    while app.session_state["conversation"].pending is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        app.run()
    expected = streamed(demo_model, "你好 remote", [], max_new_tokens=16, temperature=0.7, top_p=0.8, seed=12)
    assert app.session_state["conversation"].messages[-1].content == expected
    panel = app.sidebar.markdown[-1].value
    assert f"served by {demo_server}" in panel and "tokens/s" in panel
    assert any("estimates" in caption.value for caption in app.sidebar.caption)


def test_chat_page_with_a_dead_api_base(monkeypatch):
    monkeypatch.setattr(sys, "argv", [APP, "--api-base", f"http://127.0.0.1:{free_port()}/v1"])
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert "cannot reach an OpenAI-compatible server" in app.error[0].value
    assert not app.chat_input
