"""The article-with-images pipeline: the original's prompts, every stage with a real XComposer, fallbacks, editing, export."""

from __future__ import annotations

import re
import zipfile

import pytest
from PIL import Image, ImageDraw, ImageOps

from internlm_demo.xcomposer import load_xcomposer
from internlm_demo.xcomposer.article import (
    STAGES,
    Article,
    ArticleError,
    ComposeSettings,
    Note,
    XComposerWriter,
    compose,
    editing,
    export,
    illustrate,
    pipeline,
)
from internlm_demo.xcomposer.gallery import open_gallery
from internlm_demo.xcomposer.model import SELECT_IMAGE_SETTINGS
from internlm_demo.xcomposer.prompts import IMAGE_HERE, parse_selection
from tests.conftest import FIXTURES_DIR, reference

TEMPLATES = reference("internlm-xcomposer-7b-tiny")["demo_templates"]
SELECT_RUN = reference("internlm-xcomposer-7b-tiny")["select_image_run"]
# A gallery of 4 topics × 3 drawn images, folders named in Chinese and English.
TOPICS = {"敦煌 Dunhuang": "莫高窟 murals", "沙漠 desert": "camel caravan", "大海 sea": "海边日落 sunset",
          "城市 city": "上海外滩夜景 skyline"}
ARTICLE = ("敦煌是丝绸之路上的明珠。\n\n莫高窟的壁画色彩斑斓。\n  \n鸣沙山下，骆驼商队缓缓前行。\n"
           "月牙泉像一弯新月。\n夜晚的敦煌星空璀璨。\n")
LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


class CappedLengths:
    """The demo model with shorter generations, so that a test runs in seconds; prompts and parsing unchanged."""

    def __init__(self, inner, cap: int = 24):
        self.inner, self.cap = inner, cap
        self.prompts: list[str] = []

    def _capped(self, generation: dict) -> dict:
        return {**generation, "max_new_tokens": min(generation["max_new_tokens"], self.cap)}

    def stream_text(self, prompt, **generation):
        self.prompts.append(prompt)
        return self.inner.stream_text(prompt, **self._capped(generation))

    def generate_text(self, prompt, **generation):
        self.prompts.append(prompt)
        return self.inner.generate_text(prompt, **self._capped(generation))

    def choose_image(self, prompt, images):
        self.prompts.append(prompt)
        return self.inner.choose_image(prompt, images)


class ScriptedStages(CappedLengths):
    """The model boundary with some stages' raw output replaced: the article, the location answer, the pick."""

    def __init__(self, inner, article: str | None = None, locations: str | None = None, choice: str | None = None):
        super().__init__(inner)
        self.article, self.locations, self.choice = article, locations, choice
        self.choices_asked = 0

    def stream_text(self, prompt, **generation):
        if self.article is None:
            yield from super().stream_text(prompt, **generation)
            return
        self.prompts.append(prompt)
        for end in range(1, len(self.article) + 1, 7):
            yield self.article[:end]
        yield self.article

    def generate_text(self, prompt, **generation):
        if self.locations is not None and pipeline.LOCATION_ANSWER_START in prompt:
            self.prompts.append(prompt)
            return self.locations
        return super().generate_text(prompt, **generation)

    def choose_image(self, prompt, images):
        self.choices_asked += 1
        real = super().choose_image(prompt, images)
        return real if self.choice is None else self.choice


@pytest.fixture(scope="module")
def writer():
    return XComposerWriter(load_xcomposer(None, device="cpu", dtype="float32", progress=False))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("article-gallery") / "gallery"
    for t, (folder, words) in enumerate(TOPICS.items()):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (96, 72), (40 * t, 60 * i, 150))
            ImageDraw.Draw(image).rectangle([10, 10, 50, 40], fill=(255, 200 - 40 * t, 30 * i))
            image.save(root / folder / f"{words.split()[-1]}-{i}.png")
    return open_gallery(root, cache_dir=tmp_path_factory.mktemp("article-gallery-cache"))


def run(model, gallery, title="又见敦煌", **settings):
    events = list(compose(model, gallery, title, ComposeSettings(max_output_tokens=40, **settings)))
    assert events[-1].stage == "done"
    return events, events[-1].article


def placed(article) -> list[str]:
    return [p.image for p in article.placements.values() if p.image]


# --- the original's prompts -----------------------------------------------------------------------


