"""Ranking metrics checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lmindexer.downstream.ranking import mrr_at_k, ndcg_at_k, rank_metrics, recall_at_k
from lmindexer.errors import ConfigError


def test_recall_counts_hits_in_the_top_k_over_all_relevant():
    ranked = ["a", "x", "b", "y", "c"]
    relevant = {"a", "b", "c", "d"}
    assert recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 4)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 4)
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(2 / 4)
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(3 / 4)
    # k beyond the list length just looks at the whole list
    assert recall_at_k(ranked, relevant, 50) == pytest.approx(3 / 4)
    assert recall_at_k([], relevant, 10) == 0.0


def test_ndcg_with_two_relevant_items_one_at_rank_three():
    ranked = ["x", "y", "a", "z"]
    relevant = {"a", "b"}
    expected = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx(expected)
    # at k=2 the hit is cut off
    assert ndcg_at_k(ranked, relevant, 2) == 0.0


def test_ndcg_of_a_perfect_ranking_is_one():
    assert ndcg_at_k(["a", "b", "x"], {"a", "b"}, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a"], {"a", "b"}, 10) == pytest.approx(1.0)


def test_ideal_dcg_comes_from_the_ground_truth_not_the_retrieved_list():
    # One of three relevant items at rank 1: an IDCG built from the retrieved list would give exactly 1.
    ranked = ["a", "x", "y"]
    relevant = {"a", "b", "c"}
    expected = 1 / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(expected)
    assert ndcg_at_k(ranked, relevant, 3) < 1.0
    # the ideal list is truncated at k: with k=1 a hit at rank 1 is perfect
    assert ndcg_at_k(ranked, relevant, 1) == pytest.approx(1.0)
    # k=2: ideal is two hits, the list has one at rank 1
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_mrr_uses_the_first_relevant_item_within_the_cut_off():
    ranked = ["x", "y", "a", "b"]
    relevant = {"a", "b"}
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, relevant, 2) == 0.0
    assert mrr_at_k(["a"], relevant, 1) == 1.0


def test_duplicates_count_only_at_their_first_occurrence():
    relevant = {"a", "b"}
    ranked = ["a", "a", "a", "b"]
    # the repeats of "a" are not hits but still take positions 2 and 3
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(1 / 2)
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 2)
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    # a single relevant item repeated must not exceed recall 1 or NDCG 1
    assert recall_at_k(["a", "a"], {"a"}, 2) == 1.0
    assert ndcg_at_k(["a", "a"], {"a"}, 2) == pytest.approx(1.0)
    assert mrr_at_k(["x", "x", "a", "a"], {"a"}, 4) == pytest.approx(1 / 3)


def test_rank_metrics_averages_over_queries():
    ranked_lists = [["a", "x", "y"], ["x", "b", "c"], ["x", "y", "z"]]
    relevant_sets = [{"a"}, {"b", "c"}, {"q"}]
    result = rank_metrics(ranked_lists, relevant_sets, recall_ks=(1, 3), ndcg_ks=(3,), mrr_ks=(1, 3))
    assert set(result) == {"recall@1", "recall@3", "ndcg@3", "mrr@1", "mrr@3", "queries"}
    assert result["queries"] == 3
    assert result["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert result["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    second_ndcg = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert result["ndcg@3"] == pytest.approx((1 + second_ndcg + 0) / 3)
    assert result["mrr@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert result["mrr@3"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_rank_metrics_default_keys():
    result = rank_metrics([["a"]], [["a"]])
    assert list(result) == ["recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10", "queries"]
    assert all(result[key] == pytest.approx(1.0) for key in result if key != "queries")


@pytest.mark.parametrize(
    ("ranked_lists", "relevant_sets", "options", "message"),
    [
        ([["a"], ["b"]], [{"a"}], {}, "2 ranked lists but 1 relevant sets"),
        ([], [], {}, "at least one query"),
        ([["a"], ["b"]], [{"a"}, set()], {}, "query 1: relevant must be a non-empty"),
        ([["a"]], [{"a"}], {"recall_ks": (0,)}, "recall k must be an integer >= 1, got 0"),
        ([["a"]], [{"a"}], {"ndcg_ks": (5, -1)}, "ndcg k must be an integer >= 1, got -1"),
        ([["a"]], [{"a"}], {"mrr_ks": (2.5,)}, "mrr k must be an integer >= 1, got 2.5"),
        ([["a"]], ["a"], {}, "query 0: relevant must be a non-empty collection of item_ids, got 'a'"),
    ],
)
def test_rank_metrics_rejects_bad_input(ranked_lists, relevant_sets, options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        rank_metrics(ranked_lists, relevant_sets, **options)


@pytest.mark.parametrize("function", [recall_at_k, ndcg_at_k, mrr_at_k])
def test_per_query_functions_reject_bad_k_and_empty_ground_truth(function):
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        function(["a"], {"a"}, 0)
    with pytest.raises(ConfigError, match="at least one item_id"):
        function(["a"], set(), 5)
    with pytest.raises(ConfigError, match="not the string 'a'"):
        function(["a"], "a", 5)
