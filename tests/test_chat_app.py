"""apps/chat.py driven by Streamlit's AppTest: the real page, real models, real generation on the CPU.

Expected greedy replies come from the golden fixture (what the original remote code answered) or from
transformers' own ``generate``; sampled ones from the same model folder asked directly with the
parameters the test set in the sidebar, so a page that dropped or changed a parameter, a turn or a
seed produces a different reply.
"""

from __future__ import annotations

import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from internlm_demo import load_chat_model
from internlm_demo.models.loading import DEMO_MODEL_ID
from internlm_demo.ui.conversation import ChatParams
from internlm_demo.ui.conversation import send as chat_send
from internlm_demo.ui.markdown import display_markdown
from tests.conftest import FIXTURES_DIR, REPO, reference, streamed

APP = str(REPO / "apps" / "chat.py")
# Random weights over a 103k vocabulary almost never pick EOS: replies run to max new tokens,
# slowly enough on a CPU to be watched and stopped.
LONG_REPLY_MODEL = FIXTURES_DIR / "internlm-chat-7b-tiny"
SMALL_WINDOW_MODEL = FIXTURES_DIR / "internlm-chat-20b-tiny"  # max_position_embeddings 64
WAIT_S = 90


@pytest.fixture(scope="module")
def demo_model():
    return load_chat_model(DEMO_MODEL_ID, progress=False)


@pytest.fixture(scope="module")
def long_reply_model():
    return load_chat_model(LONG_REPLY_MODEL, progress=False)


@pytest.fixture(scope="module")
def small_window_model():
    return load_chat_model(SMALL_WINDOW_MODEL, progress=False)


@pytest.fixture
def open_app(monkeypatch):
    """Start the page as ``streamlit run apps/chat.py -- FLAGS`` would (flags go through sys.argv)."""

    def open_with(*flags: str) -> AppTest:
        monkeypatch.setenv("INTERNLM_DEMO_MODEL", DEMO_MODEL_ID)  # what "no --model" starts on in these tests
        monkeypatch.setattr(sys, "argv", [APP, *map(str, flags)])
        app = AppTest.from_file(APP, default_timeout=60)
        return app.run()

    return open_with


@pytest.fixture
def downloads(monkeypatch):
    """What the page hands to its download buttons, as a browser would receive it: [(file name, bytes)]."""
    served = []
    original_add = MediaFileManager.add

    def add(self, path_or_data, mimetype, coordinates, file_name=None, is_for_static_download=False):
        if is_for_static_download:
            served.append((file_name, path_or_data))
        return original_add(self, path_or_data, mimetype, coordinates, file_name, is_for_static_download)

    monkeypatch.setattr(MediaFileManager, "add", add)
    return served


def conversation(app: AppTest):
    return app.session_state["conversation"]


def wait_until_idle(app: AppTest) -> AppTest:
    """Re-run the page (as its refresh timer does) until the reply is in the history."""
    deadline = time.monotonic() + WAIT_S
    while conversation(app).pending is not None:
        assert time.monotonic() < deadline, "the reply did not finish"
        time.sleep(0.05)
        app.run()
    assert not app.exception
    return app


def streaming_text(bubble) -> str:
    """The text of a streaming bubble without its cursor (Streamlit strips the ends of markdown)."""
    return bubble.markdown[-1].value.removesuffix("▌").strip()


def wait_for_partial_reply(app: AppTest) -> list[str]:
    """Re-run the page until the streaming bubble shows text; returns the texts it showed."""
    shown = []
    deadline = time.monotonic() + WAIT_S
    while True:
        assert time.monotonic() < deadline, "no text was streamed"
        app.run()
        bubble = app.chat_message[-1]
        assert bubble.name == "assistant" and app.button(key="stop") is not None
        shown.append(streaming_text(bubble))
        if shown[-1]:
            return shown
        time.sleep(0.05)


