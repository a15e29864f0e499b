"""BM25, dense and popularity baselines on real Wikipedia text and hand-checked toys."""

from __future__ import annotations

import numpy as np
import pytest

from lmindexer.catalog import Item
from lmindexer.downstream.baselines import BM25Retriever, DenseRetriever, PopularityRecommender
from lmindexer.errors import ConfigError

BAD_KS = [0, -3, 2.5, True, None]


def _top1_share(results: list[list[str]], expected: list[str]) -> float:
    return sum(ranked[:1] == [item] for ranked, item in zip(results, expected, strict=True)) / len(expected)


@pytest.fixture(scope="module")
def corpus(wiki_items: list[Item]) -> tuple[list[str], list[str], list[str]]:
    """item_ids, bodies and titles; only the body is indexed, so a title query must match the article's text."""
    items = [item for item in wiki_items if item.text and item.title]
    assert len(items) >= 300
    return [i.item_id for i in items], [i.text for i in items], [i.title for i in items]


@pytest.fixture(scope="module")
def bm25(corpus) -> BM25Retriever:
    ids, texts, _ = corpus
    return BM25Retriever.fit(ids, texts)


@pytest.fixture(scope="module")
def dense(corpus) -> DenseRetriever:
    from lmindexer.embeddings import TextEncoder

    ids, texts, _ = corpus
    return DenseRetriever(TextEncoder("all-MiniLM-L6-v2", max_length=128, use_cache=False)).index(ids, texts)


def test_bm25_finds_each_article_by_its_title(bm25, corpus):
    ids, _, titles = corpus
    results = bm25.search(titles, 10)
    # Measured 0.95 on this sample without stemming (misses are plurals such as "Auk" vs "auks", and broad titles).
    assert _top1_share(results, ids) >= 0.9
    assert all(len(ranked) <= 10 and len(set(ranked)) == len(ranked) for ranked in results)
    assert {item for ranked in results for item in ranked} <= set(ids)


def test_bm25_is_deterministic_and_independent_of_corpus_order(bm25, corpus):
    ids, texts, titles = corpus
    first = bm25.search(titles[:50], 5)
    assert bm25.search(titles[:50], 5) == first
    reordered = BM25Retriever.fit(ids[::-1], texts[::-1]).search(titles[:50], 5)
    # Scores do not depend on indexing order; only exact ties could swap places.
    assert sum(a[:1] == b[:1] for a, b in zip(first, reordered, strict=True)) >= 48


def test_bm25_query_without_known_tokens_returns_nothing(bm25):
    assert bm25.search(["qwxzv blorptang", "the of and", "", "0"], 5) == [[], [], [], []]
    assert bm25.search([], 5) == []


def test_bm25_ranks_by_term_matches_and_breaks_ties_by_position():
    bm25 = BM25Retriever.fit(
        ["apple", "banana", "apple-banana", "cherry", "banana-2"],
        ["apple orchard", "banana plantation", "apple and banana smoothie", "cherry tree", "banana plantation"],
    )
    # only items sharing a token are returned, even with k larger than the corpus
    assert bm25.search(["cherry"], 10) == [["cherry"]]
    both = bm25.search(["apple banana"], 10)[0]
    assert both[0] == "apple-banana"
    assert set(both) == {"apple", "banana", "apple-banana", "banana-2"}
    # identical documents score the same: the one indexed first comes first
    assert bm25.search(["plantation"], 10) == [["banana", "banana-2"]]
    assert bm25.search(["plantation"], 1) == [["banana"]]


def test_bm25_match_scores_hold_exactly_the_matching_items_in_search_order():
    bm25 = BM25Retriever.fit(
        ["apple", "banana", "apple-banana", "cherry"],
        ["apple orchard", "banana plantation", "apple and banana smoothie", "cherry tree"],
    )
    scores = bm25.match_scores(["apple banana", "qwxzv"])
    assert set(scores[0]) == {"apple", "banana", "apple-banana"} and scores[1] == {}
    assert all(score > 0 for score in scores[0].values())
    ranked = sorted(scores[0], key=lambda item: -scores[0][item])
    assert ranked[0] == "apple-banana" and bm25.search(["apple banana"], 10)[0][0] == ranked[0]


def test_bm25_of_a_corpus_without_indexable_tokens_returns_nothing():
    assert BM25Retriever.fit(["a", "b"], ["the", "of a"]).search(["the anything"], 3) == [[]]


def test_dense_finds_each_article_by_its_title(dense, corpus):
    ids, _, titles = corpus
    results = dense.search(titles, 10)
    # Measured 0.997 top-1 and 1.0 top-10 on this sample.
    assert _top1_share(results, ids) >= 0.95
    assert sum(item in ranked for ranked, item in zip(results, ids, strict=True)) / len(ids) >= 0.98
    assert all(len(ranked) == 10 and len(set(ranked)) == 10 for ranked in results)
    assert {item for ranked in results for item in ranked} <= set(ids)
    assert dense.search(titles, 10) == results


