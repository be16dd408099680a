"""XComposer's article with images: the original web demo's pipeline, over a local gallery.

The stages, as ``examples/web_demo.py`` runs them: write the article from the title (streamed); split it
into sections (blank lines collapsed, at most 60); let the model choose the sections to illustrate
(or a fixed number of them); write a caption per chosen section with the earlier captions as context;
retrieve 4 candidate images per caption from the gallery, never one already placed; let the model
pick the best candidate (A–D) in context; assemble Markdown with the images inline.

When the model's choice of sections or of a candidate does not parse, a documented fallback is used
(evenly spaced sections; candidate A) and ``Article.notes`` says so. The pipeline is plain generators
of ``StageEvent``; the model is anything with the three methods of ``document.ComposerModel``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..gallery import GalleryIndex
from ..preprocess import ImageRejectedError, load_image
from ..prompts import EOH, align_text, parse_selection, select_image_text
from .document import Article, ArticleError, ComposerModel, ComposeSettings, Note, Placement, StageEvent

MAX_SECTIONS = 60
MAX_TITLE_CHARS = 200
CANDIDATE_COUNT = 4

# The original demo's prompts (fixture reference: demo_templates).
ARTICLE_PROMPT = " <|User|>:根据给定标题写一个图文并茂，不重复的文章：{title}\n" + EOH + " <|Bot|>:"
LOCATION_ANSWER_START = "适合插入图像的行是"
LOCATION_PROMPT = ' <|User|>:给定文章"{article}" 根据上述文章，选择适合插入图像的{count}行 \n' + EOH + " <|Bot|>:" + LOCATION_ANSWER_START
CAPTION_PROMPT = ' <|User|>: 给定文章"{article}" {past}给出适合在<Seg{position}>后插入的图像对应的标题。 \n' + EOH + ' <|Bot|>: 标题是"'
FIRST_PAST_CAPTION = '现在<Seg{position}>后插入图像对应的标题是"{caption}"， '
NEXT_PAST_CAPTION = '<Seg{position}>后插入图像对应的标题是"{caption}"， '
SEGMENT_MARK = re.compile(r"<Seg(\d+)>")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# Generation settings of each stage. The demo passed transformers 4.33 ``max_length``, which counted a
# BOS placeholder, so ``max_length=N`` gave N - 1 new tokens.
LOCATION_GENERATION = {"num_beams": 5, "max_new_tokens": 299, "repetition_penalty": 1.0, "do_sample": False}
CAPTION_GENERATION = {"num_beams": 1, "max_new_tokens": 99, "repetition_penalty": 5.0, "do_sample": False}
# Fallback when the model names no usable section: one image per this many sections, 1 to 5 images.
FALLBACK_SECTIONS_PER_IMAGE = 3
FALLBACK_MAX_IMAGES = 5
CAPTION_FALLBACK_CHARS = 50


# --- input ----------------------------------------------------------------------------------------


def check_title(title: str | None) -> str:
    """The title, stripped; ArticleError when it is empty or too long."""
    title = (title or "").strip()
    if not title:
        raise ArticleError("no_title")
    if len(title) > MAX_TITLE_CHARS:
        raise ArticleError("title_too_long", {"length": len(title), "limit": MAX_TITLE_CHARS})
    return title


def check_gallery(gallery: GalleryIndex) -> None:
    if not len(gallery):
        raise ArticleError("gallery_empty", {"status": gallery.status()})


# --- text stages ----------------------------------------------------------------------------------


def split_sections(text: str) -> list[str]:
    """The article's lines: blank lines collapsed as the demo does, at most ``MAX_SECTIONS``.

    Control characters other than newline and tab are dropped (a random demo model writes them).
    """
    text = CONTROL_CHARACTERS.sub("", text)
    text = re.sub(r"(\n[ \t]*)+", "\n", text).strip("\n")
    return text.split("\n")[:MAX_SECTIONS] if text.strip() else []


def numbered_sections(sections: list[str]) -> list[str]:
    return [f"<Seg{i}> {line}\n" for i, line in enumerate(sections)]


def location_prompt(sections: list[str], count: int | None) -> str:
    """The demo's prompt for choosing sections; ``count`` None lets the model decide how many."""
    return LOCATION_PROMPT.format(article="".join(numbered_sections(sections)), count="" if count is None else count)