def wait_for_queue_notice(app: AppTest, ahead: int) -> None:
    notice = f"Queued ({ahead} ahead)" if ahead else "Waiting for a free generation slot"
    deadline = time.monotonic() + WAIT_S
    while not any(notice in info.value for info in app.info):
        assert time.monotonic() < deadline, "the page never said it was queued"
        time.sleep(0.05)
        app.run()


def send(app: AppTest, text: str) -> AppTest:
    return app.chat_input[0].set_value(text).run()


def set_params(app: AppTest, **values) -> AppTest:
    for name, value in values.items():
        widget = app.number_input(key="param_seed") if name == "seed" else app.slider(key=f"param_{name}")
        widget.set_value(value)
    return app.run()


def transcript(app: AppTest) -> list[tuple[str, str]]:
    return [(bubble.name, bubble.markdown[0].value) for bubble in app.chat_message]


def transformers_greedy(model, query: str, history, max_new_tokens: int) -> str:
    """The greedy reply as transformers' ``generate`` makes it from the prompt ids, decoded and cut at a stop word."""
    import torch

    ids = model.tokenizer.encode(model.build_prompt(query, history))
    with torch.no_grad():
        output = model.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=sorted(model.stop_ids), pad_token_id=model.tokenizer.eos_id)
    new = [token for token in output[0, len(ids):].tolist()]
    new = new[: next((i for i, token in enumerate(new) if token in model.stop_ids), len(new))]
    return model.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_demo_model_banner_and_defaults(open_app, demo_model):
    app = open_app()
    assert not app.exception
    banner = app.warning[0].value
    assert "demo" in banner.lower() and "random" in banner
    # Commands that work as written from the repository root, as the README gives them.
    assert "`.venv/bin/python download.py internlm2_5-7b-chat`" in banner
    assert "`bash scripts/run.sh chat -- --model internlm2_5-7b-chat`" in banner
    assert app.slider(key="param_top_p").value == 0.8
    assert app.slider(key="param_temperature").value == 0.7  # the original web_demo.py's slider default (v1)
    assert app.slider(key="param_max_length").value == demo_model.context_window
    assert not demo_model.family.has_system_prompt and not app.text_area  # v1 has no system prompt
    model_panel = app.sidebar.markdown[-1].value
    assert "internlm-demo-tiny" in model_panel and "float32" in model_panel and "CPU" in model_panel
    assert "batched engine: torch kernels, 8 slots × 2048 positions" in model_panel


def test_send_streams_and_records_the_reply(open_app):
    """Greedy replies on the v1 fixture are the original remote code's (the fixture's reference); a later turn
    continues an imported history, as the reference's multi-turn case does."""
    cases = {case["query"]: case for case in reference("internlm-chat-7b-tiny")["chat_cases"]}
    first, later = cases["Hello"], cases["那北京呢？"]
    app = open_app("--model", LONG_REPLY_MODEL)
    set_params(app, seed=7, max_new_tokens=12, temperature=0.0)
    send(app, "Hello")
    assert transcript(app)[0] == ("user", "Hello")
    wait_until_idle(app)
    assert [role for role, _ in transcript(app)] == ["user", "assistant"]
    assert conversation(app).messages[1].content == first["greedy"]["response"]
    assert conversation(app).messages[1].seed == 7 and not conversation(app).messages[1].stopped
    app.button(key="clear").click().run()
    history = [{"role": role, "content": text} for turn in later["history"] for role, text in zip(("user", "assistant"), turn)]
    document = {"format": "internlm-demo.conversation", "version": 1, "messages": history,
                "generation": {"max_new_tokens": 12, "temperature": 0.0}}
    app.file_uploader(key="import_file").upload("history.json", json.dumps(document).encode(), "application/json").run()
    wait_until_idle(send(app, "那北京呢？"))
    assert conversation(app).messages[-1].content == later["greedy"]["response"]
    stats = conversation(app).last_stats
    assert stats.new_tokens == len(later["greedy"]["output_ids"])
    panel = app.sidebar.markdown[-1].value
    assert f"{stats.tokens_per_s:.1f}" in panel and f"{stats.time_to_first_token_s * 1000:.0f} ms" in panel
    assert not app.chat_input[0].proto.disabled


