"""Pseudo-queries: passages of an item's own text used as training queries for it ("document as query").

A generative retriever has to learn, for every item, which texts lead to its ID. Real queries cover only some items
and the item's whole text is one example; the generative-retrieval literature (NCI's document-as-query, DSI-QG) found
that training on many short query-like views of each document is what makes such a model retrieve. No query
generator is available offline, so the views are the text's own sentences (a long sentence cut to
``MAX_SPAN_WORDS`` words), a few per item.

The choice is deterministic and per item: it depends only on the item's id, its text, the count and the seed, so
adding or changing other items never changes an item's pseudo-queries (a rerun trains on the same examples and a
resumed training recognises its checkpoint).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping

import numpy as np

# Sentence ends: . ! ? (optionally closed by a quote or bracket) followed by white space, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n+")
# A passage shorter than this says too little to point at one item ("Love it.").
MIN_SPAN_WORDS = 4
# About what the encoder reads of a query (max_length 64 tokens); longer sentences are cut, not dropped.
MAX_SPAN_WORDS = 40


def sentence_spans(text: str) -> list[str]:
    """The text's sentences of at least ``MIN_SPAN_WORDS`` words, each cut to ``MAX_SPAN_WORDS``."""
    spans = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if len(words) >= MIN_SPAN_WORDS:
            spans.append(" ".join(words[:MAX_SPAN_WORDS]))
    return spans


def pseudo_queries(item_id: str, text: str, count: int, seed: int = 0) -> list[str]:
    """Up to ``count`` distinct sentences of ``text`` to train on as queries for ``item_id``.

    A text of one sentence (or none long enough) gets none: the item's whole text is already an indexing example.
    """
    if count <= 0:
        return []
    spans = list(dict.fromkeys(sentence_spans(text)))
    if len(spans) < 2:
        return []
    digest = hashlib.sha256(f"{seed}\x1f{item_id}\x1f{text}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:8], "big")).permutation(len(spans))
    return [spans[i] for i in order[:count]]


def pseudo_query_pairs(item_texts: Mapping[str, str], count: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(pseudo-query, item_id) for every item, in the order of ``item_texts``."""
    for item_id, text in item_texts.items():
        for query in pseudo_queries(item_id, text, count, seed):
            yield query, item_id


__all__ = ["MAX_SPAN_WORDS", "MIN_SPAN_WORDS", "pseudo_queries", "pseudo_query_pairs", "sentence_spans"]
