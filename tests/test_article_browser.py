"""The "Write article" tab in a real Chromium: title → article with images → pick another image → save the zip."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from apps.xcomposer.app import TITLE
from internlm_demo.i18n import ARTICLE, XCOMPOSER
from tests.servers import chromium
from tests.test_article_app import LINK, build_gallery, gallery_bytes, running_app
from tests.test_chat_browser import english_labels_left

pytestmark = pytest.mark.browser

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    gallery = build_gallery(tmp_path_factory.mktemp("browser-gallery") / "gallery")
    with running_app(gallery) as url:
        yield url, gallery

def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")

def article_images(page) -> list[str]:
    return page.locator("#article-view img").evaluate_all("images => images.map(image => image.src)")

def test_write_edit_and_save_in_a_browser(app, output_dir, tmp_path):
    url, gallery = app
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(url)
        page.get_by_role("tab", name=re.compile("Write article")).click()
        page.locator("#article-advanced").get_by_text("Advanced Settings").click()
        set_slider(page, "article-beams", 1)  # a short article from the demo model; all stages still run
        set_slider(page, "article-max-tokens", 100)
        page.locator("#article-title textarea").fill("又见敦煌")
        page.locator("#article-submit").click()
        expect(page.locator("#article-status")).to_contain_text("Done", timeout=120_000)
        expect(page.locator("#article-view h1")).to_have_text("又见敦煌")
        before = article_images(page)
        assert before and all(src.startswith("data:image/jpeg;base64,") for src in before)

        # Edit one image: pick candidate B for the section shown in the editor.
        thumbnails = page.locator("#article-candidates button.thumbnail-item")
        expect(thumbnails.first).to_be_visible()
        assert thumbnails.count() >= 2
        thumbnails.nth(1).click()
        expect(page.locator("#article-status")).to_contain_text("updated", timeout=30_000)
        expect(page.locator("#article-candidates")).to_contain_text("✓ B")
        after = article_images(page)
        assert len(after) == len(before) and after != before

        saved = save_article(page, tmp_path)
        page.screenshot(path=str(output_dir / "article-tab.png"), full_page=True)

    with zipfile.ZipFile(saved) as archive:
        markdown = archive.read("article.md").decode("utf-8")
        links = LINK.findall(markdown)
        assert len(links) == len(after) and set(archive.namelist()) == {"article.md", *links}
        assert {archive.read(link) for link in links} <= gallery_bytes(gallery)


def write_short_article(page, title: str = "又见敦煌") -> None:
    page.get_by_role("tab", name=re.compile("Write article")).click()
    page.locator("#article-advanced").get_by_text("Advanced Settings").click()
    set_slider(page, "article-beams", 1)
    set_slider(page, "article-max-tokens", 100)
    page.locator("#article-title textarea").fill(title)
    page.locator("#article-submit").click()
    expect(page.locator("#article-status")).to_contain_text("Done", timeout=120_000)


def test_section_text_is_editable_enter_searches_and_a_quick_caption_is_kept(app, output_dir, tmp_path):
    url, _ = app
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(url)
        write_short_article(page)

        # The section's text is editable; the article and the saved zip show the new text.
        new_text = "这一段是手工改写的。This section was rewritten by hand."
        page.locator("#article-section-text textarea").fill(new_text)
        page.locator("#article-apply-text").click()
        expect(page.locator("#article-status")).to_contain_text("updated", timeout=30_000)
        expect(page.locator("#article-view")).to_contain_text(new_text)

        # Choose a section and type a caption at once: the typed caption stays, and Enter searches with it.
        section = page.locator("#article-section")
        section.locator("input").click()
        options = page.get_by_role("option")
        expect(options.first).to_be_visible()
        options.nth(options.count() - 1).click()
        caption = page.locator("#article-caption textarea")
        typed = "sunset at sea 海边日落"
        caption.fill(typed)  # well within half a second of choosing the section
        page.wait_for_timeout(1500)  # anything still on its way from the server has arrived by now
        expect(caption).to_have_value(typed)
        caption.press("Enter")
        expect(page.locator("#article-status")).to_contain_text("updated", timeout=30_000)
        expect(page.locator("#article-candidates")).to_contain_text("大海 sea/", timeout=30_000)
        expect(caption).to_have_value(typed)
        page.screenshot(path=str(output_dir / "edited.png"), full_page=True)

        saved = save_article(page, tmp_path)
    with zipfile.ZipFile(saved) as archive:
        assert new_text in archive.read("article.md").decode("utf-8")


def save_article(page, folder) -> Path:
    """Press "Save article" and download the zip it offers into ``folder``."""
    page.locator("#article-save").click()
    link = page.locator("#article-file a").first
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as download_info:
        link.click()
    saved = folder / "article.zip"
    download_info.value.save_as(saved)
    return saved


def shown_labels(page) -> str:
    """The page's text without the bilingual title and Gradio's own footer (the pipeline's notes included)."""
    return page.locator("body").inner_text().replace(TITLE, "").replace(page.locator("footer").inner_text(), "")


def test_chinese_labels_are_complete_on_both_tabs(app, output_dir):
    """In 中文 no English label of the XComposer tables is left: header, chat tab, article tab with its editor."""
    url, _ = app
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        write_short_article(page)
        page.get_by_role("button", name=ARTICLE["index"][0]).click()
        expect(page.locator("#article-gallery-status")).to_contain_text("Index:", timeout=30_000)
        page.get_by_role("button", name="中文").click()
        expect(page.get_by_role("button", name="English", exact=True)).to_be_visible(timeout=10_000)
        expect(page.locator("#article-status")).to_contain_text("写文章", timeout=10_000)
        expect(page.locator("#article-gallery-status")).to_contain_text("索引：", timeout=10_000)
        page.wait_for_timeout(1000)
        article_text = shown_labels(page)
        assert english_labels_left(article_text, {**ARTICLE, **XCOMPOSER}) == [], article_text
        assert "图片描述" in article_text and "示例" in article_text
        page.screenshot(path=str(output_dir / "article-chinese.png"), full_page=True)

        page.get_by_role("tab", name=XCOMPOSER["tab_chat"][1]).click()
        expect(page.get_by_role("button", name=XCOMPOSER["stop"][1])).to_be_visible(timeout=10_000)
        page.wait_for_timeout(500)
        chat_text = shown_labels(page)
        assert english_labels_left(chat_text, {**ARTICLE, **XCOMPOSER}) == [], chat_text
        placeholder = page.locator("#xcomposer-input textarea").get_attribute("placeholder")
        assert placeholder == XCOMPOSER["input"][1]
        page.screenshot(path=str(output_dir / "chat-chinese.png"), full_page=True)