def test_streaming_shows_growing_text_then_stop_keeps_the_partial_reply(open_app, long_reply_model):
    app = open_app("--model", LONG_REPLY_MODEL)
    set_params(app, seed=3)
    query = "Write a long story, please. 请写一个长故事。"
    send(app, query)
    assert app.chat_input[0].proto.disabled  # one message at a time
    params = ChatParams.defaults_for(long_reply_model)
    assert not chat_send(conversation(app), long_reply_model, params, "a second message mid-reply")  # not taken
    assert [m.content for m in conversation(app).messages] == [query]
    shown = wait_for_partial_reply(app)
    app.run()
    shown.append(streaming_text(app.chat_message[-1]))
    assert all(later.startswith(earlier) for earlier, later in pairwise(shown))  # the text only grows

    app.button(key="stop").click().run()
    wait_until_idle(app)
    reply = conversation(app).messages[-1]
    generated = conversation(app).last_stats.new_tokens
    assert reply.role == "assistant" and reply.stopped and reply.seed == 3
    assert 0 < generated < app.slider(key="param_max_new_tokens").value
    assert display_markdown(reply.content).strip().startswith(shown[-1])
    # The same seed gives the same first tokens: the kept text is exactly what had been generated.
    whole_so_far, _ = long_reply_model.chat(query, [], max_new_tokens=generated, temperature=0.7, top_p=0.8, seed=3)
    assert reply.content and whole_so_far.startswith(reply.content)
    assert "(stopped)" in [caption.value for caption in app.caption]
    assert [role for role, _ in transcript(app)] == ["user", "assistant"]

    # The history stays usable: the next turn is sent with the partial reply as its history. Expected:
    # transformers' own greedy generate on the prompt with that history (not the engine the page uses).
    set_params(app, max_new_tokens=6, temperature=0.0)
    send(app, "Go on.")
    wait_until_idle(app)
    assert conversation(app).messages[-1].content == transformers_greedy(long_reply_model, "Go on.",
                                                                         [(query, reply.content)], 6)
    assert [role for role, _ in transcript(app)] == ["user", "assistant", "user", "assistant"]


def test_parameter_changes_reach_generation(open_app, demo_model):
    query = "Explain $e^{i\\pi}+1=0$ in one line."
    sampled = {"max_new_tokens": 24, "temperature": 1.3, "top_p": 0.5, "top_k": 20, "repetition_penalty": 1.2}
    with_seed_5 = streamed(demo_model, query, [], seed=5, **sampled)
    with_seed_6 = streamed(demo_model, query, [], seed=6, **sampled)
    with_defaults = streamed(demo_model, query, [], seed=5, max_new_tokens=24, temperature=0.7, top_p=0.8)
    greedy = streamed(demo_model, query, [], max_new_tokens=24, do_sample=False)
    assert len({with_seed_5, with_seed_6, with_defaults, greedy}) == 4  # each setting changes this reply

    app = open_app()
    set_params(app, seed=5, **sampled)
    wait_until_idle(send(app, query))
    assert conversation(app).messages[-1].content == with_seed_5

    app.button(key="clear").click().run()
    set_params(app, temperature=0.0)
    wait_until_idle(send(app, query))
    assert conversation(app).messages[-1].content == greedy


