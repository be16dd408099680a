"""The "Write article" tab end to end through gradio_client: a real server, the embedded XComposer, a test gallery."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from internlm_demo.xcomposer.gallery.index import cache_folder_for
from tests.servers import free_port, running_server

TOPICS = {"敦煌 Dunhuang": "murals", "大海 sea": "sunset", "沙漠 desert": "camels"}
LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
# Beam 1 and the slider's smallest length keep the demo model's article short; every stage still runs.
FAST = {"num_beams": 1, "repetition_penalty": 5.0, "max_output_tokens": 100, "model_selects_images": True,
        "do_sample": False}


def build_gallery(root: Path) -> Path:
    for t, (folder, word) in enumerate(TOPICS.items()):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (80, 60), (70 * t, 50 * i, 160)).save(root / folder / f"{word}-{i}.png")
    return root


@contextlib.contextmanager
def running_app(*galleries: Path):
    """``python -m apps.xcomposer --gallery G1:G2:...`` on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    roots = os.pathsep.join(map(str, galleries))
    with running_server([sys.executable, "-m", "apps.xcomposer", "--port", str(port), "--gallery", roots], url,
                        timeout_s=120):
        yield url


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app with its galleries, all set on the command line: the test gallery first, then an empty one, a
    missing one and one with a broken file (the browser can only choose among these)."""
    base = tmp_path_factory.mktemp("app-gallery")
    gallery = build_gallery(base / "gallery")
    (base / "empty").mkdir()
    (base / "mixed").mkdir()
    Image.new("RGB", (20, 20)).save(base / "mixed" / "ok.png")
    (base / "mixed" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with running_app(gallery, base / "empty", base / "missing", base / "mixed") as url:
        yield url, gallery


def write(client: Client, title: str, folder: str):
    """All the updates of one /write_article run, the last one being the result."""
    job = client.submit(title, *FAST.values(), folder, api_name="/write_article")
    job.result(timeout=120)
    return job.outputs()


def gallery_bytes(gallery: Path) -> set[bytes]:
    return {path.read_bytes() for path in gallery.rglob("*.png")}


def test_compose_edit_and_save(app, tmp_path):
    url, gallery = app
    client = Client(url, verbose=False)
    updates = write(client, "又见敦煌", str(gallery))
    status, _, view, section, caption, captions, section_text, candidates = updates[-1]
    assert any("▶ **writing**" in update[0] for update in updates[:-1])  # the stage board streamed
    assert status.startswith("✓ writing · ✓ placing · ✓ captioning · ✓ retrieving · ✓ selecting") and "Done" in status
    assert view.startswith("# 又见敦煌") and "](data:image/jpeg;base64," in view
    assert len(candidates["value"]) >= 1 and candidates["value"][0]["caption"].split(" · ")[1].endswith(".png")
    position = section["value"]
    assert isinstance(position, int) and caption["value"] and section_text["value"] in view
    assert json.loads(captions)[str(position)] == caption["value"]  # what the page fills in at once

    searched = client.predict(position, "sunset at sea 海边日落", str(gallery), api_name="/search_again")
    hits = [item["caption"].split(" · ")[1] for item in searched[7]["value"]]
    assert hits[0].startswith("大海 sea/") and searched[4]["value"] == "sunset at sea 海边日落"

    new_text = "A section rewritten by hand. 手工改写的段落。"
    edited = client.predict(position, new_text + "\nwith a second line", api_name="/edit_section_text")
    assert edited[6]["value"] == new_text + " with a second line" and new_text + " with a second line" in edited[2]
    refused = client.predict(position, "   ", api_name="/edit_section_text")
    assert "cannot be empty" in refused[0] and refused[2] == edited[2]  # the article is unchanged

    deleted = client.predict(position, api_name="/delete_image")
    assert deleted[2].count("](data:") == view.count("](data:") - 1
    added = client.predict(position, str(gallery), api_name="/add_image")
    assert added[2].count("](data:") == view.count("](data:") and added[4]["value"]

    sections = len(added[3]["choices"])
    fixed = client.submit(2, *FAST.values(), str(gallery), api_name="/insert_fixed_images")
    fixed_status, _, fixed_view, *_ = fixed.result(timeout=120)
    assert "Done" in fixed_status and "✓ writing" not in fixed_status  # the article is kept, only images redone
    assert fixed_view.count("](data:") == min(2, sections)

    saved = client.predict(api_name="/save_article")
    with zipfile.ZipFile(saved) as archive:
        markdown = archive.read("article.md").decode("utf-8")
        links = LINK.findall(markdown)
        assert links and set(archive.namelist()) == {"article.md", *links}
        assert all(not link.startswith(("/", "data:")) for link in links)
        assert {archive.read(link) for link in links} <= gallery_bytes(gallery)
    assert markdown.startswith("# 又见敦煌") and new_text + " with a second line" in markdown  # the edit is saved


def test_bad_input_is_answered_with_messages(app, tmp_path):
    url, _ = app
    client = Client(url, verbose=False)
    assert "✗ Type a title first" in write(client, "  ", str(app[1]))[-1][0]
    assert "5000 characters long; keep it under 200" in write(client, "长" * 5000, str(app[1]))[-1][0]
    base = app[1].parent
    assert "has no images" in write(client, "又见敦煌", str(base / "empty"))[-1][0]
    assert "does not exist" in write(client, "又见敦煌", str(base / "missing"))[-1][0]
    status = client.predict(str(base / "mixed"), api_name="/index_gallery")
    assert "1 images" in status and "Skipped 1 unreadable file(s): broken.jpg" in status
    assert client.predict(api_name="/save_article") is None  # nothing written in this session yet


def test_the_browser_cannot_choose_a_folder_outside_the_galleries(app, tmp_path):
    url, gallery = app
    client = Client(url, verbose=False)
    secret = tmp_path / "private"
    secret.mkdir()
    Image.new("RGB", (20, 20)).save(secret / "holiday.png")
    for folder in (str(secret), "/", str(gallery / ".."), str(gallery) + "/../empty/.."):
        try:
            answer = client.predict(folder, api_name="/index_gallery")
        except Exception as refused:  # noqa: BLE001 - Gradio itself refuses a value that is not a choice
            answer = str(refused)
        assert "not one of this app's galleries" in answer or "not in the list of choices" in answer, answer
    assert not cache_folder_for(secret.resolve()).exists(), "the private folder was indexed"
