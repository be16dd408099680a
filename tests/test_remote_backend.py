"""RemoteChatModel against real HTTP servers on 127.0.0.1: the project's OpenAI-compatible server
(started as ``python -m internlm_demo.serving.openai_server``) and, for failures, a plain server that answers 500.

Replies are compared with the same model folder loaded here: the protocol must carry every
turn, setting and seed unchanged.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from internlm_demo import GenerationParams, GenerationStats, load_chat_model
from internlm_demo.models.loading import DEMO_MODEL_ID
from internlm_demo.serving.remote import RemoteBackendError, RemoteChatModel
from internlm_demo.ui import conversation as chat
from tests.conftest import FIXTURES_DIR, REPO, last, reference, streamed
from tests.fake_openai_servers import fake_server
from tests.servers import free_port, running_server, send_json

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
    default = streamed(internlm2_model, "Who are you?", [], meta_instruction=None, **settings)
    assert pirate != default  # precondition: the system prompt changes this reply
    assert remote.chat("Who are you?", [], meta_instruction="You are a pirate.", **settings)[0] == pirate
    # An empty system prompt is not sent: the server's default applies (item 6 of issue 21).
    assert remote.chat("Who are you?", [], meta_instruction="", **settings)[0] == default
    assert remote.chat("Who are you?", [], meta_instruction=None, **settings)[0] == default


def test_our_server_counts_the_tokens(internlm2_server, internlm2_model):
    """The server's /tokenize gives the exact prompt length, template included: no estimate, no assumed window."""
    remote = RemoteChatModel.connect(internlm2_server)
    assert not remote.estimates_tokens and not remote.window_assumed and remote.kind.name == "internlm-demo server"
    history = [("What is 1+1?", "2"), ("和 2+2 呢？", "四")]
    for meta in (None, "Be brief."):
        assert remote.count_tokens("And 3+3?", history, meta) == internlm2_model.count_tokens("And 3+3?", history, meta)


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
    with pytest.raises(RemoteBackendError, match="cannot reach an OpenAI-compatible server at .*nothing answers there.*start one with"):
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
        send_json(self, status, body)

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


def test_chat_page_with_api_base(long_reply_server, monkeypatch):
    """The page, through the server, gives the original remote code's greedy reply (the fixture's reference)."""
    case = reference("internlm-chat-7b-tiny")["chat_cases"][0]
    assert case["history"] == [] and case["greedy"]["chat_kwargs"]["max_new_tokens"] == 12
    monkeypatch.setattr(sys, "argv", [APP, "--api-base", long_reply_server])
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    app.slider(key="param_temperature").set_value(0.0).run()
    app.slider(key="param_max_new_tokens").set_value(12).run()
    app.chat_input[0].set_value(case["query"]).run()
    deadline = time.monotonic() + 60
    while app.session_state["conversation"].pending is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        app.run()
    assert app.session_state["conversation"].messages[-1].content == case["greedy"]["response"]
    panel = app.sidebar.markdown[-1].value
    assert f"served by {long_reply_server}" in panel and "tokens/s" in panel and "internlm-demo server" in panel
    prompt_tokens = len(reference("internlm-chat-7b-tiny")["chat_cases"][0]["input_ids"])
    assert f"(after reading a {prompt_tokens}-token prompt)" in panel  # the server's usage, beside the TTFT
    assert not any("estimate" in caption.value or "assumed" in caption.value for caption in app.sidebar.caption)
    # Titles name the served model, not InternLM in general.
    assert app.title[0].value == "Chat with internlm-chat-7b-tiny"
    assert app.chat_input[0].placeholder == "Message internlm-chat-7b-tiny (Enter to send)"


def test_chat_page_with_a_dead_api_base(monkeypatch):
    monkeypatch.setattr(sys, "argv", [APP, "--api-base", f"http://127.0.0.1:{free_port()}/v1"])
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    assert "cannot reach an OpenAI-compatible server" in app.error[0].value
    fix = app.info[0].value  # about servers, not model folders
    assert "start an OpenAI-compatible server first" in fix and "config.json" not in fix
    assert not app.chat_input