def test_regenerate_replaces_the_last_reply(open_app, demo_model):
    app = open_app()
    set_params(app, max_new_tokens=16)  # seed left empty: a fresh seed per reply, recorded on it
    wait_until_idle(send(app, "Hello!"))
    first = conversation(app).messages[-1]
    app.button(key="regenerate").click().run()
    wait_until_idle(app)
    second = conversation(app).messages[-1]
    assert len(conversation(app).messages) == 2 and second.seed != first.seed
    for reply in (first, second):
        expected = streamed(demo_model, "Hello!", [], max_new_tokens=16, temperature=0.7, top_p=0.8, seed=reply.seed)
        assert reply.content == expected
    assert transcript(app)[1] == ("assistant", display_markdown(second.content).strip())  # markdown is stripped


def test_clear_forgets_the_history(open_app, demo_model):
    app = open_app()
    set_params(app, max_new_tokens=8)
    wait_until_idle(send(app, "one"))
    wait_until_idle(send(app, "two"))
    assert len(app.chat_message) == 4
    app.button(key="clear").click().run()
    assert not app.chat_message and conversation(app).messages == []
    empty_prompt = demo_model.count_tokens("", [])
    assert app.sidebar.get("progress")[0].proto.text.startswith(f"{empty_prompt} of")  # the meter is back at zero


def test_latex_is_rendered_and_code_left_alone(open_app):
    app = open_app()
    set_params(app, max_new_tokens=4)
    wait_until_idle(send(app, r"Why is \(e^{i\pi}=-1\)? And \[x^2\] vs `re.compile(r'\(x\)')`"))
    assert transcript(app)[0] == ("user", r"Why is $e^{i\pi}=-1$? And $$x^2$$ vs `re.compile(r'\(x\)')`")
    assert conversation(app).messages[0].content.startswith(r"Why is \(e")  # the history keeps what was typed


def test_empty_message_is_ignored(open_app):
    app = open_app()
    for blank in ("", "   ", "\n\t"):
        send(app, blank)
        assert not app.exception and not app.chat_message and conversation(app).pending is None
        assert not app.error


def test_export_then_import_round_trip(open_app, demo_model, downloads):
    app = open_app()
    settings = {"seed": 11, "max_new_tokens": 20, "temperature": 0.3, "top_k": 40, "repetition_penalty": 1.1}
    set_params(app, **settings)
    wait_until_idle(send(app, "第一个问题 first question"))
    wait_until_idle(send(app, "second **question**"))
    exported_history = [(m.role, m.content) for m in conversation(app).messages]
    downloads.clear()
    app.run()
    name, data = downloads[-1]
    assert name == "conversation-internlm-demo-tiny.json"
    document = json.loads(data)
    assert [(m["role"], m["content"]) for m in document["messages"]] == exported_history
    assert all(m["seed"] == 11 for m in document["messages"][1::2])
    assert {k: document["generation"][k] for k in settings} == settings
    assert document["model"]["id"] == "internlm-demo-tiny" and "folder" not in document["model"]
    assert str(demo_model.info.folder) not in data.decode() and str(Path.home()) not in data.decode()  # no local paths
    assert {"python", "torch", "transformers", "streamlit"} <= set(document["libraries"])

    fresh = open_app()
    fresh.file_uploader(key="import_file").upload("conversation.json", data, "application/json").run()
    assert not fresh.exception
    assert [(bubble.name, bubble.markdown[0].value) for bubble in fresh.chat_message] == [
        (role, content) for role, content in transcript(app)]
    assert [(m.role, m.content) for m in conversation(fresh).messages] == exported_history
    for name, value in settings.items():
        widget = fresh.number_input(key="param_seed") if name == "seed" else fresh.slider(key=f"param_{name}")
        assert widget.value == value
    assert "internlm-demo-tiny" in fresh.success[0].value

    # Continuing the imported conversation sends its history with its settings.
    wait_until_idle(send(fresh, "third"))
    history = list(zip([c for r, c in exported_history[0::2]], [c for r, c in exported_history[1::2]]))
    expected = streamed(demo_model, "third", history, max_new_tokens=20, temperature=0.3, top_p=0.8, top_k=40,
                                  repetition_penalty=1.1, seed=11)
    assert conversation(fresh).messages[-1].content == expected


