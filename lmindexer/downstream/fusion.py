"""Hybrid ranking: a text ranking, a dense ranking and the generative model's semantic IDs, combined.

Three combinations, each with one configuration for every catalogue (the defaults below, declared once):

- **Score fusion** (:func:`score_fusion`): each ranking's scores are standardised over the candidates it returned
  for the query (minus their mean, divided by their standard deviation), and items are ordered by the weighted sum
  of their standardised scores, equal weights by default; an item a ranking did not return takes that ranking's
  lowest standardised score (it ranked below all of them). Unlike reciprocal rank fusion it keeps how far apart the
  scores are: a document far ahead in one ranking stays ahead after fusion, where ranks would make it only one step
  ahead. Standardising makes the sum independent of each ranking's scale (BM25 scores grow with the query's length,
  cosine similarities do not), so one configuration serves every query and catalogue. Convex combinations of
  normalised scores beat reciprocal rank fusion of the same lexical and dense rankings in Bruch, Gai and Ingber, "An
  Analysis of Fusion Functions for Hybrid Retrieval" (ACM TOIS, 2023); ``serve`` ``mode=hybrid`` fuses this way.
- **Reciprocal rank fusion** (:func:`reciprocal_rank_fusion`): every ranking adds ``1 / (rrf_k + rank)`` to each
  item it ranks; items are ordered by the sum. It needs only ranks, so it fuses BM25, dense and generative lists
  whose scores are on unrelated scales.
- **ID-prefix boost** (:func:`prefix_boosts`, :func:`boosted_scores`): the generative model's beam for a query is
  turned into a probability mass per semantic-ID prefix (the beam's scores, softmax-normalised, summed over the beam
  entries sharing the prefix). A document's score is its text score plus

      weight * top_text_score * mean over levels l of mass_l(the document's level-l prefix)

  so a document whose every prefix holds all of the beam's mass gains ``weight`` times the query's best text score,
  and a document outside every predicted prefix gains nothing. Scaling by the query's own best text score keeps one
  weight meaningful across queries and catalogues whose text scores differ in size. The search engine applies it
  with ``term`` queries on the published ``sid_prefix_<level>`` fields
  (:meth:`lmindexer.search.reader.SearchReader.search_boosted`); :func:`boosted_scores` applies the same formula to
  any text scores (the benchmarks use bm25s), and a test checks that the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lmindexer.errors import ConfigError
from lmindexer.idtable import parse_sid, sid_prefix

# The one configuration of both combinations (no per-catalogue values).
RRF_K = 60
PREFIX_BOOST_WEIGHT = 0.5
# Score fusion weighs every ranking equally: no ranking is assumed better than another on an unseen catalogue.
SCORE_FUSION_WEIGHTS: tuple[float, ...] | None = None


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], *, k: int | None = None, rrf_k: int = RRF_K
) -> list[tuple[str, float]]:
    """Items of all ``rankings`` (each best first) by the sum of ``1 / (rrf_k + rank)``, ties by item_id.

    An item repeated within one ranking counts once, at its best rank. Returns (item_id, fused score) pairs, the
    first ``k`` of them when ``k`` is given.
    """
    if rrf_k < 1:
        raise ConfigError(f"rrf_k must be >= 1, got {rrf_k}")
    _check_rankings(rankings, k, "item_ids")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(dict.fromkeys(ranking), start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (rrf_k + rank)
    order = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    return order if k is None else order[:k]


def _check_rankings(rankings: Sequence[Sequence[object]], k: int | None, entries: str) -> None:
    """Refuse a ``k`` below 1 and a string where a ranking (a sequence of ``entries``) belongs."""
    if k is not None and k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    for ranking in rankings:
        if isinstance(ranking, str):
            raise ConfigError(f"a ranking must be a sequence of {entries}, not the string {ranking!r}")


def standardised(scores: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Each item's score minus the mean over ``scores``, divided by their standard deviation (1 when they are all
    equal). An item repeated in ``scores`` keeps its first score, which is its best in a ranking best first."""
    firsts: dict[str, float] = {}
    for item_id, score in scores:
        if not math.isfinite(score):
            raise ConfigError(f"score fusion needs finite scores; {item_id!r} has {score}")
        firsts.setdefault(item_id, float(score))
    if not firsts:
        return {}
    mean = math.fsum(firsts.values()) / len(firsts)
    deviation = math.sqrt(math.fsum((score - mean) ** 2 for score in firsts.values()) / len(firsts))
    scale = deviation if deviation > 0 else 1.0
    return {item_id: (score - mean) / scale for item_id, score in firsts.items()}