def test_prompts_are_the_original_demo_templates():
    assert pipeline.ARTICLE_PROMPT.format(title="又见敦煌") == TEMPLATES["article_generate_text"]["format"].format(title="又见敦煌")
    sections = SELECT_RUN["article_lines"]
    numbered = "".join(f"<Seg{i}> {line}\n" for i, line in enumerate(sections))
    assert pipeline.location_prompt(sections, None) == TEMPLATES["generate_loc"]["format"].format(full_txt=numbered, image_num="")
    assert pipeline.location_prompt(sections, 2) == TEMPLATES["generate_loc"]["format"].format(full_txt=numbered, image_num=2)
    first = pipeline.caption_prompt(sections, 0, [])
    assert first == TEMPLATES["generate_cap"]["format"].format(full_txt="".join(numbered.splitlines(True)[:2]), past="", po=0)
    later = pipeline.caption_prompt(sections, 2, [(0, "城市"), (1, "外滩的夜景")])
    past = '现在<Seg0>后插入图像对应的标题是"城市"， <Seg1>后插入图像对应的标题是"外滩的夜景"。'
    assert later == TEMPLATES["generate_cap"]["format"].format(full_txt=numbered, past=past, po=2)
    assert pipeline.select_prompt(sections, [1]) == SELECT_RUN["input_text_after_align_text"]
    assert pipeline.LOCATION_GENERATION["max_new_tokens"] == TEMPLATES["generate_loc"]["gen"]["max_length"] - 1
    assert pipeline.CAPTION_GENERATION["max_new_tokens"] == TEMPLATES["generate_cap"]["gen"]["max_length"] - 1
    assert SELECT_IMAGE_SETTINGS["max_length"] == SELECT_RUN["gen_kwargs"]["max_length"]


def test_image_selection_reproduces_the_original_run():
    """The fixture's tiny XComposer picks among the reference's four candidates exactly as the original did."""
    model = XComposerWriter(load_xcomposer(FIXTURES_DIR / "internlm-xcomposer-7b-tiny", device="cpu", dtype="float32",
                                           progress=False))
    transforms = {"none": lambda im: im, "flip_lr": ImageOps.mirror, "flip_tb": ImageOps.flip}
    images = [transforms[c["transform"]](Image.open(FIXTURES_DIR / c["file"]).convert("RGB")) for c in SELECT_RUN["candidates"]]
    answer = model.choose_image(pipeline.select_prompt(SELECT_RUN["article_lines"], [1]), images)
    assert answer == SELECT_RUN["decoded_out_text(outputs[0][1:])"]
    assert parse_selection(answer) is None and SELECT_RUN["fallback_used"]  # the original fell back to A too


# --- text stages ----------------------------------------------------------------------------------


def test_sections_are_lines_with_blank_lines_collapsed_at_most_60():
    assert pipeline.split_sections(ARTICLE) == ["敦煌是丝绸之路上的明珠。", "莫高窟的壁画色彩斑斓。", "鸣沙山下，骆驼商队缓缓前行。",
                                                "月牙泉像一弯新月。", "夜晚的敦煌星空璀璨。"]
    assert len(pipeline.split_sections("\n".join(f"line {i}" for i in range(100)))) == 60
    assert pipeline.split_sections(" \n\t\n") == []


def test_locations_parse_and_fall_back():
    assert pipeline.parse_locations("<Seg3>、<Seg1>和<Seg3>，还有<Seg9>", 5) == [3, 1]
    assert pipeline.choose_positions([3, 1], 5, None) == ([1, 3], [])
    positions, notes = pipeline.choose_positions([], 9, None)
    assert positions == [1, 4, 7]  # 9 // 3 images, one in the middle of each third
    assert notes == [Note("sections_unparsed", {"count": 3})]
    assert pipeline.choose_positions([4, 0, 2], 6, 2) == ([0, 4], [])  # the model's first two
    positions, notes = pipeline.choose_positions([5], 10, 3)
    assert positions == [1, 5, 8] and notes == [Note("sections_topped_up", {"named": 1, "wanted": 3})]  # evenly spaced
    positions, notes = pipeline.choose_positions([], 2, 30)
    assert positions == [0, 1]  # never more images than sections, and the note counts what was asked
    assert notes == [Note("too_few_sections", {"asked": 30, "sections": 2, "placed": 2}),
                     Note("sections_topped_up", {"named": 0, "wanted": 2})]
    positions, notes = pipeline.choose_positions([0], 1, 3)
    assert positions == [0] and notes == [Note("too_few_sections", {"asked": 3, "sections": 1, "placed": 1})]
    assert pipeline.evenly_spaced(10, 3) == [1, 5, 8] and pipeline.evenly_spaced(1, 1) == [0]