def test_a_reload_with_the_conversation_id_finds_the_conversation(open_app, monkeypatch):
    app = open_app()
    set_params(app, max_new_tokens=4)
    wait_until_idle(send(app, "remember me"))
    conversation_id = app.query_params["c"]
    assert conversation_id and len(conversation_id) >= 16  # a random id, not a counter

    reloaded = AppTest.from_file(APP, default_timeout=60)
    reloaded.query_params["c"] = conversation_id
    reloaded.run()
    assert conversation(reloaded) is conversation(app)
    assert transcript(reloaded) == transcript(app) and transcript(app)[0] == ("user", "remember me")

    app.sidebar.radio[0].set_value("中文").run()
    assert app.query_params["lang"] == "中文"
    in_chinese = AppTest.from_file(APP, default_timeout=60)
    in_chinese.query_params.update(c=conversation_id, lang="中文")
    in_chinese.run()
    assert in_chinese.title[0].value == "书生·浦语 对话" and transcript(in_chinese) == transcript(app)

    stranger = AppTest.from_file(APP, default_timeout=60)
    stranger.query_params["c"] = "no-such-conversation"
    stranger.run()
    assert not stranger.chat_message and stranger.query_params["c"] not in ("no-such-conversation", conversation_id)


def test_import_asks_before_replacing_a_conversation(open_app, downloads):
    source = open_app()
    set_params(source, max_new_tokens=4)
    wait_until_idle(send(source, "from the file"))
    downloads.clear()
    source.run()
    data = downloads[-1][1]

    app = open_app()
    set_params(app, max_new_tokens=4)
    wait_until_idle(send(app, "already here"))
    app.file_uploader(key="import_file").upload("conversation.json", data, "application/json").run()
    assert transcript(app)[0] == ("user", "already here")  # nothing replaced yet
    assert "Replace this conversation?" in app.warning[-1].value and "the 2 message(s) on the page" in app.warning[-1].value
    app.button(key="import_keep").click().run()
    assert transcript(app)[0] == ("user", "already here") and "import_replace" not in [b.key for b in app.button]

    app.file_uploader(key="import_file").upload("again.json", data + b" ", "application/json").run()
    app.button(key="import_replace").click().run()
    assert transcript(app)[0] == ("user", "from the file") and len(app.chat_message) == 2
    assert "internlm-demo-tiny" in app.success[0].value


