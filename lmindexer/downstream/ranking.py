"""Ranking metrics (Recall@k, NDCG@k, MRR@k) for retrieval and recommendation, with binary relevance.

``ranked`` is a list of item_ids, best first; ``relevant`` is the non-empty ground truth of one query.
The top k is the first k positions of ``ranked`` as returned. A repeated item_id keeps its position but only its first
occurrence can be a hit: a model that emits the same item twice spends a slot on it rather than being credited twice.
The ideal DCG is computed from the ground truth (``min(|relevant|, k)`` hits at the top), never from the retrieved
list, so retrieving only some of the relevant items cannot give NDCG 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

from lmindexer.errors import ConfigError


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an integer >= 1, got {k!r}")


def _relevant_set(relevant: Collection[str]) -> frozenset[str]:
    # A bare string is a collection of characters: accepting it would silently score against single letters.
    if isinstance(relevant, str):
        raise ConfigError(f"relevant must be a collection of item_ids, not the string {relevant!r}")
    result = frozenset(relevant)
    if not result:
        raise ConfigError("relevant must contain at least one item_id, got an empty collection")
    return result


def _check_ranked(ranked: Sequence[str]) -> None:
    if isinstance(ranked, str):
        raise ConfigError(f"ranked must be a sequence of item_ids, not the string {ranked!r}")


def _hit_positions(ranked: Sequence[str], relevant: frozenset[str], k: int) -> list[int]:
    """0-based positions within the top ``k`` that hold the first occurrence of a relevant item."""
    seen: set[str] = set()
    positions = []
    for position, item in enumerate(ranked[:k]):
        if item in seen:
            continue
        seen.add(item)
        if item in relevant:
            positions.append(position)
    return positions


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the top ``k``."""
    _check_k(k)
    _check_ranked(ranked)
    truth = _relevant_set(relevant)
    return len(_hit_positions(ranked, truth, k)) / len(truth)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """DCG of the top ``k`` divided by the DCG of an ideal ranking of the ground truth."""
    _check_k(k)
    _check_ranked(ranked)
    truth = _relevant_set(relevant)
    dcg = math.fsum(1.0 / math.log2(position + 2) for position in _hit_positions(ranked, truth, k))
    ideal = math.fsum(1.0 / math.log2(position + 2) for position in range(min(len(truth), k)))
    return dcg / ideal


def mrr_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Reciprocal rank of the first relevant item in the top ``k``; 0 when there is none."""
    _check_k(k)
    _check_ranked(ranked)
    positions = _hit_positions(ranked, _relevant_set(relevant), k)
    return 1.0 / (positions[0] + 1) if positions else 0.0


def rank_metrics(
    ranked_lists: Sequence[Sequence[str]],
    relevant_sets: Sequence[Collection[str]],
    *,
    recall_ks: Iterable[int] = (1, 5, 10),
    ndcg_ks: Iterable[int] = (5, 10),
    mrr_ks: Iterable[int] = (10,),
) -> dict[str, float]:
    """Mean of each metric over the queries, keyed ``recall@K``, ``ndcg@K``, ``mrr@K``, plus ``queries`` (the count).

    Everything is checked before anything is computed, so a bad value fails fast rather than after a long run.
    """
    if len(ranked_lists) != len(relevant_sets):
        raise ConfigError(f"{len(ranked_lists)} ranked lists but {len(relevant_sets)} relevant sets; they must match")
    if not ranked_lists:
        raise ConfigError("rank_metrics needs at least one query, got none")
    metrics = {
        "recall": (recall_at_k, list(recall_ks)),
        "ndcg": (ndcg_at_k, list(ndcg_ks)),
        "mrr": (mrr_at_k, list(mrr_ks)),
    }
    for name, (_, ks) in metrics.items():
        for k in ks:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"{name} k must be an integer >= 1, got {k!r}")
    for query, relevant in enumerate(relevant_sets):
        if isinstance(relevant, str) or not relevant:
            raise ConfigError(f"query {query}: relevant must be a non-empty collection of item_ids, got {relevant!r}")
    for query, ranked in enumerate(ranked_lists):
        if isinstance(ranked, str):
            raise ConfigError(f"query {query}: ranked must be a sequence of item_ids, not the string {ranked!r}")

    result: dict[str, float] = {}
    for name, (function, ks) in metrics.items():
        for k in ks:
            scores = [function(r, t, k) for r, t in zip(ranked_lists, relevant_sets, strict=True)]
            result[f"{name}@{k}"] = math.fsum(scores) / len(scores)
    result["queries"] = len(ranked_lists)
    return result
