"""Quality metrics of semantic IDs.

- AMI / NMI of each prefix level against a label (do items that share a prefix share a label?), as scikit-learn
  defines them (its contingency table and mutual information; the expected mutual information of AMI computed here,
  at a cost that does not grow with the number of items: see :func:`expected_mutual_information`);
- collision rate: the share of items whose learned code tuple is shared with another item (before the suffix);
- largest bucket: the most items sharing one code tuple;
- per-level utilisation (codes used / K) and perplexity (exp of the code distribution's entropy; K at best).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from scipy.special import gammaln
from sklearn.metrics import mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def prefix_groups(codes: np.ndarray, level: int) -> np.ndarray:
    """Integer group labels of the first ``level`` codes of each row, numbered in lexicographic order of the
    prefixes (as a row-wise ``np.unique`` numbers them)."""
    if level < 1 or level > codes.shape[1]:
        raise ValueError(f"level must be in 1..{codes.shape[1]}, got {level}")
    prefix = np.asarray(codes[:, :level], dtype=np.int64)
    if len(prefix) and prefix.min() >= 0:
        radices = prefix.max(axis=0) + 1
        if float(np.prod(radices.astype(np.float64))) < 2**62:
            # One integer per prefix (mixed radix), in the same lexicographic order as a row-wise unique: seconds
            # less on a million rows.
            keys = np.zeros(len(prefix), dtype=np.int64)
            for column, radix in enumerate(radices):
                keys = keys * int(radix) + prefix[:, column]
            return _numbered(keys)[0]
    _, groups = np.unique(prefix, axis=0, return_inverse=True)
    return groups.reshape(-1)


# Integer labels below this bound (or below a few times the number of labels) are numbered by counting rather
# than sorting: an array of this many counters is cheap beside sorting a million labels.
_COUNTING_BOUND = 1 << 22


def _numbered(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` renumbered 0..distinct-1 in increasing order (``np.unique``'s inverse), and each number's count.
    Non-negative integers below a bound are counted in one pass (``np.bincount``); anything else is sorted."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind in "iu" and len(labels) and labels.min() >= 0:
        bound = int(labels.max()) + 1
        if bound <= max(_COUNTING_BOUND, 4 * len(labels)):
            counts = np.bincount(labels, minlength=bound)
            number = np.cumsum(counts > 0) - 1
            return number[labels], counts[counts > 0]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


Labels = Sequence[Any] | pa.Array | pa.ChunkedArray


def _label_ids(labels: Labels) -> np.ndarray:
    """Labels as integers numbered by first appearance: the agreement scores do not depend on the labels' names,
    and scoring integers spares each of the 2 x L scores converting a million strings again. An Arrow column is
    numbered by Arrow (its dictionary encoding numbers values by first appearance too), with no Python pass."""
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if isinstance(labels, pa.Array):
        return pc.dictionary_encode(labels, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    numbers: dict[Any, int] = {}
    return np.fromiter((numbers.setdefault(label, len(numbers)) for label in labels), dtype=np.int64, count=len(labels))


def label_agreement(codes: np.ndarray, labels: Labels) -> list[dict[str, float]]:
    """AMI and NMI of every prefix level against ``labels`` (one per row of ``codes``)."""
    if len(labels) != len(codes):
        raise ValueError(f"{len(labels)} labels for {len(codes)} code rows")
    rows = []
    truth = _label_ids(labels)
    for level in range(1, codes.shape[1] + 1):
        groups = prefix_groups(codes, level)
        ami, nmi = mutual_information_scores(truth, groups)
        rows.append({"level": level, "ami": ami, "nmi": nmi, "prefixes": int(groups.max() + 1) if len(groups) else 0})
    return rows


def _entropy(sizes: np.ndarray) -> float:
    """The entropy (nats) of a labelling with these cluster sizes, as scikit-learn computes it."""
    sizes = sizes[sizes > 0].astype(np.float64)
    total = sizes.sum()
    return float(-np.sum((sizes / total) * (np.log(sizes) - np.log(total)))) if len(sizes) else 1.0


def mutual_information_scores(truth: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(AMI, NMI) of two integer labellings, arithmetic normalisation: scikit-learn's
    ``adjusted_mutual_info_score`` and ``normalized_mutual_info_score`` (the same special cases, contingency table,
    mutual information and entropies), with one contingency table for both and the expected mutual information of
    :func:`expected_mutual_information`, which at a million items is seconds faster per score."""
    truth_ids, true_sizes = _numbered(truth)
    group_ids, group_sizes = _numbered(groups)
    classes, clusters = len(true_sizes), len(group_sizes)
    if classes == clusters == 1 or classes == clusters == 0:
        return 1.0, 1.0
    contingency = _contingency(truth_ids, group_ids, classes, clusters)
    mi = float(mutual_info_score(truth, groups, contingency=contingency))
    normalizer = (_entropy(true_sizes) + _entropy(group_sizes)) / 2
    nmi = 0.0 if mi == 0 else mi / normalizer
    if classes == 1 or clusters == 1:
        return 0.0, float(nmi)
    emi = expected_mutual_information(true_sizes, group_sizes, len(truth))
    eps = np.finfo("float64").eps
    # scikit-learn's guards: keep the ratio's sign and stay off zero
    denominator = min(normalizer - emi, -eps) if normalizer - emi < 0 else max(normalizer - emi, eps)
    numerator = min(mi - emi, -eps) if mi - emi < 0 else max(mi - emi, eps)
    return float(numerator / denominator), float(nmi)


