"""Hybrid rankings: score fusion, reciprocal rank fusion and the ID-prefix boost."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmindexer.downstream.fusion import (
    PREFIX_BOOST_WEIGHT,
    boosted_scores,
    prefix_boosts,
    prefix_terms,
    reciprocal_rank_fusion,
    score_fusion,
    standardised,
    top_items,
)
from lmindexer.errors import ConfigError

rankings = st.lists(st.lists(st.sampled_from([f"i{n}" for n in range(12)]), max_size=12), max_size=4)


def test_reciprocal_rank_fusion_sums_one_over_rrf_k_plus_rank():
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], rrf_k=60))
    assert fused == pytest.approx({"a": 1 / 61 + 1 / 62, "b": 1 / 62, "c": 1 / 63 + 1 / 61})
    assert [item for item, _ in reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]])] == ["a", "c", "b"]


def test_an_item_ranked_by_more_lists_beats_one_ranked_first_by_one_list():
    # "b" is second in all three lists, "a" first in one: agreement wins (the point of fusing).
    fused = reciprocal_rank_fusion([["a", "b"], ["c", "b"], ["d", "b"]], k=1)
    assert fused[0][0] == "b"


@given(rankings)
def test_fusion_ranks_every_item_once_best_first_with_ties_by_item_id(lists):
    fused = reciprocal_rank_fusion(lists)
    items = [item for item, _ in fused]
    assert sorted(items) == sorted({item for ranking in lists for item in ranking})
    keys = [(-score, item) for item, score in fused]
    assert keys == sorted(keys)
    # A repeat within one list counts once, at its best rank: the score is at most one full term per list.
    assert all(score <= len(lists) / 61 + 1e-12 for _, score in fused)


def test_fusion_refuses_a_string_as_a_ranking_and_bad_constants():
    with pytest.raises(ConfigError, match="not the string"):
        reciprocal_rank_fusion(["abc"])
    with pytest.raises(ConfigError, match="rrf_k"):
        reciprocal_rank_fusion([["a"]], rrf_k=0)
    with pytest.raises(ConfigError, match="k must be"):
        reciprocal_rank_fusion([["a"]], k=0)


def test_score_fusion_sums_equally_weighted_standardised_scores():
    text = [("a", 30.0), ("b", 20.0), ("c", 10.0)]
    dense = [("b", 0.9), ("a", 0.5), ("d", 0.4)]
    sd_text, sd_dense = math.sqrt(200 / 3), math.sqrt((0.9**2 + 0.5**2 + 0.4**2) / 3 - 0.6**2)
    z_text = {"a": 10 / sd_text, "b": 0.0, "c": -10 / sd_text}
    z_dense = {"b": 0.3 / sd_dense, "a": -0.1 / sd_dense, "d": -0.2 / sd_dense}
    # An item a ranking did not return takes that ranking's lowest standardised score.
    expected = {
        "a": (z_text["a"] + z_dense["a"]) / 2,
        "b": (z_text["b"] + z_dense["b"]) / 2,
        "c": (z_text["c"] + z_dense["d"]) / 2,
        "d": (z_text["c"] + z_dense["d"]) / 2,
    }
    fused = score_fusion([text, dense])
    assert dict(fused) == pytest.approx(expected)
    assert [item for item, _ in fused] == ["b", "a", "c", "d"]  # c and d tie: by item_id


def test_score_fusion_keeps_a_wide_lead_that_rank_fusion_flattens():
    # "a" is far ahead in the text ranking and a hair behind in the dense one: ranks put "b" (second in text,
    # first in dense) ahead of it; scores keep a's lead.
    text = [("a", 50.0), ("b", 10.0), ("c", 9.0), ("d", 8.0)]
    dense = [("b", 0.80), ("c", 0.795), ("a", 0.79), ("d", 0.1)]
    assert score_fusion([text, dense], k=1)[0][0] == "a"
    assert reciprocal_rank_fusion([[i for i, _ in text], [i for i, _ in dense]], k=1)[0][0] == "b"


@given(
    # Scores on a grid: rescaling scores that differ by less than the offset's rounding error is not a question of
    # fusion but of floating point.
    st.lists(st.tuples(st.sampled_from([f"i{n}" for n in range(12)]), st.integers(-50, 50).map(float)), max_size=12),
    st.lists(
        st.tuples(st.sampled_from([f"i{n}" for n in range(12)]), st.integers(-100, 100).map(lambda x: x / 100)),
        max_size=12,
    ),
    st.floats(0.01, 1000),
    st.floats(-1000, 1000),
)
def test_score_fusion_does_not_depend_on_a_rankings_scale_or_offset(text, dense, scale, offset):
    """Standardising is what lets one configuration fuse BM25 scores (any size) with cosine similarities."""
    rescaled = [(item, scale * score + offset) for item, score in text]
    original, moved = score_fusion([text, dense]), score_fusion([rescaled, dense])
    assert dict(moved) == pytest.approx(dict(original), abs=1e-6)
    assert sorted(item for item, _ in original) == sorted({item for item, _ in text + dense})
    keys = [(-score, item) for item, score in original]
    assert keys == sorted(keys)


def test_score_fusion_weights_and_degenerate_rankings():
    text, dense = [("a", 2.0), ("b", 1.0)], [("b", 0.9), ("a", 0.1)]
    assert score_fusion([text, dense], weights=[1, 0])[0][0] == "a"
    assert score_fusion([text, dense], weights=[0, 3])[0][0] == "b"
    # Equal scores standardise to 0; an empty ranking changes no order; a repeat keeps its first (best) score.
    assert standardised([("a", 5.0), ("b", 5.0)]) == {"a": 0.0, "b": 0.0}
    assert [item for item, _ in score_fusion([text, []])] == [item for item, _ in score_fusion([text])] == ["a", "b"]
    assert standardised([("a", 3.0), ("b", 1.0), ("a", 0.0)]) == {"a": 1.0, "b": -1.0}
    assert score_fusion([]) == []


def test_score_fusion_refuses_bad_weights_scores_and_rankings():
    with pytest.raises(ConfigError, match="2 weights for 1 rankings"):
        score_fusion([[("a", 1.0)]], weights=[1, 1])
    with pytest.raises(ConfigError, match="not all 0"):
        score_fusion([[("a", 1.0)]], weights=[0])
    with pytest.raises(ConfigError, match="not all 0"):
        score_fusion([[("a", 1.0)]], weights=[-1])
    with pytest.raises(ConfigError, match="finite scores"):
        score_fusion([[("a", math.nan)]])
    with pytest.raises(ConfigError, match="not the string"):
        score_fusion(["ab"])
    with pytest.raises(ConfigError, match="k must be"):
        score_fusion([[("a", 1.0)]], k=0)


def test_prefix_boosts_split_the_beams_probability_mass_over_each_level():
    beam = [("1-2-3-0", math.log(0.5)), ("1-2-4-0", math.log(0.3)), ("5-0-0-1", math.log(0.2))]
    boosts = prefix_boosts(beam, weight=0.6)
    assert boosts.levels == 3
    per_level = 0.6 / 3
    assert boosts.boosts[1] == pytest.approx({"1": 0.8 * per_level, "5": 0.2 * per_level})
    assert boosts.boosts[2] == pytest.approx({"1-2": 0.8 * per_level, "5-0": 0.2 * per_level})
    assert boosts.boosts[3] == pytest.approx(
        {"1-2-3": 0.5 * per_level, "1-2-4": 0.3 * per_level, "5-0-0": 0.2 * per_level}
    )
    # The suffix is never a prefix: an item is boosted by its codes.
    assert boosts.of((1, 2, 3)) == pytest.approx((0.8 + 0.8 + 0.5) * per_level)
    assert boosts.of((1, 9, 9)) == pytest.approx(0.8 * per_level)
    assert boosts.of((7, 7, 7)) == 0.0


@given(st.lists(st.tuples(st.lists(st.integers(0, 3), min_size=2, max_size=2), st.floats(-30, 0)), max_size=10))
def test_prefix_boost_masses_sum_to_the_weight_at_every_level(entries):
    beam = [(f"{a}-{b}-0", score) for (a, b), score in entries]
    boosts = prefix_boosts(beam)
    for level in range(1, 3):
        assert sum(boosts.boosts.get(level, {}).values()) == pytest.approx(PREFIX_BOOST_WEIGHT / 2 if beam else 0)


def test_prefix_boosts_refuse_mixed_levels_and_bad_weights():
    with pytest.raises(ConfigError, match="code levels"):
        prefix_boosts([("1-2-0", -1.0), ("1-2-3-0", -1.0)])
    with pytest.raises(ConfigError, match="weight"):
        prefix_boosts([("1-2-0", -1.0)], weight=-1)
    assert prefix_boosts([]).is_empty()


def test_boosted_scores_add_the_boost_in_units_of_the_best_text_score():
    codes = {"a": (1, 2), "b": (1, 3), "c": (4, 4), "d": (1, 2)}
    boosts = prefix_boosts([("1-2-0", 0.0)], weight=1.0)  # all mass on 1-2: level 1 "1", level 2 "1-2"
    scores = boosted_scores({"a": 2.0, "c": 10.0}, codes, boosts)
    assert scores == pytest.approx({"a": 2.0 + 10.0, "b": 10.0 * 0.5, "c": 10.0, "d": 10.0})
    # d matched no word: it comes in on its prefixes alone; c (the best text match) keeps its score.
    assert top_items(scores, 2) == ["a", "c"]
    # No text match at all: the boosts rank by themselves.
    assert top_items(boosted_scores({}, codes, boosts), 3) == ["a", "d", "b"]
    # No boosts: the text ranking is unchanged.
    assert boosted_scores({"a": 2.0}, codes, prefix_boosts([])) == {"a": 2.0}


def test_prefix_terms_scale_each_boost_and_skip_empty_ones():
    boosts = prefix_boosts([("3-1-0", 0.0)], weight=0.5)
    assert list(prefix_terms(boosts, 4.0)) == [(1, "3", 1.0), (2, "3-1", 1.0)]
