"""``rq-kmeans``: residual k-means over frozen embeddings (the GRID / OneRec recipe).

Level 1 clusters the embeddings; each further level clusters what the previous levels left unexplained (the
residual), so every level refines the same vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.errors import SnapshotError
from lmindexer.indexers.embedding import EmbeddingIndexer
from lmindexer.indexers.kmeans import centroids_by_distance, decision_radius, fit_kmeans, nearest_centroid
from lmindexer.methods import RQKMeansConfig


class RQKMeansIndexer(EmbeddingIndexer):
    """Residual k-means over frozen MiniLM embeddings."""

    method = "rq-kmeans"
    config_class = RQKMeansConfig
    config: RQKMeansConfig

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.codebooks: list[np.ndarray] = []

    def fit_embeddings(self, embeddings: np.ndarray, *, progress: bool) -> dict[str, Any]:
        residual = embeddings.astype(np.float64)
        self.codebooks = []
        explained = []
        total = float((residual**2).sum())
        for level in tqdm(range(self.levels), desc="rq-kmeans levels", disable=not progress, leave=False):
            centroids = fit_kmeans(
                residual,
                self.codebook_sizes[level],
                seed=self.config.seed + level,
                iterations=self.config.kmeans_iterations,
            )
            codes = nearest_centroid(residual, centroids)
            residual = residual - centroids.astype(np.float64)[codes]
            self.codebooks.append(centroids)
            explained.append(round(1.0 - float((residual**2).sum()) / total, 4))
        return {"variance_explained_per_level": explained}

    def encode_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        residual = embeddings.astype(np.float64)
        codes = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, centroids in enumerate(self.codebooks):
            codes[:, level] = nearest_centroid(residual, centroids)
            residual = residual - centroids.astype(np.float64)[codes[:, level]]
        return codes

    def decision_radii(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # A level's residual moves exactly as far as the embedding does while the earlier codes hold.
        residual = embeddings.astype(np.float64)
        radius = np.full(len(residual), np.inf)
        for level, centroids in enumerate(self.codebooks):
            radius = np.minimum(radius, decision_radius(residual, centroids, codes[:, level]))
            residual = residual - centroids.astype(np.float64)[codes[:, level]]
        return radius

    def last_level_preferences(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # The last level's centroids from nearest to farthest from what the earlier levels left unexplained.
        residual = embeddings.astype(np.float64)
        for level, centroids in enumerate(self.codebooks[:-1]):
            residual = residual - centroids.astype(np.float64)[codes[:, level]]
        return centroids_by_distance(residual, self.codebooks[-1])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"codebook.{level}": torch.from_numpy(c) for level, c in enumerate(self.codebooks)}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        try:
            self.codebooks = [tensors[f"codebook.{level}"].numpy() for level in range(self.levels)]
        except KeyError as exc:
            raise SnapshotError(f"rq-kmeans snapshot lacks tensor {exc.args[0]}") from None
        for level, codebook in enumerate(self.codebooks):
            if codebook.ndim != 2 or codebook.shape[0] > self.codebook_sizes[level]:
                raise SnapshotError(f"rq-kmeans snapshot: codebook {level} has shape {tuple(codebook.shape)}")