def test_dense_search_embeddings_matches_search_on_text(dense, corpus):
    _, _, titles = corpus
    queries = titles[:20]
    assert dense.search_embeddings(dense.encoder.encode(queries), 7) == dense.search(queries, 7)
    # asking for more than the index holds returns every item once
    everything = dense.search(queries[:1], 10_000)[0]
    assert sorted(everything) == sorted(dense.item_ids)


def test_dense_on_precomputed_embeddings_ranks_by_inner_product():
    retriever = DenseRetriever(encoder=None)  # type: ignore[arg-type]
    matrix = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    retriever.index_embeddings(["east", "north", "north-east"], matrix)
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)
    # third query: north-east scores 0.6*0.8 + 0.8*0.6 = 0.96, east 0.8, north 0.6
    expected = [["east", "north-east"], ["north", "north-east"], ["north-east", "east"]]
    assert retriever.search_embeddings(queries, 2) == expected
    assert retriever.search_embeddings(queries[:1], 5) == [["east", "north-east", "north"]]
    with pytest.raises(ConfigError, match=r"shape \(n, 2\), got \(1, 3\)"):
        retriever.search_embeddings(np.ones((1, 3), dtype=np.float32), 2)


def test_dense_rejects_bad_index_input():
    retriever = DenseRetriever(encoder=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no index"):
        retriever.search_embeddings(np.ones((1, 2), dtype=np.float32), 1)
    with pytest.raises(ConfigError, match="2 item_ids but 3 embedding rows"):
        retriever.index_embeddings(["a", "b"], np.eye(3, dtype=np.float32))
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        retriever.index_embeddings(["a", "a"], np.eye(2, dtype=np.float32))


def test_bm25_rejects_bad_index_input():
    with pytest.raises(ConfigError, match="2 item_ids but 1 texts"):
        BM25Retriever.fit(["a", "b"], ["text"])
    with pytest.raises(ConfigError, match="item_ids is empty"):
        BM25Retriever.fit([], [])
    with pytest.raises(ConfigError, match=r"repeated: \['a'\]"):
        BM25Retriever.fit(["a", "a"], ["one", "two"])


def test_popularity_counts_every_occurrence_and_breaks_ties_by_item_id():
    histories = [["b", "a", "c"], ["c", "d"], ["c", "b", "b"], ["e"]]
    model = PopularityRecommender().fit(histories)
    assert model.counts == {"c": 3, "b": 3, "a": 1, "d": 1, "e": 1}
    # c and b tie on 3 -> b first; a, d, e tie on 1 -> alphabetical
    assert model.recommend([["x"]], 10) == [["b", "c", "a", "d", "e"]]
    recommended = model.recommend([["b", "c"], []], 3)
    # history items are not excluded, and every user gets the same list
    assert recommended == [["b", "c", "a"], ["b", "c", "a"]]
    recommended[0].append("mutated")
    assert model.recommend([[]], 3) == [["b", "c", "a"]]


def test_popularity_can_leave_out_what_a_user_has_seen():
    model = PopularityRecommender().fit([["b", "a", "c"], ["c", "d"], ["c", "b", "b"], ["e"]])
    histories = [["b", "x"], ["c", "b", "a", "d"], ["b", "c", "a", "d", "e"], []]
    # Off (the default), the seen b comes back first; on, no seen item ever does, and the next ones fill the list.
    assert model.recommend(histories[:1], 2) == [["b", "c"]]
    assert model.recommend(histories, 2, exclude_seen=True) == [["c", "a"], ["e"], [], ["b", "c"]]


def test_popularity_rejects_bad_input():
    with pytest.raises(ConfigError, match="not fitted"):
        PopularityRecommender().recommend([["a"]], 3)
    with pytest.raises(ConfigError, match="without any item"):
        PopularityRecommender().fit([[], []])
    with pytest.raises(ConfigError, match="not the string 'abc'"):
        PopularityRecommender().fit(["abc"])


@pytest.mark.parametrize("k", BAD_KS)
def test_bad_k_is_rejected(k):
    bm25 = BM25Retriever.fit(["a"], ["apple"])
    dense = DenseRetriever(encoder=None).index_embeddings(["a"], np.eye(1, dtype=np.float32))  # type: ignore[arg-type]
    popularity = PopularityRecommender().fit([["a"]])
    message = f"k must be an integer >= 1, got {k!r}"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        bm25.search(["apple"], k)
    with pytest.raises(ConfigError, match=message):
        dense.search(["apple"], k)
    with pytest.raises(ConfigError, match=message):
        dense.search_embeddings(np.eye(1, dtype=np.float32), k)
    with pytest.raises(ConfigError, match=message):
        popularity.recommend([["a"]], k)