# --- Servers that misbehave as real ones do (issue 21), reproduced by small servers in tests/fake_openai_servers.py.

LLAMA_CPP_PYTHON_CARD = {"id": "smollm2-135m-instruct", "object": "model", "owned_by": "me", "permissions": []}


def words_counted(body: dict) -> dict:
    """llama-cpp-python's /extras/tokenize/count, with a word counter for a tokenizer."""
    return {"count": len(body["input"].split())}


LLAMA_CPP_PYTHON = {"card": LLAMA_CPP_PYTHON_CARD, "extra_routes": {"POST /extras/tokenize/count": words_counted}}


@pytest.mark.parametrize(("server", "sent", "left_out", "window", "assumed"), [
    (LLAMA_CPP_PYTHON, {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}, {"repetition_penalty"}, 2048, True),
    ({"card": {"id": "m", "object": "model", "owned_by": "vllm", "max_model_len": 8192}},
     {"repetition_penalty": 1.0, "top_k": -1}, {"repeat_penalty", "min_p"}, 8192, False),
    ({"card": {"id": "m", "object": "model", "owned_by": "lmdeploy"}},
     {"repetition_penalty": 1.0, "top_k": 0}, {"repeat_penalty", "min_p"}, 4096, True),
    ({"card": {"id": "m", "object": "model", "owned_by": "llamacpp"},
      "extra_routes": {"GET /props": lambda _: {"default_generation_settings": {"n_ctx": 3072}, "total_slots": 1}}},
     {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}, {"repetition_penalty"}, 3072, False),
    ({"card": {"id": "m", "object": "model", "owned_by": "openai"}}, {}, {"top_k", "repetition_penalty", "min_p"},
     4096, True),
], ids=["llama-cpp-python", "vllm", "lmdeploy", "llama.cpp", "unknown"])
def test_each_kind_of_server_gets_the_controls_in_its_own_words(server, sent, left_out, window, assumed):
    """Repetition penalty 1 and top-k off are sent as each server spells them, so its own defaults (llama.cpp: 1.1,
    top-k 40, min-p 0.05) never apply unseen; a server with no such control has it listed as unsupported."""
    with fake_server("complete", **server) as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        stats = GenerationStats()
        reply = last(remote.stream_chat("hi", [], stats=stats, top_k=0, repetition_penalty=1.0, max_new_tokens=8))
        assert (reply, stats.finish_reason) == ("Hello there, friend.", "stop")
        body = fake.bodies[-1]
        assert {name: body[name] for name in sent} == sent and not left_out & set(body)
        assert (remote.context_window, remote.window_assumed) == (window, assumed)
        unknown = server["card"]["owned_by"] == "openai"
        assert remote.unsupported_controls == ({"top_k", "repetition_penalty"} if unknown else set())
        assert remote.estimates_tokens == unknown
        assert body["temperature"] > 0 and remote.request_body([], GenerationParams(top_k=7, do_sample=False)).get(
            "top_k", 7) == 7


def test_the_window_flag_is_assumed_and_a_top_k_is_sent_as_is():
    with fake_server("complete", card={"id": "m", "object": "model", "owned_by": "lmdeploy"}) as fake:
        remote = RemoteChatModel.connect(fake.api_base, context_window=32768)
        assert (remote.context_window, remote.window_assumed) == (32768, True)
        remote.chat("hi", [], top_k=5, repetition_penalty=1.3, do_sample=False)
        assert (fake.bodies[-1]["top_k"], fake.bodies[-1]["repetition_penalty"], fake.bodies[-1]["temperature"]) == (
            5, 1.3, 0.0)


def test_llama_cpp_pythons_counts_come_from_its_tokenizer():
    with fake_server("complete", **LLAMA_CPP_PYTHON) as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        history = [("one two three", "four five")]
        # Its tokenizer's count of each message (a word counter here), plus 6 for the markers around each, 10 for the prompt's.
        expected = (3 + 6) + (2 + 6) + (2 + 6) + 10
        assert remote.count_tokens("six seven", history) == expected and not remote.estimates_tokens


