"""The "Write article" tab end to end through gradio_client: a real server, the embedded XComposer, a test gallery."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

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
def running_app(gallery: Path):
    """``python -m apps.xcomposer --gallery GALLERY`` on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with running_server([sys.executable, "-m", "apps.xcomposer", "--port", str(port), "--gallery", str(gallery)], url,
                        timeout_s=120):
        yield url


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gallery = build_gallery(tmp_path_factory.mktemp("app-gallery") / "gallery")
    with running_app(gallery) as url:
        yield url, gallery


def write(client: Client, title: str, folder: str = ""):
    """All the updates of one /write_article run, the last one being the result."""
    job = client.submit(title, *FAST.values(), folder, api_name="/write_article")
    job.result(timeout=120)
    return job.outputs()


def gallery_bytes(gallery: Path) -> set[bytes]:
    return {path.read_bytes() for path in gallery.rglob("*.png")}


def test_compose_edit_and_save(app, tmp_path):
    url, gallery = app
    client = Client(url, verbose=False)
    updates = write(client, "又见敦煌")
    status, _, view, section, caption, captions, section_text, candidates = updates[-1]
    assert any("▶ **writing**" in update[0] for update in updates[:-1])  # the stage board streamed
    assert status.startswith("✓ writing · ✓ placing · ✓ captioning · ✓ retrieving · ✓ selecting") and "Done" in status
    assert view.startswith("# 又见敦煌") and "](data:image/jpeg;base64," in view
    assert len(candidates["value"]) >= 1 and candidates["value"][0]["caption"].split(" · ")[1].endswith(".png")
    position = section["value"]
    assert isinstance(position, int) and caption["value"] and section_text["value"] in view
    assert json.loads(captions)[str(position)] == caption["value"]  # what the page fills in at once

    searched = client.predict(position, "sunset at sea 海边日落", "", api_name="/search_again")
    hits = [item["caption"].split(" · ")[1] for item in searched[7]["value"]]
    assert hits[0].startswith("大海 sea/") and searched[4]["value"] == "sunset at sea 海边日落"

    new_text = "A section rewritten by hand. 手工改写的段落。"
    edited = client.predict(position, new_text + "\nwith a second line", api_name="/edit_section_text")
    assert edited[6]["value"] == new_text + " with a second line" and new_text + " with a second line" in edited[2]
    refused = client.predict(position, "   ", api_name="/edit_section_text")
    assert "cannot be empty" in refused[0] and refused[2] == edited[2]  # the article is unchanged

    deleted = client.predict(position, api_name="/delete_image")
    assert deleted[2].count("](data:") == view.count("](data:") - 1
    added = client.predict(position, "", api_name="/add_image")
    assert added[2].count("](data:") == view.count("](data:") and added[4]["value"]

    sections = len(added[3]["choices"])
    fixed = client.submit(2, *FAST.values(), "", api_name="/insert_fixed_images")
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
    assert "✗ Type a title first" in write(client, "  ")[-1][0]
    assert "5000 characters long; keep it under 200" in write(client, "长" * 5000)[-1][0]
    (tmp_path / "empty").mkdir()
    assert "has no images" in write(client, "又见敦煌", str(tmp_path / "empty"))[-1][0]
    assert "does not exist" in write(client, "又见敦煌", str(tmp_path / "missing"))[-1][0]
    (tmp_path / "mixed").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "mixed" / "ok.png")
    (tmp_path / "mixed" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    status = client.predict(str(tmp_path / "mixed"), api_name="/index_gallery")
    assert "1 images" in status and "Skipped 1 unreadable file(s): broken.jpg" in status
    assert client.predict(api_name="/save_article") is None  # nothing written in this session yet
