"""The inference precision is a fact of the snapshot: saved resolved, and used by whatever machine loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE

TINY = {"levels": 3, "codebook_size": 8}


def read_document(directory: Path) -> dict:
    return json.loads((directory / SNAPSHOT_FILE).read_text())


def write_document(directory: Path, document: dict) -> None:
    (directory / SNAPSHOT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def items(wiki_items):
    return wiki_items[:160]


def test_auto_is_saved_resolved_and_a_machine_without_bf16_still_assigns_in_it(items, tmp_path, cpu_bf16):
    cpu_bf16(True)
    fitted = create_indexer("rq-kmeans", {**TINY, "inference_precision": "auto"})
    assert fitted.config.inference_precision == "bf16"
    fitted.fit(items, progress=False)
    fitted.save(tmp_path / "snap")
    assert read_document(tmp_path / "snap")["config"]["inference_precision"] == "bf16"

    cpu_bf16(False)
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.config.inference_precision == "bf16"
    assert loaded.encoder.precision == "bf16"
    np.testing.assert_array_equal(loaded.codes(items), fitted.codes(items))


def test_a_snapshot_written_before_the_precision_option_assigns_in_fp32(
    items, tmp_path, cpu_bf16, as_written_before_digests
):
    cpu_bf16(True)
    fitted = create_indexer("rq-kmeans", {**TINY, "inference_precision": "fp32"})
    fitted.fit(items, progress=False)
    fitted.save(tmp_path / "snap")
    document = read_document(tmp_path / "snap")
    del document["config"]["inference_precision"]
    write_document(tmp_path / "snap", document)
    as_written_before_digests(tmp_path / "snap")

    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.config.inference_precision == "fp32"
    assert loaded.encoder.precision == "fp32"
    np.testing.assert_array_equal(loaded.codes(items), fitted.codes(items))


# -- bf16 codes certified against float32 ----------------------------------------------------------------------


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["rq-kmeans", "hkmeans"])
def test_bf16_codes_are_the_fp32_codes_wherever_the_rounding_could_not_change_them(method):
    """A stand-in for bf16: every embedding moved by 0.9x the error bound in a random direction. Codes taken from
    the moved embeddings differ from the exact ones for some items; the certified coding embeds the items near a
    boundary again at full precision, and every code is then the exact one."""
    from types import SimpleNamespace

    from lmindexer.indexers.embedding import BF16_EMBEDDING_ERROR

    rng = np.random.default_rng(0)
    exact = _unit(rng.normal(size=(3000, 16)))
    moved = _unit(exact + 0.9 * BF16_EMBEDDING_ERROR * _unit(rng.normal(size=exact.shape)))
    assert (np.linalg.norm(moved - exact, axis=1) < BF16_EMBEDDING_ERROR).all()
    indexer = create_indexer(method, {"levels": 3, "codebook_size": 8})
    indexer.fit_embeddings(exact, progress=False)
    truth = indexer.encode_embeddings(exact)
    assert (indexer.encode_embeddings(moved) != truth).any(axis=1).sum() > 0, "the stand-in must move some codes"

    texts = [str(n) for n in range(len(exact))]
    indexer._encoder = SimpleNamespace(precision="bf16", use_cache=False)
    indexer._fp32_encoder = SimpleNamespace(encode=lambda batch, progress: exact[[int(t) for t in batch]])
    indexer.embed = lambda batch, progress: moved[[int(t) for t in batch]]
    np.testing.assert_array_equal(indexer.encode_texts(texts, progress=False), truth)
    again = indexer.last_recheck["recomputed_in_fp32"]
    assert 0 < again < len(texts) / 2, f"{again} of {len(texts)} embedded again"


def test_a_point_inside_its_decision_radius_keeps_its_centroid():
    from lmindexer.indexers.kmeans import decision_radius, nearest_centroid

    rng = np.random.default_rng(1)
    centroids, points = rng.normal(size=(12, 5)), rng.normal(size=(500, 5))
    chosen = nearest_centroid(points, centroids)
    radius = decision_radius(points, centroids, chosen)
    direction = _unit(rng.normal(size=points.shape))
    np.testing.assert_array_equal(nearest_centroid(points + 0.999 * radius[:, None] * direction, centroids), chosen)
    # and the radius is tight: moving past it towards the nearest boundary changes the choice
    others = [j for j in range(12)]
    flipped = 0
    for n in range(50):
        best = min((j for j in others if j != chosen[n]), key=lambda j: (
            (np.sum((points[n] - centroids[j]) ** 2) - np.sum((points[n] - centroids[chosen[n]]) ** 2))
            / (2 * np.linalg.norm(centroids[j] - centroids[chosen[n]]))))  # fmt: skip
        normal = _unit((centroids[best] - centroids[chosen[n]])[None, :])[0]
        flipped += nearest_centroid((points[n] + 1.01 * radius[n] * normal)[None, :], centroids)[0] != chosen[n]
    assert flipped == 50