def test_captions_and_choices_parse():
    assert pipeline.parse_caption('莫高窟的壁画" 之后的话') == "莫高窟的壁画"
    assert pipeline.fallback_caption("x" * 80 + "结尾") == ("x" * 80 + "结尾")[-50:]
    assert [parse_selection(a) for a in (" B。", "C", "D.", " E", "", " ", "posal")] == [1, 2, 3, None, None, None, None]
    assert parse_selection("D", candidate_count=3) is None


# --- the pipeline with the embedded XComposer -----------------------------------------------------


def test_every_stage_runs_with_the_embedded_model(writer, gallery):
    model = CappedLengths(writer)
    events, article = run(model, gallery)
    stages = [event.stage for event in events]
    assert [s for s in STAGES if s in stages] == list(STAGES) and stages[-1] == "done"
    assert stages.index("writing") < stages.index("placing") < stages.index("captioning") < stages.index("retrieving")
    writing = [e.text for e in events if e.stage == "writing" and e.text]
    assert len(writing) > 1  # streamed
    assert model.prompts[0] == pipeline.ARTICLE_PROMPT.format(title="又见敦煌")
    assert article.placements and len(placed(article)) == len(set(placed(article)))
    markdown = export.to_markdown(article, lambda position, placement: placement.image)
    links = LINK.findall(markdown)
    assert links and all((gallery.root / link).is_file() for link in links)
    assert markdown.startswith("# 又见敦煌\n")


def test_parsed_locations_and_choices_are_used(writer, gallery):
    model = ScriptedStages(writer, article=ARTICLE, locations="<Seg1>和<Seg3>", choice=" B")
    _, article = run(model, gallery)
    assert sorted(article.placements) == [1, 3] and article.notes == []
    assert all(p.chosen == 1 and len(p.candidates) == 4 for p in article.placements.values())
    assert model.choices_asked == 2
    captions = [prompt for prompt in model.prompts if prompt.endswith('标题是"')]
    assert '现在<Seg1>后插入图像对应的标题是"' in captions[1]  # the first caption is context for the second
    selection = [prompt for prompt in model.prompts if "候选图像包括" in prompt]
    assert selection[1].count(IMAGE_HERE) == 5  # the image placed after section 1, then A–D
    first_candidates, second_candidates = (article.placements[p].candidates for p in (1, 3))
    assert not set(first_candidates) & set(second_candidates)  # candidates already shown are not shown again


def test_unparsable_outputs_fall_back_and_say_so(writer, gallery):
    model = ScriptedStages(writer, article=ARTICLE, locations="第二行和最后一行", choice="大概是第一张")
    _, article = run(model, gallery)
    assert sorted(article.placements) == pipeline.evenly_spaced(5, pipeline.fallback_image_count(5)) == [2]
    assert all(p.chosen == 0 for p in article.placements.values())
    assert Note("sections_unparsed", {"count": 1}) in article.notes
    assert Note("pick_unparsed", {"section": 3}) in article.notes


def test_fixed_number_of_images_without_model_selection(writer, gallery):
    model = ScriptedStages(writer, article=ARTICLE, locations="<Seg4>")
    article = Article("又见敦煌", pipeline.split_sections(ARTICLE), str(gallery.root))
    events = list(illustrate(model, gallery, article, ComposeSettings(image_count=3, model_selects_images=False)))
    assert sorted(article.placements) == [0, 2, 4] and model.choices_asked == 0
    assert article.notes == [Note("sections_topped_up", {"named": 1, "wanted": 3})]
    assert events[-1].stage == "done" and all(p.chosen == 0 for p in article.placements.values())


def test_a_small_gallery_never_places_an_image_twice(writer, tmp_path):
    root = tmp_path / "five"
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 40), (50 * i, 80, 120)).save(root / f"sea-{i}.png")
    small = open_gallery(root, cache_dir=tmp_path / "cache")
    model = ScriptedStages(writer, article=ARTICLE, locations="<Seg0><Seg1><Seg2><Seg3><Seg4>", choice="D")
    _, article = run(model, small)
    images = placed(article)
    assert len(images) == 5 == len(set(images))  # the last sections got fewer candidates, never a placed one
    assert len(article.placements[4].candidates) == 1


