"""The XComposer Gradio app: its handlers called directly, then the running app through gradio_client."""

from __future__ import annotations

import ast
import os
import re
import socket
import stat
import string
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from apps.xcomposer import article_handlers
from apps.xcomposer import chat_handlers as handlers
from apps.xcomposer.app import build_demo, model_provider
from apps.xcomposer.context import ModelProvider
from internlm_demo.errors import LocalizedError
from internlm_demo.settings import Settings
from internlm_demo.i18n import ARTICLE, LANGUAGES, SECTIONS, XCOMPOSER, labels
from internlm_demo.xcomposer import ImageRejectedError, load_xcomposer
from internlm_demo.xcomposer.article import Article, Note, pipeline
from internlm_demo.xcomposer.prompts import conversation_prompt
from tests.conftest import FIXTURES_DIR, REPO, last
from tests.servers import free_port

IMAGE = str(FIXTURES_DIR / "xcomposer-test-image.png")
QUICK = {"max_output_tokens": 16, "num_beams": 1, "repetition_penalty": 1.0, "do_sample": False}




@pytest.fixture(scope="module")
def provider():
    model = load_xcomposer(None, device="cpu", progress=False)
    return ModelProvider(lambda: model)


def test_handlers_keep_the_conversation_the_model_sees(provider):
    session = handlers.new_session()
    display, session, box = handlers.add_message(provider, {"text": "What is this?", "files": [IMAGE]}, session)
    assert box == handlers.EMPTY_MESSAGE and [m["role"] for m in display] == ["user", "user"]
    assert session.exchanges[0].image is not None and session.exchanges[0].response is None
    display, session = last(handlers.answer(provider, session, *QUICK.values()))
    first_reply = session.exchanges[0].response
    assert display[-1] == {"role": "assistant", "content": first_reply or "…"}
    _, session, _ = handlers.add_message(provider, {"text": "And the colours?", "files": []}, session)
    display, session = last(handlers.answer(provider, session, *QUICK.values()))
    prompt = conversation_prompt(session.exchanges)
    assert prompt.count("<Img><ImageHere></Img>") == 1 and prompt.endswith("<TOKENS_UNUSED_1>")
    assert "What is this?" in prompt and "And the colours?" in prompt and len(display) == 5

    display, session = handlers.regenerate(session)
    assert session.exchanges[-1].response is None and display[-1]["role"] == "user"
    display, session = last(handlers.answer(provider, session, *QUICK.values()))
    assert len(display) == 5 and session.exchanges[0].response == first_reply


