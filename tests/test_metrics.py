"""Metric values checked by hand on tiny label sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmindexer.metrics import (
    collision_stats,
    evaluate_codes,
    expected_mutual_information,
    label_agreement,
    level_usage,
    mutual_information_scores,
    prefix_groups,
)


def test_prefix_groups():
    codes = np.array([[0, 1], [0, 2], [1, 1], [0, 1]])
    assert prefix_groups(codes, 1).tolist() == [0, 0, 1, 0]
    assert prefix_groups(codes, 2).tolist() == [0, 1, 2, 0]


def test_agreement_perfect_and_independent():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    perfect = label_agreement(codes, ["x", "x", "y", "y"])
    assert perfect[0]["ami"] == pytest.approx(1.0)
    assert perfect[0]["nmi"] == pytest.approx(1.0)
    assert perfect[0]["prefixes"] == 2
    # level 2 splits each label in two: H(labels)=1 bit, H(groups)=2 bits, I=1 bit -> NMI = 2*1/(1+2)
    assert perfect[1]["nmi"] == pytest.approx(2 / 3)
    independent = label_agreement(codes, ["x", "y", "x", "y"])
    assert independent[0]["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert independent[0]["ami"] <= 0.0


def test_nmi_by_hand():
    # labels a a b b, groups 0 0 0 1: I = H(L) - H(L|G) = 1 - 3/4 * H(1/3) bits
    codes = np.array([[0], [0], [0], [1]])
    h = lambda ps: -sum(p * math.log(p) for p in ps if p)  # noqa: E731
    mutual = h([0.5, 0.5]) - 0.75 * h([1 / 3, 2 / 3])
    expected = mutual / ((h([0.5, 0.5]) + h([0.75, 0.25])) / 2)
    assert label_agreement(codes, ["a", "a", "b", "b"])[0]["nmi"] == pytest.approx(expected)


def test_collision_stats_by_hand():
    codes = np.array([[1, 1], [1, 1], [1, 1], [2, 0], [2, 0], [3, 3]])
    stats = collision_stats(codes)
    assert stats == {"collision_rate": 5 / 6, "largest_bucket": 3, "distinct_tuples": 3, "items": 6}
    assert collision_stats(np.array([[0, 1], [1, 0]]))["collision_rate"] == 0.0
    assert collision_stats(np.zeros((0, 2), dtype=int))["items"] == 0


def test_level_usage_by_hand():
    codes = np.array([[0, 0], [1, 0], [0, 0], [1, 0]])
    level1, level2 = level_usage(codes, (4, 2))
    assert level1["used"] == 2
    assert level1["utilisation"] == 0.5
    assert level1["perplexity"] == pytest.approx(2.0)
    assert level1["entropy_bits"] == pytest.approx(1.0)
    assert level1["counts"] == [2, 2, 0, 0]
    assert level2["perplexity"] == pytest.approx(1.0)
    assert level2["utilisation"] == 0.5


def test_evaluate_codes_skips_unlabelled_items():
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    report = evaluate_codes(codes, (2, 2), ["x", "x", None, "y"], label_name="category")
    assert report.labelled_items == 3
    assert report.agreement[0]["ami"] == pytest.approx(1.0)
    markdown = report.to_markdown()
    assert "| 1 | 1.0000 | 1.0000 | 2 | 2 / 2 | 100.0% | 2.0 |" in markdown
    assert "Collision rate" in markdown
    assert "counts" not in report.to_dict()["levels"][0]
    assert "counts" in report.to_dict(with_counts=True)["levels"][0]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(0, 3)), min_size=1, max_size=60),
    names=st.lists(st.sampled_from(["a", "b", "c", 7, 2.5]), min_size=60, max_size=60),
)
def test_prefix_groups_and_agreement_equal_the_row_wise_definitions(rows, names):
    """Prefixes are numbered through one integer key per row and labels scored as integers (for speed on a
    million items); both must give exactly what a row-wise unique and scoring the raw labels give."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    codes = np.asarray(rows, dtype=np.int64)
    labels = names[: len(codes)]
    for level in range(1, 4):
        _, expected = np.unique(codes[:, :level], axis=0, return_inverse=True)
        assert prefix_groups(codes, level).tolist() == expected.reshape(-1).tolist()
    raw = [str(label) for label in labels]
    for row in label_agreement(codes, labels):
        groups = prefix_groups(codes, row["level"])
        assert row["ami"] == pytest.approx(adjusted_mutual_info_score(raw, groups), abs=1e-12)
        assert row["nmi"] == pytest.approx(normalized_mutual_info_score(raw, groups), abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 5, -3, 2**40]), st.sampled_from([0, 3, 4, 9, -1, 2**33])),
        min_size=1,
        max_size=80,
    ),
    small=st.booleans(),
)
def test_mutual_information_scores_equal_scikit_learn_on_any_integer_labels(pairs, small):
    """Labels are numbered by counting when they are small non-negative integers and by sorting otherwise
    (negative or huge ones); the contingency table is counted in one pass. AMI and NMI must be scikit-learn's
    either way, and the table exactly scikit-learn's sparse one."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    from lmindexer.metrics import _contingency, _numbered

    truth = np.array([a for a, _ in pairs], dtype=np.int64)
    groups = np.array([b for _, b in pairs], dtype=np.int64)
    if small:
        truth, groups = np.abs(truth) % 7, np.abs(groups) % 11
    ami, nmi = mutual_information_scores(truth, groups)
    assert ami == pytest.approx(adjusted_mutual_info_score(truth, groups), abs=1e-12)
    assert nmi == pytest.approx(normalized_mutual_info_score(truth, groups), abs=1e-12)
    truth_ids, truth_counts = _numbered(truth)
    group_ids, group_counts = _numbered(groups)
    assert truth_ids.tolist() == np.unique(truth, return_inverse=True)[1].tolist()
    assert truth_counts.tolist() == np.unique(truth, return_counts=True)[1].tolist()
    ours = _contingency(truth_ids, group_ids, len(truth_counts), len(group_counts))
    theirs = contingency_matrix(truth, groups, sparse=True)
    assert ours.shape == theirs.shape
    assert (ours.indptr.tolist(), ours.indices.tolist(), ours.data.tolist()) == (
        theirs.indptr.tolist(), theirs.indices.tolist(), theirs.data.tolist())  # fmt: skip


def _sklearn_emi(row_sizes, column_sizes):
    """scikit-learn's expected mutual information for clusters of these sizes (a contingency table that has them
    as its margins: only the margins enter the expectation)."""
    from scipy.sparse import coo_matrix
    from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information as reference

    rows, columns, cells = [], [], []
    row_left, column_left = list(row_sizes), list(column_sizes)
    i = j = 0
    while i < len(row_left) and j < len(column_left):  # fill the table greedily, north-west corner rule
        take = min(row_left[i], column_left[j])
        rows.append(i), columns.append(j), cells.append(take)
        row_left[i] -= take
        column_left[j] -= take
        i += row_left[i] == 0
        j += column_left[j] == 0
    table = coo_matrix((cells, (rows, columns)), shape=(len(row_sizes), len(column_sizes))).tocsr()
    return reference(table, int(sum(row_sizes)))


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), min_size=2, max_size=40), split=st.integers(1, 39), seed=st.integers(0, 9))
def test_expected_mutual_information_equals_scikit_learn(sizes, split, seed):
    """AMI's expected mutual information is computed once per distinct pair of cluster sizes and only over the
    counts with non-negligible probability; it must equal scikit-learn's sum over every pair and every count."""
    split = max(1, min(split, len(sizes) - 1))
    rows = sizes[:split]
    total = sum(rows)
    # columns: another partition of the same items, with repeated sizes (as prefixes of a big catalogue have)
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, total), size=min(len(sizes) - split, total - 1), replace=False))
    columns = np.diff(np.concatenate([[0], cuts, [total]])).tolist()
    ours = expected_mutual_information(np.array(rows), np.array(columns), total)
    assert ours == pytest.approx(_sklearn_emi(rows, columns), rel=1e-9, abs=1e-12)


