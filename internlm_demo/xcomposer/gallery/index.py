"""The index of one gallery folder: scanned, described, embedded, cached, refreshed incrementally, searched."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import LocalizedError
from ...i18n import Phrase
from .matching import BM25, SentenceEncoder, default_encoder
from .text import describe, read_sidecar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# A walk stops here: a gallery is a folder of pictures, not a disk (the index is built on every refresh).
MAX_GALLERY_FILES = 20_000
MAX_GALLERY_FOLDERS = 5_000
INDEX_FORMAT = 1


class GalleryError(LocalizedError, ValueError):
    """The gallery folder cannot be used; the message says what to do."""

    section = "article"


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
    reason: Phrase


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

    def summary(self) -> Phrase:
        """One line for the UI."""
        captioned = Phrase("article", "summary_captioned", {"count": self.captioned, "seconds": self.caption_seconds})
        skipped = Phrase("article", "summary_skipped", {"count": len(self.skipped)})
        return Phrase("article", "summary", {
            "reused": self.reused, "added": self.added, "updated": self.updated, "removed": self.removed,
            "captioned": captioned if self.captioned else "", "skipped": skipped if self.skipped else "",
            "seconds": self.seconds})


@dataclass(frozen=True)
class Captioner:
    """A model that describes an image file once, at index time; ``name`` identifies it in the cache."""

    name: str
    describe: Callable[[Path], str]


@dataclass(frozen=True)
class SearchHit:
    path: str  # relative to the gallery root
    score: float


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

    def status(self) -> Phrase:
        """What the UI says about the gallery."""
        skipped, note = self.report.skipped, ""
        if skipped:
            files = [Phrase("article", "gallery_skipped_file", {"path": s.path, "reason": s.reason}) for s in skipped[:5]]
            more = Phrase("article", "gallery_skipped_more", {"count": len(skipped) - 5}) if len(skipped) > 5 else ""
            note = Phrase("article", "gallery_skipped", {"count": len(skipped), "files": files, "more": more})
        if not self.images:
            return Phrase("article", "gallery_no_images",
                          {"root": self.root, "suffixes": ", ".join(IMAGE_SUFFIXES), "skipped": note})
        return Phrase("article", "gallery_images",
                      {"root": self.root, "count": len(self.images), "method": self.method, "skipped": note})


def cache_folder_for(root: Path, cache_dir: Path | None = None) -> Path:
    from ...models.demo import cache_root

    base = cache_dir if cache_dir is not None else cache_root() / "galleries"
    return base / hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]


def scan(root: Path) -> tuple[list[tuple[str, os.stat_result]], list[SkippedFile], list[str]]:
    """Image files under ``root`` (recursively, hidden folders left out) with their stat, those that failed, and
    a note when the walk stopped at MAX_GALLERY_FILES / MAX_GALLERY_FOLDERS. Links are not followed out of ``root``."""
    found, failed, notes = [], [], []

    def walk_error(error: OSError):
        failed.append(SkippedFile(os.path.relpath(error.filename, root),
                                  Phrase("article", "skip_folder_unreadable", {"error": error.strerror})))

    for folders, (folder, dirs, files) in enumerate(os.walk(root, onerror=walk_error), start=1):
        if folders > MAX_GALLERY_FOLDERS:
            notes.append(f"stopped after {MAX_GALLERY_FOLDERS} folders; point --gallery at a smaller folder")
            break
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            if len(found) == MAX_GALLERY_FILES:
                notes.append(f"stopped after {MAX_GALLERY_FILES} images; point --gallery at a smaller folder")
                return found, failed, notes
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                failed.append(SkippedFile(relative, Phrase("article", "skip_link_outside")))
                continue
            try:
                found.append((relative, path.stat()))
            except OSError as error:
                failed.append(SkippedFile(relative, Phrase("article", "skip_no_stat", {"error": error.strerror})))
    return found, failed, notes


def check_image(path: Path) -> Phrase | None:
    """None when Pillow can read the file, else why not."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError:
        return Phrase("article", "skip_too_large")
    except (OSError, SyntaxError, ValueError) as error:
        return Phrase("article", "skip_unreadable", {"error": f"{type(error).__name__}: {error}"[:180]})
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
        raise GalleryError("gallery_missing", {"root": root})
    if not root.is_dir():
        raise GalleryError("gallery_not_folder", {"root": root})
    root = root.resolve()
    encoder = default_encoder() if encoder == "default" else encoder
    cache = cache_folder_for(root, cache_dir)
    cached, cached_vectors, cached_skips, from_cache = read_cache(cache, encoder)
    stale_skips = set(cached_skips)

    found, skipped, walk_notes = scan(root)
    report = IndexReport(from_cache=from_cache, notes=walk_notes)
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
    """(images by path, vectors by path, why each skipped file was left out by path, whether an index was read)."""
    try:
        data = json.loads((cache / "index.json").read_text(encoding="utf-8"))
        if data.get("format") != INDEX_FORMAT:
            return {}, {}, {}, False
        images = {entry["path"]: IndexedImage(**entry) for entry in data["images"]}
        # A reason is stored as [key, fields]; an older index's English text is left out, so that file is checked again.
        skips = {path: (Phrase("article", *reason), fingerprint)
                 for path, (reason, fingerprint) in data.get("skipped", {}).items() if isinstance(reason, list)}
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
                "images": [asdict(image) for image in images],
                "skipped": {path: ([reason.key, reason.fields], fingerprint) for path, (reason, fingerprint) in skips.items()}}
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