def test_editing_an_article(writer, gallery):
    _, article = run(ScriptedStages(writer, article=ARTICLE, locations="<Seg1>"), gallery)
    before = editing.edited(article)
    searched = editing.search_again(gallery, article, 1, "sunset over the sea 海边日落")
    assert searched.placements[1].caption == "sunset over the sea 海边日落"
    assert searched.placements[1].image.startswith("大海 sea/") and article.placements == before.placements
    picked = editing.pick_candidate(searched, 1, 2)
    assert picked.placements[1].image == searched.placements[1].candidates[2]
    added = editing.add_image(CappedLengths(writer), gallery, picked, 3)
    assert added.placements[3].image not in placed(picked) and added.placements[3].caption
    with pytest.raises(ArticleError, match="already placed"):
        clash = editing.edited(added)
        clash.placements[3].candidates.append(added.placements[1].image)
        editing.pick_candidate(clash, 3, len(clash.placements[3].candidates) - 1)
    removed = editing.delete_image(added, 1)
    assert sorted(removed.placements) == [3]
    with pytest.raises(ArticleError, match="no section 9"):
        editing.delete_image(removed, 8)
    with pytest.raises(ArticleError, match="Type a caption"):
        editing.search_again(gallery, removed, 3, "  ")


# --- export ---------------------------------------------------------------------------------------


def test_zip_holds_the_markdown_and_every_image_it_links(writer, gallery, tmp_path):
    _, article = run(ScriptedStages(writer, article=ARTICLE, locations="<Seg0><Seg2><Seg4>"), gallery)
    bmp = gallery.root / "城市 city" / "old-scan.bmp"
    Image.new("RGB", (30, 20), "purple").save(bmp)
    article.placements[2].candidates[article.placements[2].chosen] = bmp.relative_to(gallery.root).as_posix()
    target = export.export_zip(article, tmp_path / "out")
    with zipfile.ZipFile(target) as archive:
        names = set(archive.namelist())
        markdown = archive.read("article.md").decode("utf-8")
        archive.extractall(tmp_path / "unpacked")
    links = LINK.findall(markdown)
    assert len(links) == 3 and names == {"article.md", *links}
    assert all(not link.startswith("/") and (tmp_path / "unpacked" / link).is_file() for link in links)
    first = article.placements[0].image
    assert (tmp_path / "unpacked" / links[0]).read_bytes() == (gallery.root / first).read_bytes()
    with Image.open(tmp_path / "unpacked" / links[1]) as converted:  # BMP is not shown by browsers: PNG in the zip
        assert converted.format == "PNG" and converted.size == (30, 20)
    bmp.unlink()
    with pytest.raises(ArticleError, match="no longer in the gallery"):
        export.export_zip(article, tmp_path / "again")


# --- bad input ------------------------------------------------------------------------------------


def test_bad_titles_and_galleries_get_clear_messages(writer, gallery, tmp_path):
    with pytest.raises(ArticleError, match="Type a title first"):
        list(compose(writer, gallery, "   ", ComposeSettings()))
    with pytest.raises(ArticleError, match="5000 characters long; keep it under 200"):
        list(compose(writer, gallery, "长" * 5000, ComposeSettings()))
    (tmp_path / "empty").mkdir()
    empty = open_gallery(tmp_path / "empty", cache_dir=tmp_path / "cache")
    with pytest.raises(ArticleError, match="has no images.*Put some images in it"):
        list(compose(writer, empty, "又见敦煌", ComposeSettings()))
    silent = ScriptedStages(writer, article="\n \n")
    with pytest.raises(ArticleError, match="wrote nothing"):
        list(compose(silent, gallery, "又见敦煌", ComposeSettings()))


def test_unreadable_gallery_files_are_skipped_and_the_article_still_gets_images(writer, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 100, 100)).save(root / f"lake-{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.jpg").write_text("text with an image name")
    index = open_gallery(root, cache_dir=tmp_path / "cache")
    assert len(index) == 4 and "Skipped 2 unreadable file(s)" in str(index.status())
    _, article = run(CappedLengths(writer), index)
    assert placed(article) and all(not image.startswith(("broken", "notes")) for image in placed(article))


def test_the_model_captions_gallery_images_once(writer, tmp_path):
    root = tmp_path / "captioned"
    root.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 40 * i, 10)).save(root / f"{i}.png")
    captioner = writer.captioner()
    first = open_gallery(root, captioner=captioner, cache_dir=tmp_path / "cache")
    assert first.report.captioned == 2 and all(image.caption for image in first.images)
    assert all(image.caption in image.description for image in first.images)
    print(f"\nembedded demo XComposer, CPU: {first.report.caption_seconds / 2:.2f} s per image caption")
    again = open_gallery(root, captioner=captioner, cache_dir=tmp_path / "cache")
    assert again.report.captioned == 0 and again.report.reused == 2