def test_expected_mutual_information_of_large_clusters_leaves_out_only_negligible_counts():
    """Clusters of thousands of items, where only counts near the mean are summed (the first level of a large
    catalogue): still scikit-learn's value."""
    rows = [60_000, 25_000, 9_000, 5_000, 1_000]
    columns = [20_000] * 4 + [12_000, 5_000, 2_500, 500]
    ours = expected_mutual_information(np.array(rows), np.array(columns), sum(rows))
    assert ours == pytest.approx(_sklearn_emi(rows, columns), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), min_size=1, max_size=50),
    names=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=50, max_size=50),
)
def test_an_arrow_label_column_scores_as_the_same_labels_in_python(rows, names):
    """The pipeline hands a catalogue's label column over as Arrow (no Python object per item on a million items);
    every metric must be what the same labels give as a Python list, unlabelled rows skipped alike; and the
    collision counts (one integer key per tuple) what a row-wise unique counts."""
    import pyarrow as pa

    codes = np.asarray(rows, dtype=np.int64)
    labels = names[: len(codes)]
    as_python = evaluate_codes(codes, (4, 10), labels)
    as_arrow = evaluate_codes(codes, (4, 10), pa.chunked_array([labels[:3], labels[3:]], pa.string()))
    assert as_arrow.to_dict() == as_python.to_dict()
    _, counts = np.unique(codes, axis=0, return_counts=True)
    stats = collision_stats(codes)
    assert (stats["largest_bucket"], stats["distinct_tuples"]) == (counts.max(), len(counts))
    assert stats["collision_rate"] == counts[counts > 1].sum() / len(codes)
