"""The "Write article" tab in a real Chromium: title → article with images → pick another image → save the zip."""

from __future__ import annotations

import re
import zipfile

import pytest
from playwright.sync_api import expect

from tests.servers import chromium
from tests.test_article_app import LINK, build_gallery, gallery_bytes, running_app

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

        page.locator("#article-save").click()
        link = page.locator("#article-file a").first
        expect(link).to_be_visible(timeout=30_000)
        with page.expect_download() as download_info:
            link.click()
        saved = tmp_path / "article.zip"
        download_info.value.save_as(saved)
        page.screenshot(path=str(output_dir / "article-tab.png"), full_page=True)

    with zipfile.ZipFile(saved) as archive:
        markdown = archive.read("article.md").decode("utf-8")
        links = LINK.findall(markdown)
        assert len(links) == len(after) and set(archive.namelist()) == {"article.md", *links}
        assert {archive.read(link) for link in links} <= gallery_bytes(gallery)