def test_handlers_turn_a_bad_image_into_a_chat_message(provider, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("not really a photo")
    session = handlers.new_session()
    display, session, box = handlers.add_message(provider, {"text": "Look!", "files": [str(fake)]}, session)
    assert display[-1]["role"] == "assistant" and "holiday.png is not an image" in display[-1]["content"]
    assert session.exchanges == [] and box == {"text": "Look!", "files": []}, "the text stays for a retry"
    assert last(handlers.answer(provider, session, *QUICK.values())) == (display, session), "nothing to answer"
    chinese, _, _ = handlers.add_message(provider, {"text": "看！", "files": [str(fake)]}, handlers.new_session(), "中文")
    assert chinese[-1]["content"] == "✗ " + XCOMPOSER["error_image_unreadable"][1].format(name="holiday.png")
    assert "不是本应用能读取的图片" in chinese[-1]["content"] and "not an image" not in chinese[-1]["content"]


def test_a_message_that_cannot_fit_the_window_is_explained(provider):
    session = handlers.new_session()
    _, session, _ = handlers.add_message(provider, {"text": "word " * 3000, "files": []}, session)
    display, session = last(handlers.answer(provider, session, *QUICK.values()))
    assert "context window" in display[-1]["content"] and session.exchanges == []
    _, session, _ = handlers.add_message(provider, {"text": "word " * 3000, "files": []}, session, "中文")
    display, session = last(handlers.answer(provider, session, *QUICK.values(), "中文"))
    assert "上下文窗口" in display[-1]["content"] and "context window" not in display[-1]["content"]


def test_stop_ends_one_sessions_reply_and_leaves_the_others_running(provider):
    """Two browser sessions write beam-search replies at once on the engine; Stop in one keeps what it wrote."""
    settings = (300, 3, 1.0, False, "English")  # random weights: runs to the length limit unless stopped
    sessions = []
    for name in ("first", "second"):
        _, session, _ = handlers.add_message(provider, {"text": f"Tell me a long story, {name}.", "files": []},
                                             handlers.new_session())
        sessions.append(session)
    alone = last(handlers.answer(provider, sessions[1], *settings))[1].exchanges[-1].response
    first = handlers.answer(provider, sessions[0], *settings, SimpleNamespace(session_hash="first"))
    second = handlers.answer(provider, sessions[1], *settings, SimpleNamespace(session_hash="second"))
    shown = [next(first), next(second), next(first), next(second)]
    handlers.stop_reply(SimpleNamespace(session_hash="first"))
    stopped = list(first)
    display, session = stopped[-1]
    reply = session.exchanges[-1].response
    assert len(stopped) <= 3 and reply and display[-1] == {"role": "assistant", "content": reply}
    assert reply.startswith(shown[2][0][-1]["content"].removesuffix(handlers.CURSOR))
    assert last(second)[1].exchanges[-1].response == alone  # the other session went on to the end
    assert handlers.RUNNING_REPLIES == {}
    _, session, _ = handlers.add_message(provider, {"text": "Go on.", "files": []}, session)
    assert last(handlers.answer(provider, session, *QUICK.values()))[1].exchanges[-1].response is not None


def test_switching_language_relabels(provider):
    language, button, banner = handlers.switch_language(provider, "English")
    assert language == "中文" and button["value"] == "English" and "演示模型" in banner
    assert handlers.relabel_chat_tab(language)[-1]["value"] == labels("中文", "xcomposer")("clear")


def test_handler_messages_follow_the_language(provider, tmp_path):
    tab = article_handlers.ArticleTab(provider)
    assert "索引：" in article_handlers.index_gallery(tab, "", "中文", progress=lambda *args, **kwargs: None)[0]
    article = Article("标题", ["第一段", "第二段"], str(tmp_path))
    assert article_handlers.delete_section_image(article, 1, "中文")[1] == "第 2 段已更新。"
    assert article_handlers.delete_section_image(article, 1)[1] == "Section 2 updated."


def test_domain_errors_and_the_gallery_status_follow_the_language(provider, tmp_path):
    """An edit refused, a missing gallery folder, an empty gallery: 中文 on the Chinese page, today's English else."""
    article = Article("标题", ["第一段", "第二段"], str(tmp_path))
    chinese = article_handlers.edit_section_text(article, 0, "  ", "中文")[1]
    assert chinese == "✗ " + ARTICLE["error_empty_section"][1].format(section=1)
    assert "不能为空" in chinese and "cannot be empty" not in chinese
    english = article_handlers.edit_section_text(article, 0, "  ", "English")[1]
    assert english == "✗ Section 1 cannot be empty; type its text (or keep the old one)."

    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    tab = article_handlers.ArticleTab(provider, (str(missing), str(empty)))
    quiet = {"progress": lambda *args, **kwargs: None}
    chinese, missing_said = article_handlers.index_gallery(tab, str(missing), "中文", **quiet)
    assert chinese == "✗ " + ARTICLE["error_gallery_missing"][1].format(root=missing)
    assert "不存在" in chinese and "does not exist" not in chinese
    english = article_handlers.index_gallery(tab, str(missing), **quiet)[0]
    assert "does not exist; create it and put images in it" in english

    chinese = article_handlers.index_gallery(tab, str(empty), "中文", **quiet)[0]
    assert "中没有图片" in ARTICLE["gallery_no_images"][1] and "中没有图片" in chinese and "索引：沿用 0 张" in chinese
    assert "has no images" not in chinese and "reused" not in chinese
    english, empty_said = article_handlers.index_gallery(tab, str(empty), **quiet)
    assert english.startswith(f"The gallery {empty} has no images (") and "Index: 0 reused, 0 added" in english
    # A language switch words the status line again: the Chinese line as the Chinese page showed it, and back.
    relabelled = article_handlers.relabel(tab, "中文", None, empty_said)[-1]
    assert "中没有图片" in relabelled and "索引：沿用 0 张" in relabelled and "has no images" not in relabelled
    assert article_handlers.relabel(tab, "English", None, missing_said)[-1] == (
        f"✗ The gallery folder {missing} does not exist; create it and put images in it, or choose another folder.")
    assert article_handlers.relabel(tab, "中文", None, None)[-1] == ""
    settings = (1, 1.0, 16, True, False)  # beams, repetition penalty, max output tokens, model selects, sampling
    refused = last(article_handlers.write_article(tab, "又见敦煌", *settings, str(empty), "中文", **quiet))[1]
    assert "中没有图片" in refused and "请往图库里放些图片" in refused and "Put some images" not in refused
    refused = last(article_handlers.write_article(tab, "又见敦煌", *settings, str(empty), **quiet))[1]
    assert "has no images" in refused and "Put some images in it (subfolders count)" in refused


def test_a_wrong_model_folder_is_explained_in_the_page_language(tmp_path):
    """A chat model's folder given to XComposer: the banner, the chat tab and the article tab say why in Chinese on
    the 中文 page and in today's English otherwise; the command line says it in English."""
    folder = tmp_path / "chat-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "internlm2"}')
    config = folder / "config.json"
    english = (f"{config} has model_type 'internlm2', not 'InternLMXComposer': this is not an InternLM-XComposer v1 "
               "folder (chat models open in the chat apps; XComposer2 is not supported).")
    chinese = f"{config} 的 model_type 为 'internlm2'，而不是 'InternLMXComposer'：这不是 InternLM-XComposer v1 的文件夹"
    provider = model_provider(Settings.parse(["--model", str(folder)]))

    assert handlers.model_banner(provider, "中文").startswith(f"**模型无法加载：** {chinese}")
    assert handlers.model_banner(provider) == f"**The model could not be loaded:** {english}"
    for language, expected in (("中文", chinese), ("English", english)):
        _, session, _ = handlers.add_message(provider, {"text": "你好", "files": []}, handlers.new_session(), language)
        display, _ = last(handlers.answer(provider, session, *QUICK.values(), language))
        assert display[-1]["content"].startswith(f"✗ {expected}")
        status = article_handlers.index_gallery(article_handlers.ArticleTab(provider), "", language,
                                                progress=lambda *args, **kwargs: None)[0]
        assert status.startswith(f"✗ {expected}")
        written = last(article_handlers.write_article(article_handlers.ArticleTab(provider), "又见敦煌", 1, 1.0, 16, True,
                                                      False, "", language, progress=lambda *args, **kwargs: None))[1]
        assert expected in written
    assert "对话模型请在对话应用中打开；不支持 XComposer2" in handlers.model_banner(provider, "中文")

    from apps.xcomposer.__main__ import main
    with pytest.raises(SystemExit) as exit:
        main(["--model", str(folder), "--port", str(free_port())])
    assert exit.value.code == f"error: {english}"


def test_switching_language_relabels_the_demo_gallery_choice(provider, tmp_path):
    """The gallery dropdown names the generated demo gallery in the page's language; a folder stays its path."""
    def gallery_choices(tab, language):
        return next(update["choices"] for update in article_handlers.relabel(tab, language, None, None)
                    if isinstance(update, dict) and update.get("label") == ARTICLE["gallery"][LANGUAGES.index(language)])

    demo_only = article_handlers.ArticleTab(provider, ())
    assert gallery_choices(demo_only, "中文") == [(ARTICLE["demo_gallery"][1], "")]
    assert gallery_choices(demo_only, "English") == [(ARTICLE["demo_gallery"][0], "")]
    folders = article_handlers.ArticleTab(provider, (str(tmp_path),))
    assert gallery_choices(folders, "中文") == [(str(tmp_path), str(tmp_path))]


def phrases_made() -> tuple[list[tuple[str, str, set[str], str]], list[str]]:
    """(section, key, field names, where) of each LocalizedError raised and each Phrase made with a literal key in
    internlm_demo/ and apps/, and the calls that cannot be checked (a key or fields that are not literals)."""
    classes, pending = {}, [LocalizedError]
    while pending:
        for subclass in pending.pop().__subclasses__():
            classes[subclass.__name__] = subclass
            pending.append(subclass)
    made, unchecked = [], []
    for path in sorted([*(REPO / "internlm_demo").rglob("*.py"), *(REPO / "apps").rglob("*.py")]):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(call, ast.Call):
                continue
            name, where, literal = ast.unparse(call.func).split(".")[-1], f"{path.name}:{call.lineno}", []
            for argument in call.args:
                if not isinstance(argument, ast.Constant):
                    break
                literal.append(argument.value)
            if name in classes:
                if not literal:
                    unchecked.append(where)
                    continue
                section, key, fields = classes[name].section, f"error_{literal[0]}", call.args[1:]
            elif name == "Phrase" and len(literal) >= 2:  # other Phrases pass a key made elsewhere, checked there
                section, key, fields = literal[0], literal[1], call.args[2:]
            else:
                continue
            if fields and not (isinstance(fields[0], ast.Dict) and all(isinstance(k, ast.Constant) for k in fields[0].keys)):
                unchecked.append(where)
                continue
            made.append((section, key, {k.value for k in fields[0].keys} if fields else set(), where))
    return made, unchecked


def test_every_error_text_has_both_languages_and_the_fields_its_raisers_pass():
    """Each error and phrase the code makes names a table entry whose English and 中文 texts take exactly the fields
    passed there (and format with them); every error_* entry is raised somewhere."""
    made, unchecked = phrases_made()
    assert unchecked == [] and len(made) > 40
    problems = []
    for section, key, fields, where in made:
        for text in SECTIONS[section].get(key, (f"missing {key}",)):
            placeholders = {re.split(r"[.[]", name)[0] for _, name, _, _ in string.Formatter().parse(text) if name}
            if placeholders != fields:
                problems.append(f"{where}: {key} passes {sorted(fields)}; {text!r} takes {sorted(placeholders)}")
            text.format(**dict.fromkeys(fields, 1.5))
    assert problems == []
    raised = {(section, key) for section, key, _, _ in made}
    for section in ("article", "xcomposer", "loading"):
        assert {(section, key) for key in SECTIONS[section] if key.startswith("error_")} <= raised, "texts nothing raises"
    assert {("loading", key) for key in SECTIONS["loading"]} <= raised, "loading words nothing uses"


def test_pipeline_notes_follow_the_language(tmp_path):
    """Every note the pipeline writes has a text in both languages, its fields filled in."""
    fields = {"sections_unparsed": {"count": 2}, "too_few_sections": {"asked": 9, "sections": 2, "placed": 2},
              "sections_topped_up": {"named": 1, "wanted": 2},
              "image_rejected": {"section": 2, "error": ImageRejectedError("image_empty", {"name": "(error)"}).phrase},
              "pick_unparsed": {"section": 2}, "gallery_exhausted": {"section": 2}, "caption_missing": {"section": 2}}
    pipeline_source = Path(pipeline.__file__).read_text(encoding="utf-8")
    assert sorted(fields) == sorted(re.findall(r'Note\("(\w+)"', pipeline_source))  # every note the pipeline makes
    article = Article("标题", ["第一段", "第二段"], str(tmp_path), notes=[Note(key, f) for key, f in fields.items()])
    chinese = article_handlers.notes_view(article, "中文").splitlines()
    english = article_handlers.notes_view(article, "English").splitlines()
    assert len(chinese) == len(english) == len(fields)
    assert all(line.startswith("- **提示：**") and not re.search(r"[A-Za-z]{3}", line.replace("(error)", ""))
               for line in chinese)
    assert "9 images were asked for, but the article has only 2 section(s): 2 image(s) placed." in english[1]
    assert "要求配 9 张图，但文章只有 2 段：配了 2 张。" in chinese[1]


@pytest.fixture(scope="module")
def client():
    demo = build_demo(Settings.parse([]))
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def text_of(message: dict) -> str:
    return "".join(part.get("text", "") for part in message["content"] if part.get("type") == "text")


def huge_png(path) -> None:
    """A valid 20000×20000 1-bit PNG of a few kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (2501 * 20000), 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def test_app_uploads_an_image_and_streams_a_reply(client):
    assert "Demo model" in client.predict(api_name="/model_banner")
    chat, box = client.predict(
        {"text": "What is in the picture?", "files": [handle_file(IMAGE)]}, api_name="/add_message"
    )
    assert [m["role"] for m in chat] == ["user", "user"] and chat[0]["content"][0]["type"] == "file"
    assert box == {"text": "", "files": []}
    job = client.submit(*QUICK.values(), api_name="/answer")
    updates = list(job)
    final = job.result()
    assert len(updates) >= 2 and text_of(updates[0][-1]).endswith(handlers.CURSOR)
    reply = text_of(final[-1])
    assert final[-1]["role"] == "assistant" and reply and not reply.endswith(handlers.CURSOR)

    client.predict({"text": "Describe the colours.", "files": []}, api_name="/add_message")
    chat = client.predict(*QUICK.values(), api_name="/answer")
    assert [m["role"] for m in chat] == ["user", "user", "assistant", "user", "assistant"]
    second = text_of(chat[-1])
    assert text_of(chat[2]) == reply and second  # the first reply stays as it was streamed

    chat = client.predict(api_name="/regenerate")
    assert [m["role"] for m in chat] == ["user", "user", "assistant", "user"]
    chat = client.predict(*QUICK.values(), api_name="/answer_again")
    assert len(chat) == 5 and text_of(chat[-1]) == second  # a real rerun: greedy writes the same reply again
    with_sampling = client.predict(api_name="/regenerate") and client.predict(
        QUICK["max_output_tokens"], 1, 1.0, True, api_name="/answer_again")
    assert text_of(with_sampling[2]) == reply and len(with_sampling) == 5  # only the last reply was rewritten

    chat, box = client.predict(api_name="/clear_history")
    assert chat == [] and box == {"text": "", "files": []}


def test_app_stop_ends_the_running_reply(client):
    client.predict({"text": "Tell me a long story.", "files": []}, api_name="/add_message")
    job = client.submit(300, 3, 1.0, False, api_name="/answer")  # ~300 beam steps unless stopped
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2:
        assert time.monotonic() < deadline, "the reply did not start"
        time.sleep(0.05)
    client.predict(api_name="/stop")
    final = job.result(timeout=60)
    reply = text_of(final[-1])
    assert reply and not reply.endswith(handlers.CURSOR)
    assert len(job.outputs()) < 100  # it ended early, keeping what it had written
    client.predict(api_name="/clear_history")


@pytest.mark.parametrize("kind", ["text-as-png", "txt", "corrupt", "huge", "cmyk"])
def test_app_reports_bad_uploads_in_the_chat_and_keeps_working(client, tmp_path, kind):
    client.predict(api_name="/clear_history")
    path = (
        tmp_path
        / {"text-as-png": "a.png", "txt": "notes.txt", "corrupt": "cut.png", "huge": "bomb.png", "cmyk": "print.jpg"}[
            kind
        ]
    )
    if kind in ("text-as-png", "txt"):
        path.write_text("plain text")
    elif kind == "corrupt":
        path.write_bytes(open(IMAGE, "rb").read()[:3000])
    elif kind == "huge":
        huge_png(path)
    else:
        Image.new("CMYK", (80, 60), (200, 0, 0, 0)).save(path)
    chat, box = client.predict({"text": "What is it?", "files": [handle_file(str(path))]}, api_name="/add_message")
    if kind == "cmyk":  # converted, not refused
        assert chat[0]["content"][0]["type"] == "file"
        return
    expected = {"text-as-png": "not an image", "txt": "not an image", "corrupt": "damaged", "huge": "megapixels"}[kind]
    assert chat[-1]["role"] == "assistant" and expected in text_of(chat[-1])
    assert box["text"] == "What is it?"
    assert client.predict(*QUICK.values(), api_name="/answer") == chat, "no reply to a refused upload"
    client.predict({"text": "Hello", "files": []}, api_name="/add_message")
    assert client.predict(*QUICK.values(), api_name="/answer")[-1]["role"] == "assistant"


def test_app_switches_language(client):
    assert "演示模型" in client.predict(api_name="/switch_language")


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_upload_previews_are_private_closed_and_removed_on_clear(provider):
    session = handlers.new_session()
    _, session, _ = handlers.add_message(provider, {"text": "one", "files": [IMAGE]}, session)
    before = open_descriptors()
    for turn in range(5):
        _, session, _ = handlers.add_message(provider, {"text": f"again {turn}", "files": [IMAGE]}, session)
    assert open_descriptors() == before, "each preview left a file descriptor open"
    previews = [Path(m["content"]["path"]) for m in session.display if isinstance(m["content"], dict)]
    assert len(previews) == 6 and all(path.is_file() for path in previews)
    folder = previews[0].parent
    assert folder != Path(tempfile.gettempdir()) / "internlm-demo-xcomposer", "not a fixed folder shared by everyone"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    display, session, _ = handlers.clear_history(session)
    assert display == [] and not any(path.exists() for path in previews)
    # A browser session that is closed instead: Gradio hands its state to the State's delete_callback.
    _, session, _ = handlers.add_message(provider, {"text": "bye", "files": [IMAGE]}, handlers.new_session())
    preview = Path(session.display[0]["content"]["path"])
    states = [block for block in build_demo(Settings(), provider).blocks.values() if isinstance(block, gr.State)]
    callbacks = {state.delete_callback for state in states}
    assert handlers.forget_session in callbacks
    handlers.forget_session(session)
    assert not preview.exists()


def test_the_preview_folder_goes_when_the_app_exits(tmp_path):
    script = ("import sys; from PIL import Image; from apps.xcomposer import chat_handlers as h; "
              "print(h.save_preview(Image.new('RGB', (64, 64)), h.preview_folder()))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    preview = Path(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and preview.suffix == ".png"
    assert not preview.parent.exists()


def test_the_app_asks_nothing_of_any_host_but_this_one(provider, monkeypatch):
    """Gradio's analytics are off unless asked for: starting the app and opening its page reach only 127.0.0.1."""
    attempts = []
    local = {None, "127.0.0.1", "::1", "localhost", "0.0.0.0"}
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in local:
            attempts.append(host)
            raise socket.gaierror(f"{host}: the test allows only 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in local:
            attempts.append(address[0])
            raise OSError(f"{address[0]}: the test allows only 127.0.0.1")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    demo = build_demo(Settings(), provider)
    assert demo.analytics_enabled is False
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).status == 200
        time.sleep(2)  # analytics and version checks run in background threads
    finally:
        demo.close()
    assert attempts == []
