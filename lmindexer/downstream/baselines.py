"""Retrieval and recommendation baselines, measured in the same run as the generative models.

- :class:`BM25Retriever`: lexical BM25 (``bm25s``, Lucene variant) over English tokens without stopwords, stemmed
  when PyStemmer is installed;
- :class:`DenseRetriever`: exact cosine search over frozen sentence embeddings (all-MiniLM-L6-v2 by default);
- :class:`PopularityRecommender`: the most frequent items in the training histories.

Every ``search`` / ``recommend`` returns item_ids best first, at most ``k`` per query, with ties broken by position
in the index (or by item_id for popularity) so that repeated runs give identical lists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from lmindexer.errors import ConfigError

if TYPE_CHECKING:
    from lmindexer.embeddings import TextEncoder

_SEARCH_BATCH = 1024


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")


def _check_corpus(item_ids: Sequence[str], count: int, what: str) -> list[str]:
    ids = list(item_ids)
    if not ids:
        raise ConfigError("cannot build an index of no items: item_ids is empty")
    if len(ids) != count:
        raise ConfigError(f"{len(ids)} item_ids but {count} {what}; they must match")
    duplicates = [item for item, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise ConfigError(f"item_ids must be unique; repeated: {duplicates[:5]!r}")
    return ids


def _default_stemmer() -> Callable[[list[str]], list[str]] | None:
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


class BM25Retriever:
    """BM25 over item texts; a query sharing no indexed token with any item gets no results."""

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, stem: bool = True) -> None:
        self.k1 = k1
        self.b = b
        self.stemmer = _default_stemmer() if stem else None
        self.item_ids: list[str] = []
        self._model = None

    @classmethod
    def fit(
        cls, item_ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75, stem: bool = True
    ) -> BM25Retriever:
        """Index ``texts`` (one per item_id); ``stem`` applies only when PyStemmer is importable."""
        import bm25s

        retriever = cls(k1=k1, b=b, stem=stem)
        retriever.item_ids = _check_corpus(item_ids, len(texts), "texts")
        tokens = retriever._tokenize(texts)
        # bm25s numbers tokens in set order, which varies with the hash seed; a sorted vocabulary keeps the index
        # (and so every score) identical from run to run.
        vocab = {token: i for i, token in enumerate(sorted({t for doc in tokens for t in doc}))}
        if vocab:
            model = bm25s.BM25(k1=k1, b=b, method="lucene")
            model.index(([[vocab[t] for t in doc] for doc in tokens], vocab), show_progress=False)
            retriever._model = model
        return retriever

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The top ``k`` item_ids of each query among items with a positive score (fewer when fewer match)."""
        _check_k(k)
        results: list[list[str]] = []
        for scores in self._score_vectors(queries):
            matches = np.flatnonzero(scores > 0)
            order = matches[np.argsort(-scores[matches], kind="stable")][:k]
            results.append([self.item_ids[i] for i in order])
        return results

    def match_scores(self, queries: Sequence[str]) -> list[dict[str, float]]:
        """Per query, the BM25 score of every item that shares a token with it (the others score 0)."""
        results: list[dict[str, float]] = []
        for scores in self._score_vectors(queries):
            matches = np.flatnonzero(scores > 0)
            results.append({self.item_ids[i]: float(scores[i]) for i in matches})
        return results

    def _score_vectors(self, queries: Sequence[str]) -> Iterator[np.ndarray]:
        for tokens in self._tokenize(queries):
            ids = self._model.get_tokens_ids(tokens) if self._model is not None else []
            # Lucene BM25 scores are never negative, so a positive score means the item shares a query token.
            yield self._model.get_scores_from_ids(ids) if ids else np.zeros(len(self.item_ids))