def _contingency(truth_ids: np.ndarray, group_ids: np.ndarray, classes: int, clusters: int) -> sp.csr_matrix:
    """scikit-learn's sparse contingency table (``contingency_matrix(..., sparse=True)``: the same entries in the
    same order) of two labellings numbered 0..n-1, counted in one pass where the table's cells are few enough."""
    cells = classes * clusters
    if cells > max(_COUNTING_BOUND, 4 * len(truth_ids)):
        return contingency_matrix(truth_ids, group_ids, sparse=True)
    counts = np.bincount(truth_ids.astype(np.int64) * clusters + group_ids, minlength=cells)
    filled = np.flatnonzero(counts)
    return sp.csr_matrix((counts[filled], (filled // clusters, filled % clusters)), shape=(classes, clusters))


# A hypergeometric count stays within TAIL_WIDTH * sqrt(m) of its mean (m: the smaller of the two sizes) with
# probability at least 1 - 2 exp(-2 TAIL_WIDTH**2) (Hoeffding's bound, which holds for sampling without
# replacement): 1 - 4e-35 here, so the counts left out change the sum by far less than float64 rounding does.
TAIL_WIDTH = np.sqrt(40.0)
_CHUNK = 1 << 22  # (size pair, count) terms evaluated at once: bounded memory on any catalogue


def expected_mutual_information(row_sizes: np.ndarray, column_sizes: np.ndarray, n_samples: int) -> float:
    """The expected mutual information (nats) of two random labellings with these cluster sizes under the
    hypergeometric model: the term AMI subtracts (Vinh, Epps & Bailey, 2010), as scikit-learn's
    ``expected_mutual_information``, which sums over every pair of clusters and every count a pair could share.

    The sum depends on a pair only through its two sizes, so each distinct pair of sizes is evaluated once and
    weighted by how many cluster pairs have it (a million items in ~8,000 prefixes have a few hundred distinct
    sizes); and only counts within :data:`TAIL_WIDTH` standard bounds of the mean are summed, where sklearn walks
    every count up to the smaller size (25,000 per pair at the first level of a million items). Equal to
    scikit-learn's within rounding (``tests/test_metrics.py``)."""
    rows = np.asarray(row_sizes, dtype=np.int64)
    columns = np.asarray(column_sizes, dtype=np.int64)
    if rows.size <= 1 or columns.size <= 1:
        return 0.0  # a labelling with zero entropy
    n = int(n_samples)
    row_values, row_weights = np.unique(rows, return_counts=True)
    column_values, column_weights = np.unique(columns, return_counts=True)
    a_sizes, b_sizes = np.meshgrid(row_values, column_values, indexing="ij")
    weights = np.outer(row_weights, column_weights).astype(np.float64).ravel()
    a_sizes, b_sizes = a_sizes.ravel(), b_sizes.ravel()
    smaller = np.minimum(a_sizes, b_sizes)
    reach = np.ceil(TAIL_WIDTH * np.sqrt(smaller)).astype(np.int64)
    mean = a_sizes * (b_sizes / n)
    first = np.maximum(np.maximum(1, a_sizes + b_sizes - n), np.floor(mean).astype(np.int64) - reach)
    last = np.minimum(smaller, np.ceil(mean).astype(np.int64) + reach)
    counts = np.maximum(last - first + 1, 0)
    # the size-only parts of each term, per size pair
    log_ab = np.log(a_sizes) + np.log(b_sizes)
    gln_pair = gammaln(a_sizes + 1) + gammaln(b_sizes + 1) + gammaln(n - a_sizes + 1) + gammaln(n - b_sizes + 1)
    gln_pair -= gammaln(n + 1)
    emi = 0.0
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        # size pairs [start, stop) with at most _CHUNK counts between them (at least one pair)
        stop = max(int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _CHUNK, side="right")), start + 1)
        pair_counts = counts[start:stop]
        pair = np.repeat(np.arange(start, stop), pair_counts)
        offsets = np.arange(len(pair)) - np.repeat(np.cumsum(pair_counts) - pair_counts, pair_counts)
        nij = (first[pair] + offsets).astype(np.float64)
        a, b = a_sizes[pair], b_sizes[pair]
        log_probability = (
            gln_pair[pair] - gammaln(nij + 1) - gammaln(a - nij + 1) - gammaln(b - nij + 1)
            - gammaln(n - a - b + nij + 1)
        )  # fmt: skip
        terms = (nij / n) * (np.log(n) + np.log(nij) - log_ab[pair]) * np.exp(log_probability)
        emi += float(np.dot(weights[pair], terms))
        start = stop
    return emi


def collision_stats(codes: np.ndarray) -> dict[str, Any]:
    """How unique the learned code tuples are on their own."""
    if len(codes) == 0:
        return {"collision_rate": 0.0, "largest_bucket": 0, "distinct_tuples": 0, "items": 0}
    # Tuples numbered through one integer key each (prefix_groups), then counted: a million rows in a fraction of
    # a second, where a row-wise unique took seconds.
    counts = np.bincount(prefix_groups(codes, codes.shape[1]))
    colliding = int(counts[counts > 1].sum())
    return {
        "collision_rate": colliding / len(codes),
        "largest_bucket": int(counts.max()),
        "distinct_tuples": len(counts),
        "items": len(codes),
    }


def level_usage(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Per level: distinct codes used, utilisation (used / K), entropy (bits) and perplexity."""
    rows = []
    for level, size in enumerate(codebook_sizes, start=1):
        column = codes[:, level - 1]
        counts = np.bincount(column, minlength=size).astype(np.float64)
        probabilities = counts[counts > 0] / counts.sum() if counts.sum() else np.zeros(0)
        entropy = float(-(probabilities * np.log(probabilities)).sum()) if len(probabilities) else 0.0
        rows.append(
            {
                "level": level,
                "codebook_size": int(size),
                "used": int((counts > 0).sum()),
                "utilisation": float((counts > 0).sum() / size),
                "entropy_bits": entropy / np.log(2),
                "perplexity": float(np.exp(entropy)),
                "counts": counts.astype(np.int64).tolist(),
            }
        )
    return rows


@dataclass
class QualityReport:
    """Everything ``lmindexer evaluate`` measures for one ID table."""

    items: int
    label: str | None
    labelled_items: int
    levels: list[dict[str, Any]]
    collisions: dict[str, Any]
    agreement: list[dict[str, float]] = field(default_factory=list)
    stability: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, with_counts: bool = False) -> dict[str, Any]:
        levels = [{k: v for k, v in row.items() if with_counts or k != "counts"} for row in self.levels]
        return {
            "items": self.items,
            "label": self.label,
            "labelled_items": self.labelled_items,
            "agreement": self.agreement,
            "collisions": self.collisions,
            "levels": levels,
            "stability": self.stability,
            "context": self.context,
        }

    def to_markdown(self) -> str:
        lines = [
            f"Items: {self.items}" + (f"; labelled by `{self.label}`: {self.labelled_items}" if self.label else "")
        ]
        lines.append("")
        lines.append("| level | AMI | NMI | prefixes | codes used / K | utilisation | perplexity |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        agreement = {row["level"]: row for row in self.agreement}
        for row in self.levels:
            a = agreement.get(row["level"])
            ami = f"{a['ami']:.4f}" if a else "—"
            nmi = f"{a['nmi']:.4f}" if a else "—"
            prefixes = str(a["prefixes"]) if a else "—"
            lines.append(
                f"| {row['level']} | {ami} | {nmi} | {prefixes} | {row['used']} / {row['codebook_size']} | "
                f"{row['utilisation']:.1%} | {row['perplexity']:.1f} |"
            )
        c = self.collisions
        lines.append("")
        lines.append(
            f"Collision rate (learned codes shared by more than one item; a suffix keeps their IDs unique): "
            f"{c['collision_rate']:.2%}; "
            f"largest bucket: {c['largest_bucket']}; distinct code tuples: {c['distinct_tuples']}"
        )
        if self.stability:
            s = self.stability
            share = "n/a" if s["stability"] is None else f"{s['stability']:.2%}"
            lines.append(
                f"ID stability against the previous table: {share} of {s['common_items']} common items unchanged"
            )
        return "\n".join(lines) + "\n"


def describe_collisions(rate: float, digits: int = 1) -> str:
    """The collision rate with what it means, since it is reported next to IDs that are all unique."""
    return (
        f"collision rate {rate:.{digits}%} (items whose learned codes are shared with another item; such items get a "
        "suffix, so IDs stay unique)"
    )


def evaluate_codes(
    codes: np.ndarray,
    codebook_sizes: Sequence[int],
    labels: Labels | None = None,
    *,
    label_name: str | None = None,
) -> QualityReport:
    """Metrics for ``codes`` (``(n, L)``); ``labels`` may contain ``None`` for unlabelled rows. Labels given as an
    Arrow string column are compared as they are; any other labels as their ``str``."""
    codes = np.asarray(codes, dtype=np.int64)
    agreement: list[dict[str, float]] = []
    labelled = 0
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    if isinstance(labels, pa.Array) and (pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type)):
        mask = labels.is_valid().to_numpy(zero_copy_only=False)
        labelled = int(mask.sum())
        if labelled:
            agreement = label_agreement(codes[mask], labels.filter(pa.array(mask)))
    elif labels is not None:
        mask = np.array([label is not None for label in labels], dtype=bool)
        labelled = int(mask.sum())
        if labelled:
            agreement = label_agreement(codes[mask], [str(label) for label in np.asarray(labels, dtype=object)[mask]])
    return QualityReport(
        items=len(codes),
        label=label_name,
        labelled_items=labelled,
        levels=level_usage(codes, codebook_sizes),
        collisions=collision_stats(codes),
        agreement=agreement,
    )