def test_an_empty_stream_past_the_window_is_an_error_and_the_window_is_learned():
    """llama-cpp-python answers 200 and closes the stream at once when the prompt is past n_ctx (item 1)."""
    history = [(f"question {i} " + "word " * 60, f"answer {i} " + "word " * 60) for i in range(6)]
    with fake_server("empty", window=1024, **LLAMA_CPP_PYTHON) as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        assert remote.context_window == 2048 and remote.window_assumed
        budget = remote.fit_history("And now?", history, 100)
        assert not budget.dropped  # by the assumed window, everything fits
        with pytest.raises(RemoteBackendError, match=r"closed the stream without a reply .*window is 1024 tokens"):
            list(remote.stream_chat("And now?", budget.history, max_new_tokens=budget.max_new_tokens))
        assert (remote.context_window, remote.window_assumed) == (1024, False)
        # The next try leaves out old turns until the server's own count fits its window.
        budget = remote.fit_history("And now?", history, 100)
        assert budget.dropped and fake.prompt_tokens(remote.messages("And now?", budget.history)) + 100 <= 1024
        assert budget.prompt_tokens >= fake.prompt_tokens(remote.messages("And now?", budget.history))


def test_a_stream_ended_without_finish_reason_is_cut_or_an_error():
    """llama-cpp-python ends a reply with [DONE] alone when another request interrupts it (item 2)."""
    with fake_server("cut", **LLAMA_CPP_PYTHON) as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        stats = GenerationStats()
        assert last(remote.stream_chat("hi", [], stats=stats)) == "Hello there," and stats.finish_reason == "cut"
        fake.scenario = "interrupted"
        with pytest.raises(RemoteBackendError, match="interrupted it .*--api-serial"):
            remote.chat("hi")


def test_a_dropped_stream_is_an_error_after_the_text_that_came():
    with fake_server("drop") as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        received = []
        with pytest.raises(RemoteBackendError, match="broke off the reply after 11 characters"):
            for text in remote.stream_chat("hi", []):
                received.append(text)
        assert received[-1] == "Hello there"


def test_stop_hangs_up_before_the_first_byte():
    """Stop cancels the request at once, though the server has not answered a byte (item 4)."""
    with fake_server("slow") as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        stop, stats = threading.Event(), GenerationStats()
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        assert list(remote.stream_chat("hi", [], stats=stats, stop=stop)) == []
        assert time.monotonic() - started < 1.0 and stats.finish_reason == "stopped"
        deadline = time.monotonic() + 2
        while fake.hung_up_at is None:
            assert time.monotonic() < deadline, "the server never saw the client hang up"
            time.sleep(0.05)


@pytest.mark.parametrize(("server", "serial", "at_once"), [
    (LLAMA_CPP_PYTHON, False, 1),  # detected: llama-cpp-python answers one request at a time
    ({"card": {"id": "m", "object": "model", "owned_by": "vllm", "max_model_len": 4096}}, True, 1),  # --api-serial
    ({"card": {"id": "m", "object": "model", "owned_by": "vllm", "max_model_len": 4096}}, False, 2),  # batches
], ids=["detected", "api-serial", "batching"])
def test_a_serial_server_gets_one_request_at_a_time_and_the_rest_wait_here(server, serial, at_once):
    with fake_server("slow_words", **server) as fake:
        remote = RemoteChatModel.connect(fake.api_base, serial=serial)
        stats = [GenerationStats(), GenerationStats()]
        replies, seen_waiting = {}, []

        def ask(index):
            replies[index] = last(remote.stream_chat("hi", [], stats=stats[index]))

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        time.sleep(0.1)
        second = threading.Thread(target=ask, args=(1,))
        second.start()
        while second.is_alive():
            seen_waiting.append((stats[1].waiting, stats[1].queue_ahead))
            time.sleep(0.02)
        first.join(10)
        assert replies == {0: "Hello there, friend.", 1: "Hello there, friend."}
        assert fake.most_at_once == at_once
        assert ((True, 0) in seen_waiting) == (at_once == 1)


