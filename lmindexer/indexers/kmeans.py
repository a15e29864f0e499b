"""k-means (faiss) and the one distance every baseline uses to assign codes.

Fitting and assignment must agree on the metric: centroids are fitted under L2 and codes are the L2-nearest
centroid, computed in float64 so that an item's code does not depend on which other items share its batch.
"""

from __future__ import annotations

import faiss
import numpy as np


def fit_kmeans(points: np.ndarray, k: int, *, seed: int, iterations: int = 25, spherical: bool = False) -> np.ndarray:
    """Centroids ``(min(k, n), d)`` of ``points``; with no more points than ``k`` the points are the centroids.

    ``spherical`` clusters unit vectors by cosine similarity (centroids renormalised each iteration), for callers that
    assign codes by cosine rather than L2.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n, dim = points.shape
    if n == 0:
        raise ValueError("k-means needs at least one point")
    if n <= k:
        return points.copy()
    kmeans = faiss.Kmeans(
        dim,
        k,
        niter=iterations,
        seed=seed,
        verbose=False,
        spherical=spherical,
        # faiss warns below 39 points per centroid; small clusters are expected deep in a hierarchy.
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 20,
    )
    kmeans.train(points)
    return np.asarray(kmeans.centroids, dtype=np.float32).copy()


def centroids_by_distance(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """For each point, the indexes of all centroids from nearest to farthest (L2; ties to the lowest index), so the
    first column is :func:`nearest_centroid`."""
    x = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    distances = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
    return np.argsort(distances, axis=1, kind="stable").astype(np.int64)


def nearest_centroid(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the L2-nearest centroid for each point (ties go to the lowest index)."""
    x = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    distances = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
    return distances.argmin(axis=1).astype(np.int64)


def decision_radius(points: np.ndarray, centroids: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """For each point, how far it may move (L2) before another centroid becomes nearer than ``chosen``: its distance
    to the nearest bisecting hyperplane between the chosen centroid and another one (inf with a single centroid)."""
    x = np.asarray(points, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if len(c) < 2:
        return np.full(len(x), np.inf)
    squared = (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)
    rows = np.arange(len(x))
    gap = squared - squared[rows, chosen][:, None]  # ||x - c_j||^2 - ||x - c_chosen||^2 >= 0
    between = np.sqrt(np.maximum((c * c).sum(axis=1)[:, None] + (c * c).sum(axis=1)[None, :] - 2.0 * (c @ c.T), 0.0))
    separation = between[chosen]
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where(separation > 0, gap / (2.0 * separation), np.inf)
    radius[rows, chosen] = np.inf
    return radius.min(axis=1)