def parse_locations(output: str, section_count: int) -> list[int]:
    """Section indices in the model's answer (``<SegN>`` marks), in range, each once, in the model's order."""
    positions: list[int] = []
    for match in SEGMENT_MARK.finditer(LOCATION_ANSWER_START + output):
        position = int(match.group(1))
        if position < section_count and position not in positions:
            positions.append(position)
    return positions


def evenly_spaced(section_count: int, image_count: int) -> list[int]:
    """``image_count`` sections, one in the middle of each of that many equal runs of sections."""
    image_count = max(0, min(image_count, section_count))
    return [(2 * i + 1) * section_count // (2 * image_count) for i in range(image_count)]


def fallback_image_count(section_count: int) -> int:
    return max(1, min(FALLBACK_MAX_IMAGES, section_count // FALLBACK_SECTIONS_PER_IMAGE))


def choose_positions(parsed: list[int], section_count: int, fixed_count: int | None) -> tuple[list[int], list[Note]]:
    """The sections to illustrate, ascending, and notes when a fallback decided (some of) them."""
    if fixed_count is None:
        if parsed:
            return sorted(parsed), []
        count = fallback_image_count(section_count)
        return evenly_spaced(section_count, count), [Note("sections_unparsed", {"count": count})]
    asked = max(1, int(fixed_count))
    wanted = min(asked, section_count)
    notes = []
    if wanted < asked:
        notes.append(Note("too_few_sections", {"asked": asked, "sections": section_count, "placed": wanted}))
    positions = parsed[:wanted]
    if len(positions) < wanted:
        notes.append(Note("sections_topped_up", {"named": len(positions), "wanted": wanted}))
    for position in evenly_spaced(section_count, wanted) + list(range(section_count)):
        if len(positions) == wanted:
            break
        if position not in positions:
            positions.append(position)
    return sorted(positions), notes


def past_captions_text(earlier: list[tuple[int, str]]) -> str:
    """The demo's context of earlier captions: 现在<SegA>后…"a"， <SegB>后…"b"。 ('' when there are none)."""
    if not earlier:
        return ""
    pasts = "".join((FIRST_PAST_CAPTION if i == 0 else NEXT_PAST_CAPTION).format(position=p, caption=c)
                    for i, (p, c) in enumerate(earlier))
    return pasts[:-2] + "。"


def caption_prompt(sections: list[str], position: int, earlier: list[tuple[int, str]], inserting: bool = False) -> str:
    """The demo's caption prompt: the article up to the section after ``position`` and the earlier captions.

    ``inserting``: the demo's ➕ variant, whose context ends in "。" even when there is no earlier caption.
    """
    article = "".join(numbered_sections(sections)[:position + 2])
    past = past_captions_text(earlier) or ("。" if inserting else "")
    return CAPTION_PROMPT.format(article=article, past=past, position=position)


def parse_caption(output: str) -> str:
    """The caption is the reply up to the closing quote."""
    return CONTROL_CHARACTERS.sub("", output.split('"')[0]).strip()


def fallback_caption(section: str) -> str:
    """The demo's fallback when no caption comes back: the section's last 50 characters."""
    return section.strip()[-CAPTION_FALLBACK_CHARS:]


def select_prompt(sections: list[str], positions: list[int], candidate_count: int = CANDIDATE_COUNT) -> str:
    """The demo's prompt for choosing the candidate of the last of ``positions``, after ``align_text``.

    The context is the article up to that section with an ``<ImageHere>`` for the image already chosen
    after each earlier position, then the candidates. ``align_text`` appends ``<TOKENS_UNUSED_1> </s>``,
    whose two positions the model boundary drops.
    """
    context, text = [], ""
    for i, section in enumerate(sections[:positions[-1] + 1]):
        text += section + "\n"
        if i in positions:
            context.append(text)
            text = ""
    return align_text(select_image_text(context, candidate_count))


# --- images ---------------------------------------------------------------------------------------


def find_candidates(gallery: GalleryIndex, caption: str, placed: set[str], shown: set[str]) -> list[str]:
    """Up to 4 images for ``caption``: never one already placed; images not yet shown as candidates first."""
    hits = gallery.search(caption, CANDIDATE_COUNT, exclude=placed | shown)
    if len(hits) < CANDIDATE_COUNT:
        taken = {hit.path for hit in hits}
        hits += gallery.search(caption, CANDIDATE_COUNT - len(hits), exclude=placed | taken)
    return [hit.path for hit in hits]


def select_candidate(model: ComposerModel, gallery: GalleryIndex, article: Article, position: int) -> Note | None:
    """Let the model pick among the candidates of ``position``; returns a note when it fell back to A."""
    placement = article.placements[position]
    placement.chosen = 0
    if len(placement.candidates) < 2:
        return None
    earlier = sorted(p for p, pl in article.placements.items() if p < position and pl.image)
    paths = [article.placements[p].image for p in earlier] + placement.candidates
    try:
        images = [load_image(gallery.absolute(path)) for path in paths]
    except ImageRejectedError as error:
        return Note("image_rejected", {"section": position + 1, "error": error.phrase})
    prompt = select_prompt(article.sections, [*earlier, position], len(placement.candidates))
    choice = parse_selection(model.choose_image(prompt, images), len(placement.candidates))
    if choice is None:
        return Note("pick_unparsed", {"section": position + 1})
    placement.chosen = choice
    return None


# --- the pipeline ---------------------------------------------------------------------------------


def compose(model: ComposerModel, gallery: GalleryIndex, title: str, settings: ComposeSettings) -> Iterator[StageEvent]:
    """Write an article for ``title`` and illustrate it from ``gallery``; the last event is "done".

    Raises ArticleError before generating anything for an empty or overlong title or an empty gallery.
    """
    title = check_title(title)
    check_gallery(gallery)
    yield StageEvent("writing", "Writing the article…")
    text = ""
    for text in model.stream_text(ARTICLE_PROMPT.format(title=title), **settings.article_generation()):
        yield StageEvent("writing", "Writing the article…", text=text)
    sections = split_sections(text)
    if not sections:
        raise ArticleError("nothing_written")
    article = Article(title, sections, str(gallery.root))
    yield from illustrate(model, gallery, article, settings)


def illustrate(model: ComposerModel, gallery: GalleryIndex, article: Article, settings: ComposeSettings) -> Iterator[StageEvent]:
    """Place, caption, retrieve and select the images of ``article`` (replacing any it had)."""
    check_gallery(gallery)
    sections = article.sections
    article.placements = {}
    yield StageEvent("placing", "Choosing the sections to illustrate…", article=article)
    output = model.generate_text(location_prompt(sections, settings.image_count), **LOCATION_GENERATION)
    positions, notes = choose_positions(parse_locations(output, len(sections)), len(sections), settings.image_count)
    article.notes.extend(notes)

    captions: list[tuple[int, str]] = []
    for step, position in enumerate(positions):
        yield StageEvent("captioning", f"Captioning image {step + 1} of {len(positions)}…", step, len(positions), article=article)
        captions.append((position, write_caption(model, article, position, captions)))

    shown: set[str] = set()
    for step, (position, caption) in enumerate(captions):
        yield StageEvent("retrieving", f"Finding images for section {position + 1}…", step, len(captions), article=article)
        candidates = find_candidates(gallery, caption, article.placed_images(), shown)
        shown.update(candidates)
        if not candidates:
            article.notes.append(Note("gallery_exhausted", {"section": position + 1}))
            continue
        article.placements[position] = Placement(caption, candidates)
        yield StageEvent("selecting", f"Choosing the best image for section {position + 1}…", step, len(captions), article=article)
        if settings.model_selects_images:
            note = select_candidate(model, gallery, article, position)
            if note:
                article.notes.append(note)
    yield StageEvent("done", f"Done: {len(article.placements)} image(s) in {len(sections)} section(s).", article=article)


def write_caption(model: ComposerModel, article: Article, position: int, earlier: list[tuple[int, str]],
                  inserting: bool = False) -> str:
    """The model's caption for the image after ``position``; the section's last words when it writes none (noted)."""
    output = model.generate_text(caption_prompt(article.sections, position, earlier, inserting), **CAPTION_GENERATION)
    caption = parse_caption(output)
    if not caption:
        caption = fallback_caption(article.sections[position])
        article.notes.append(Note("caption_missing", {"section": position + 1}))
    return caption