def score_fusion(
    rankings: Sequence[Sequence[tuple[str, float]]],
    *,
    k: int | None = None,
    weights: Sequence[float] | None = SCORE_FUSION_WEIGHTS,
) -> list[tuple[str, float]]:
    """Items of all ``rankings`` ((item_id, score) pairs, higher is better) by the weighted sum of their standardised
    scores (:func:`standardised`), ties by item_id.

    ``weights`` (one per ranking, each >= 0, not all 0) are divided by their sum; None weighs the rankings equally.
    An item missing from a ranking takes that ranking's lowest standardised score; an empty ranking adds 0 to every
    item, so it changes no order.
    Returns (item_id, fused score) pairs, the first ``k`` of them when ``k`` is given.
    """
    _check_rankings(rankings, k, "(item_id, score) pairs")
    chosen = [1.0] * len(rankings) if weights is None else [float(w) for w in weights]
    if len(chosen) != len(rankings):
        raise ConfigError(f"score fusion got {len(chosen)} weights for {len(rankings)} rankings")
    if any(not math.isfinite(w) or w < 0 for w in chosen) or (rankings and sum(chosen) <= 0):
        raise ConfigError(f"score fusion weights must be finite, >= 0 and not all 0, got {list(chosen)}")
    total = sum(chosen)
    legs = [(weight / total, standardised(ranking)) for weight, ranking in zip(chosen, rankings, strict=True)]
    floors = [min(scores.values(), default=0.0) for _, scores in legs]
    items = dict.fromkeys(item_id for _, scores in legs for item_id in scores)
    fused = {
        item_id: math.fsum(
            weight * scores.get(item_id, floor) for (weight, scores), floor in zip(legs, floors, strict=True)
        )
        for item_id in items
    }
    order = sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
    return order if k is None else order[:k]


@dataclass(frozen=True)
class PrefixBoosts:
    """What to add to a document's text score for each semantic-ID prefix it has.

    ``boosts[level][prefix]`` is in units of the query's best text score: the engine and :func:`boosted_scores`
    multiply it by that score. ``levels`` is the number of code levels of the ID space.
    """

    levels: int
    boosts: Mapping[int, Mapping[str, float]]

    def is_empty(self) -> bool:
        return not any(self.boosts.values())

    def of(self, codes: Sequence[int]) -> float:
        """The boost (in units of the best text score) of a document with these codes."""
        return sum(self.boosts.get(level, {}).get(sid_prefix(codes, level), 0.0) for level in range(1, self.levels + 1))


def prefix_boosts(
    beam: Sequence[tuple[str, float]], *, weight: float = PREFIX_BOOST_WEIGHT, levels: int | None = None
) -> PrefixBoosts:
    """The prefix boosts of one query from its generative beam: (semantic ID, log-probability) pairs.

    The beam's log-probabilities are softmax-normalised over the beam, so the masses at each level sum to 1; each
    level carries ``weight / levels`` of the boost. ``levels`` defaults to the beam's code levels (all IDs of one
    ID space have the same number).
    """
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"the prefix boost weight must be a finite number >= 0, got {weight}")
    parsed = [(parse_sid(sid)[0], float(score)) for sid, score in beam]
    if not parsed:
        return PrefixBoosts(levels or 1, {})
    found_levels = {len(codes) for codes, _ in parsed}
    if len(found_levels) != 1:
        raise ConfigError(f"the beam mixes semantic IDs of {sorted(found_levels)} code levels")
    levels = levels or found_levels.pop()
    top = max(score for _, score in parsed)
    if not math.isfinite(top):
        raise ConfigError("the beam's scores must be finite log-probabilities")
    exps = [math.exp(score - top) for _, score in parsed]
    total = sum(exps)
    boosts: dict[int, dict[str, float]] = {level: {} for level in range(1, levels + 1)}
    for (codes, _), mass in zip(parsed, exps, strict=True):
        for level in range(1, levels + 1):
            prefix = sid_prefix(codes, level)
            boosts[level][prefix] = boosts[level].get(prefix, 0.0) + weight * mass / total / levels
    return PrefixBoosts(levels, boosts)


def boosted_scores(
    text_scores: Mapping[str, float], codes: Mapping[str, Sequence[int]], boosts: PrefixBoosts
) -> dict[str, float]:
    """Text score plus prefix boost for every item that has either (the formula the engine applies).

    ``text_scores`` holds the items the text search matched (score > 0); ``codes`` every item's codes. An item with
    no text match but a boosted prefix is a candidate too, scored by its boost alone.
    """
    scale = max(text_scores.values(), default=0.0)
    scale = scale if scale > 0 else 1.0  # no text match: the boosts alone rank, in their own units
    scores = {item_id: float(score) for item_id, score in text_scores.items()}
    if boosts.is_empty():
        return scores
    for item_id, item_codes in codes.items():
        boost = boosts.of(item_codes)
        if boost > 0:
            scores[item_id] = scores.get(item_id, 0.0) + scale * boost
    return scores


def top_items(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` best item_ids by score, ties by item_id."""
    return [item_id for item_id, _ in sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:k]]


def prefix_terms(boosts: PrefixBoosts, scale: float) -> Iterable[tuple[int, str, float]]:
    """(level, prefix, boost) for each boosted prefix, the boost multiplied by ``scale`` (the best text score)."""
    for level in sorted(boosts.boosts):
        for prefix, boost in sorted(boosts.boosts[level].items()):
            if boost > 0:
                yield level, prefix, scale * boost
