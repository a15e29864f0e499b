"""What is specific to each baseline."""

from __future__ import annotations

import numpy as np

from lmindexer.indexers import create_indexer
from lmindexer.indexers.hkmeans import HKMeansIndexer
from lmindexer.indexers.kmeans import fit_kmeans, nearest_centroid


def test_fit_kmeans_with_few_points_uses_the_points():
    points = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(fit_kmeans(points, 8, seed=0), points)


def test_kmeans_separates_clear_clusters():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.05, (50, 4)), rng.normal(5, 0.05, (50, 4))]).astype(np.float32)
    labels = nearest_centroid(points, fit_kmeans(points, 2, seed=0))
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]


def test_nearest_centroid_breaks_ties_to_the_lowest_index():
    centroids = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(nearest_centroid(np.array([[0.0, 1.0], [2.0, 0.0]]), centroids), [0, 0])


def test_rq_kmeans_levels_explain_more_and_more(fitted):
    explained = fitted["rq-kmeans"].manifest["variance_explained_per_level"]
    assert explained == sorted(explained) and explained[0] > 0


def test_hkmeans_children_refine_their_parent(fitted, wiki_items):
    indexer: HKMeansIndexer = fitted["hkmeans"]
    codes = indexer.codes(wiki_items)
    embeddings = indexer.embed(indexer.texts(wiki_items), progress=False)
    # every level-2 node was fitted only on its parent's members
    for parent, centroids in indexer.nodes[0].items():
        members = codes[:, 0] == parent[0]
        assert members.any()
        centre = embeddings[members].mean(axis=0)
        assert np.linalg.norm(centroids.mean(axis=0) - centre) < 0.5
    # a branch that no training item reached takes code 0 below it
    indexer_copy = HKMeansIndexer(indexer.config)
    indexer_copy.load_state_tensors(indexer.state_tensors())
    indexer_copy.nodes = [{} for _ in indexer.nodes]
    assert (indexer_copy.encode_embeddings(embeddings)[:, 1:] == 0).all()


def test_rqvae_learns_and_keeps_codes_alive(fitted, wiki_items):
    manifest = fitted["rqvae"].manifest
    assert manifest["loss_last_epoch"] < manifest["loss_first_epoch"]
    codes = fitted["rqvae"].codes(wiki_items)
    for level in range(3):
        assert len(np.unique(codes[:, level])) >= 6


def test_rqvae_without_kmeans_init_or_restarts_still_trains(wiki_items):
    indexer = create_indexer(
        "rqvae",
        {
            "codebook_size": 8,
            "epochs": 5,
            "batch_size": 64,
            "hidden_dims": [32],
            "kmeans_init": False,
            "restart_dead_codes": False,
        },
    )
    stats = indexer.fit(wiki_items, progress=False)
    assert stats["dead_code_restarts"] == 0
    assert indexer.codes(wiki_items).shape == (len(wiki_items), 3)