@pytest.mark.parametrize(("content", "complaint"), [
    (b"{not json", "not valid JSON"),
    (b'{"format": "something-else", "version": 1, "messages": []}', "not a conversation exported by this app"),
    (json.dumps({"format": "internlm-demo.conversation", "version": 1, "messages": [
        {"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}).encode(), "message 1 has role"),
    (json.dumps({"format": "internlm-demo.conversation", "version": 1, "messages": [],
                 "generation": {"top_p": 7}}).encode(), '"top_p" is 7'),
    (json.dumps({"format": "internlm-demo.conversation", "version": 9, "messages": []}).encode(), "version 9"),
])
def test_import_refuses_bad_files_and_keeps_the_history(open_app, content, complaint):
    app = open_app()
    set_params(app, max_new_tokens=8)
    wait_until_idle(send(app, "keep me"))
    before = [(m.role, m.content) for m in conversation(app).messages]
    app.file_uploader(key="import_file").upload("bad.json", content, "application/json").run()
    assert not app.exception
    assert complaint in app.error[0].value
    assert [(m.role, m.content) for m in conversation(app).messages] == before


def test_dropped_turns_are_named(open_app, small_window_model):
    app = open_app("--model", SMALL_WINDOW_MODEL)
    window = small_window_model.context_window
    max_new = app.slider(key="param_max_new_tokens").value
    set_params(app, seed=1)
    first = "Tell me something about the sea."
    wait_until_idle(send(app, first))
    first_reply = conversation(app).messages[-1].content
    second = "And about mountains?"
    budget = small_window_model.fit_history(second, [(first, first_reply)], max_new, None, window)
    assert budget.dropped == [0]  # precondition: this window cannot hold both turns

    wait_until_idle(send(app, second))
    notice = app.info[0].value
    assert "this reply was generated without turn 1 of the conversation" in notice
    expected = streamed(small_window_model, second, budget.history, max_new_tokens=budget.max_new_tokens,
                                          temperature=0.7, top_p=0.8, seed=1)
    assert conversation(app).messages[-1].content == expected
    assert len(app.chat_message) == 4  # dropped from the prompt, not from the page


def test_message_too_long_for_the_window_is_refused_and_kept(open_app, small_window_model):
    app = open_app("--model", SMALL_WINDOW_MODEL)
    set_params(app, max_new_tokens=8)
    wait_until_idle(send(app, "hi"))
    before = [(m.role, m.content) for m in conversation(app).messages]
    too_long = "这是一条非常长的消息。" * 12 + " and some English words to go with it"
    tokens = small_window_model.count_tokens(too_long, [])
    assert tokens >= small_window_model.context_window  # precondition

    send(app, too_long)
    assert not app.exception and conversation(app).pending is None
    assert f"it is {tokens} tokens" in app.error[0].value
    assert f"budget is {small_window_model.context_window} tokens" in app.error[0].value
    assert app.chat_input[0].proto.value == too_long and app.chat_input[0].proto.set_value  # back in the box
    assert [(m.role, m.content) for m in conversation(app).messages] == before
    assert not app.chat_input[0].proto.disabled


def test_max_length_is_the_token_budget(open_app, demo_model):
    message = "The max length slider bounds prompt and reply together. " * 3
    tokens = demo_model.count_tokens(message, [])
    assert 40 <= tokens < demo_model.context_window  # precondition: fits the model, not a 40-token budget
    app = open_app()
    set_params(app, max_length=40, max_new_tokens=8)
    send(app, message)
    assert f"it is {tokens} tokens" in app.error[0].value and "budget is 40 tokens" in app.error[0].value
    assert not conversation(app).messages

    set_params(app, max_length=tokens + 3)  # room for three new tokens only
    wait_until_idle(send(app, message))
    assert conversation(app).last_stats.prompt_tokens == tokens
    assert conversation(app).last_stats.new_tokens <= 3


def test_model_load_failure_shows_the_fix(open_app, tmp_path):
    app = open_app("--model", tmp_path)  # an empty folder
    assert not app.exception
    assert "could not be loaded" in app.error[0].value and "config.json" in app.error[0].value
    assert "download.py" in app.info[0].value
    assert not app.chat_input

    app = open_app("--model", "no-such-model")
    assert not app.exception and "neither a folder nor a known model id" in app.error[0].value

    app = open_app("--num-gpus", "two")
    assert not app.exception and "not accepted" in app.error[0].value and "bash scripts/run.sh chat --" in app.error[0].value
    assert "argument --num-gpus: invalid int value: 'two'" in app.code[0].value
    app = open_app("--help")
    assert not app.exception and "--api-base" in app.code[0].value


def test_a_wrong_model_folder_is_explained_in_the_page_language(monkeypatch, tmp_path):
    """An empty folder and one with only config.json: the 中文 page says why in Chinese (paths as they are), the
    English page today's words."""
    def page(folder, language):
        monkeypatch.setattr(sys, "argv", [APP, "--model", str(folder)])
        app = AppTest.from_file(APP, default_timeout=60)
        app.query_params["lang"] = language
        app.run()
        assert not app.exception and not app.chat_input
        return app.error[0].value

    empty, config_only = tmp_path / "empty", tmp_path / "config-only"
    empty.mkdir()
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "internlm2"}))

    chinese = page(empty, "中文")
    assert chinese.startswith("**模型加载失败。**") and f"{empty / 'config.json'} 不存在" in chinese
    assert "这看起来不是模型文件夹（请传入包含 config.json 的文件夹）" in chinese and "does not look like" not in chinese
    assert page(empty, "English") == (f"**The model could not be loaded.**\n\n{empty / 'config.json'} is missing: this "
                                      "does not look like a model folder (pass the folder that holds config.json).")
    chinese = page(config_only, "中文")
    assert f"{config_only / 'tokenizer.model'} 不存在；请重新下载模型（分词器是模型的一部分）。" in chinese
    assert "re-download" not in chinese
    assert page(config_only, "English").endswith(
        f"{config_only / 'tokenizer.model'} is missing; re-download the model (the tokenizer is part of it).")


def test_concurrent_sessions_stream_at_once_and_stopping_one_leaves_the_other_running(open_app):
    first, second = open_app("--model", LONG_REPLY_MODEL), open_app("--model", LONG_REPLY_MODEL)
    send(first, "first session's question")
    send(second, "second session's question")
    wait_for_partial_reply(first)
    wait_for_partial_reply(second)  # both stream at once: the engine gives each a slot
    first.button(key="stop").click().run()
    wait_until_idle(first)
    before = wait_for_partial_reply(second)[-1]
    assert conversation(second).pending.state == "generating"
    deadline = time.monotonic() + WAIT_S
    while streaming_text(second.chat_message[-1]) == before:  # still running after the other one stopped
        assert time.monotonic() < deadline, "the second reply stopped growing"
        time.sleep(0.05)
        second.run()
    second.button(key="stop").click().run()
    wait_until_idle(second)
    assert transcript(first)[0][1] == "first session's question"
    assert transcript(second)[0][1] == "second session's question"
    assert len(first.chat_message) == len(second.chat_message) == 2
    assert conversation(first).messages[-1].stopped and conversation(second).messages[-1].stopped


def test_queued_sessions_see_their_place_and_a_stop_while_queued_keeps_history_consistent(open_app):
    """On the simple path (one generation at a time) later sessions wait in line and say where they are."""
    apps = [open_app("--model", LONG_REPLY_MODEL, "--engine", "simple") for _ in range(3)]
    first, second, third = apps
    send(first, "first session's question")
    wait_for_partial_reply(first)  # the first session holds the only turn
    send(second, "second session's question")
    wait_for_queue_notice(second, 0)
    send(third, "third session's question")
    wait_for_queue_notice(third, 1)

    third.button(key="stop").click().run()
    wait_until_idle(third)
    assert conversation(third).messages == [] and not third.chat_message  # no empty "(stopped)" reply
    assert third.chat_input[0].proto.value == "third session's question"  # the question is back in the box

    first.button(key="stop").click().run()
    wait_until_idle(first)
    wait_for_partial_reply(second)  # the turn passed to the waiting session
    second.button(key="stop").click().run()
    wait_until_idle(second)
    for app, question in zip(apps[:2], ("first", "second")):
        assert transcript(app)[0][1] == f"{question} session's question"
        assert len(app.chat_message) == 2


def test_language_toggle_keeps_settings(open_app):
    app = open_app()
    set_params(app, temperature=0.42)
    app.sidebar.radio[0].set_value("中文").run()
    assert app.title[0].value == "书生·浦语 对话"
    assert app.slider(key="param_temperature").value == 0.42
    assert app.slider(key="param_temperature").label.startswith("温度")
    assert "演示模型" in app.warning[0].value


def test_bad_flags_are_shown_on_the_page_and_leave_sys_stdout_alone(open_app):
    stdout, stderr = sys.stdout, sys.stderr
    app = open_app("--num-gpus", "two")
    assert not app.exception
    assert "invalid int value: 'two'" in app.code[0].value and "--num-gpus" in app.code[0].value
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