class DenseRetriever:
    """Exact inner-product search (cosine on the encoder's unit vectors) with a flat faiss index."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.item_ids: list[str] = []
        self._index = None

    def index(self, item_ids: Sequence[str], texts: Sequence[str]) -> DenseRetriever:
        """Encode and index ``texts`` (one per item_id); replaces any previous index."""
        _check_corpus(item_ids, len(texts), "texts")
        return self.index_embeddings(item_ids, self.encoder.encode(list(texts)))

    def index_embeddings(self, item_ids: Sequence[str], matrix: np.ndarray) -> DenseRetriever:
        """Index precomputed embeddings, one unit row per item_id; replaces any previous index."""
        import faiss

        vectors = np.ascontiguousarray(matrix, dtype=np.float32)
        if vectors.ndim != 2:
            raise ConfigError(f"embeddings must be a 2-D matrix, got shape {vectors.shape}")
        self.item_ids = _check_corpus(item_ids, len(vectors), "embedding rows")
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        self._index = index
        return self

    def vectors(self) -> np.ndarray:
        """The indexed embeddings, one row per item_id (read back from the index, which holds the only copy)."""
        if self._index is None:
            raise ConfigError("DenseRetriever has no index: call index() or index_embeddings() first")
        return self._index.reconstruct_n(0, self._index.ntotal)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The ``k`` nearest item_ids of each query text (fewer only when the index holds fewer items)."""
        _check_k(k)
        return self.search_embeddings(self.encoder.encode(list(queries)), k)

    def search_embeddings(self, matrix: np.ndarray, k: int) -> list[list[str]]:
        """The ``k`` nearest item_ids of each precomputed query embedding."""
        return [[item_id for item_id, _ in ranked] for ranked in self.search_scored(matrix, k)]

    def search_scored(self, matrix: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest (item_id, inner product) of each precomputed query embedding, best first."""
        _check_k(k)
        if self._index is None:
            raise ConfigError("DenseRetriever has no index: call index() or index_embeddings() first")
        vectors = np.ascontiguousarray(matrix, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._index.d:
            raise ConfigError(f"query embeddings must have shape (n, {self._index.d}), got {vectors.shape}")
        results: list[list[tuple[str, float]]] = []
        top = min(k, self._index.ntotal)
        for start in range(0, len(vectors), _SEARCH_BATCH):
            scores, labels = self._index.search(vectors[start : start + _SEARCH_BATCH], top)
            results.extend(
                [(self.item_ids[i], float(s)) for i, s in zip(row, row_scores, strict=True) if i >= 0]
                for row, row_scores in zip(labels, scores, strict=True)
            )
        return results


class PopularityRecommender:
    """Recommends the items seen most often in the training histories, the same list for every user.

    By default the ranking is full: items already in a user's history are not excluded, so the baseline is comparable
    with models that may recommend a seen item again; ``exclude_seen`` leaves them out. Ties are broken by item_id,
    so the list is deterministic.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._ranking: list[str] = []

    def fit(self, histories: Sequence[Sequence[str]]) -> PopularityRecommender:
        """Count every occurrence of each item over all histories (repeats within a history count again)."""
        counts: Counter[str] = Counter()
        for history in histories:
            if isinstance(history, str):
                raise ConfigError(f"a history must be a sequence of item_ids, not the string {history!r}")
            counts.update(history)
        if not counts:
            raise ConfigError("cannot fit popularity on histories without any item")
        self.counts = counts
        self._ranking = sorted(counts, key=lambda item: (-counts[item], item))
        return self

    def recommend(self, histories: Sequence[Sequence[str]], k: int, *, exclude_seen: bool = False) -> list[list[str]]:
        """The ``k`` most popular item_ids for each history given (one list per user, all equal); with
        ``exclude_seen``, the ``k`` most popular ones not in that history (fewer only when too few are left)."""
        _check_k(k)
        if not self._ranking:
            raise ConfigError("PopularityRecommender is not fitted: call fit() first")
        if not exclude_seen:
            top = self._ranking[:k]
            return [list(top) for _ in histories]
        results = []
        for history in histories:
            seen = set(history)
            results.append(list(islice((item for item in self._ranking if item not in seen), k)))
        return results