def test_no_empty_system_prompt_is_sent():
    with fake_server("complete", card={"id": "internlm2_5-7b-chat", "object": "model"}) as fake:
        remote = RemoteChatModel.connect(fake.api_base)
        for meta, roles in (("", ["user"]), (None, ["user"]), ("  ", ["user"]), ("Be brief.", ["system", "user"])):
            remote.chat("hi", [], meta)
            assert [m["role"] for m in fake.bodies[-1]["messages"]] == roles


def run_page(api_base: str, monkeypatch, *flags: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [APP, "--api-base", api_base, *flags])
    app = AppTest.from_file(APP, default_timeout=60).run()
    assert not app.exception
    return app


def send_and_wait(app: AppTest, text: str) -> None:
    app.chat_input[0].set_value(text).run()
    deadline = time.monotonic() + 30
    while app.session_state["conversation"].pending is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        app.run()


def test_page_disables_what_the_server_cannot_do_and_says_the_window_is_assumed(monkeypatch):
    with fake_server("complete", card={"id": "gpt-x", "object": "model", "owned_by": "openai"}) as fake:
        app = run_page(fake.api_base, monkeypatch)
        for name in ("top_k", "repetition_penalty"):
            slider = app.slider(key=f"param_{name}")
            assert slider.disabled and f"OpenAI-compatible server at {fake.api_base} has no such setting" in slider.help
        assert not app.slider(key="param_top_p").disabled
        captions = [caption.value for caption in app.sidebar.caption]
        assert any("4096 tokens is assumed" in c and "--api-context-window" in c for c in captions)
        assert any("estimates" in c for c in captions)
        send_and_wait(app, "hi")
        assert app.session_state["conversation"].messages[-1].content == "Hello there, friend."
        assert "top_k" not in fake.bodies[-1] and "repetition_penalty" not in fake.bodies[-1]
        assert [m["role"] for m in fake.bodies[-1]["messages"]] == ["user"]  # the empty system prompt is not sent


def test_page_learns_the_window_from_an_empty_stream_and_the_next_send_fits(monkeypatch):
    """Item 1 as a user meets it: the failed reply puts the question back, the meter takes the server's window."""
    with fake_server("empty", window=1024, **LLAMA_CPP_PYTHON) as fake:
        app = run_page(fake.api_base, monkeypatch)
        long_turns = [chat.Message(role, f"{role} {i} " + "word " * 120) for i in range(3) for role in ("user", "assistant")]
        app.session_state["conversation"].messages.extend(long_turns)
        app.run()
        send_and_wait(app, "And now?")
        conversation = app.session_state["conversation"]
        assert len(conversation.messages) == 6 and "window is 1024 tokens" in conversation.notice.detail
        assert app.chat_input[0].value == "And now?"  # the question is back in the message box
        assert " of 1024 tokens used" in app.sidebar.get("progress")[0].proto.text
        assert app.slider(key="param_max_length").max == 1024
        assert not any("assumed" in caption.value for caption in app.sidebar.caption)
        fake.scenario = "complete"
        send_and_wait(app, "And now?")
        assert conversation.messages[-1].content == "Hello there, friend."
        assert fake.prompt_tokens(fake.bodies[-1]["messages"]) + fake.bodies[-1]["max_tokens"] <= 1024


def test_page_keeps_a_cut_reply_marked_and_the_text_before_a_failure(monkeypatch):
    with fake_server("cut", **LLAMA_CPP_PYTHON) as fake:
        app = run_page(fake.api_base, monkeypatch)
        send_and_wait(app, "hi")
        assert app.session_state["conversation"].messages[-1].cut
        assert any("cut off" in caption.value for caption in app.main.caption)
        fake.scenario = "drop"
        send_and_wait(app, "again")
        notice = app.session_state["conversation"].notice
        assert notice.kind == "error" and notice.partial == "Hello there" and "broke off" in notice.detail
        assert any(markdown.value == "Hello there" for markdown in app.main.markdown)
        assert app.chat_input[0].value == "again"
