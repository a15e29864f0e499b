"""``hkmeans``: a hierarchical k-means tree over frozen embeddings (the DSI / NCI recipe).

Level 1 clusters all items into K_1 groups; each group is clustered again into K_2 sub-groups, and so on. A code is
the path from the root. A branch that no training item reached has no children: items that arrive there later take
code 0 below it, which is what a single-centroid child would give.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.errors import SnapshotError
from lmindexer.indexers.embedding import EmbeddingIndexer
from lmindexer.indexers.kmeans import centroids_by_distance, decision_radius, fit_kmeans, nearest_centroid
from lmindexer.methods import HKMeansConfig


def _group_by_path(codes: np.ndarray, depth: int) -> dict[tuple[int, ...], np.ndarray]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, row in enumerate(codes[:, :depth].tolist()):
        groups[tuple(row)].append(index)
    return {path: np.asarray(members, dtype=np.int64) for path, members in groups.items()}


class HKMeansIndexer(EmbeddingIndexer):
    """Hierarchical k-means over frozen MiniLM embeddings (the DSI / NCI recipe)."""

    method = "hkmeans"
    config_class = HKMeansConfig
    config: HKMeansConfig

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.root: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        # per level >= 1: parent path -> centroids of its children
        self.nodes: list[dict[tuple[int, ...], np.ndarray]] = []

    def fit_embeddings(self, embeddings: np.ndarray, *, progress: bool) -> dict[str, Any]:
        seed = self.config.seed
        iterations = self.config.kmeans_iterations
        self.root = fit_kmeans(embeddings, self.codebook_sizes[0], seed=seed, iterations=iterations)
        codes = np.zeros((len(embeddings), self.levels), dtype=np.int64)
        codes[:, 0] = nearest_centroid(embeddings, self.root)
        self.nodes = []
        for level in range(1, self.levels):
            level_nodes: dict[tuple[int, ...], np.ndarray] = {}
            groups = _group_by_path(codes, level)
            for path in tqdm(sorted(groups), desc=f"hkmeans level {level + 1}", disable=not progress, leave=False):
                members = groups[path]
                # One seed per node, derived from its path, keeps the tree reproducible.
                node_seed = (seed * 1_000_003 + zlib.crc32(repr(path).encode())) % (2**31)
                centroids = fit_kmeans(
                    embeddings[members], self.codebook_sizes[level], seed=node_seed, iterations=iterations
                )
                level_nodes[path] = centroids
                codes[members, level] = nearest_centroid(embeddings[members], centroids)
            self.nodes.append(level_nodes)
        return {"nodes_per_level": [1] + [len(n) for n in self.nodes]}

    def encode_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        codes = np.zeros((len(embeddings), self.levels), dtype=np.int64)
        codes[:, 0] = nearest_centroid(embeddings, self.root)
        for level in range(1, self.levels):
            for path, members in _group_by_path(codes, level).items():
                centroids = self.nodes[level - 1].get(path)
                if centroids is not None:
                    codes[members, level] = nearest_centroid(embeddings[members], centroids)
        return codes

    def decision_radii(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # Every level chooses among the children of the item's node by the embedding itself.
        radius = decision_radius(embeddings, self.root, codes[:, 0])
        for level in range(1, self.levels):
            for path, members in _group_by_path(codes, level).items():
                centroids = self.nodes[level - 1].get(path)
                if centroids is not None:
                    near = decision_radius(embeddings[members], centroids, codes[members, level])
                    radius[members] = np.minimum(radius[members], near)
        return radius

    def last_level_preferences(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # The children of the item's node from nearest to farthest; a node with fewer children ranks fewer (-1 pads).
        if self.levels == 1:
            return centroids_by_distance(embeddings, self.root)
        preferences = np.full((len(embeddings), self.codebook_sizes[-1]), -1, dtype=np.int64)
        preferences[:, 0] = codes[:, -1]
        for path, members in _group_by_path(codes, self.levels - 1).items():
            centroids = self.nodes[-1].get(path)
            if centroids is not None:
                ranked = centroids_by_distance(embeddings[members], centroids)
                preferences[members, : ranked.shape[1]] = ranked
        return preferences

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"level.0.centroids": torch.from_numpy(np.ascontiguousarray(self.root))}
        for level, nodes in enumerate(self.nodes, start=1):
            paths = sorted(nodes)
            sizes = [len(nodes[p]) for p in paths]
            tensors[f"level.{level}.paths"] = torch.tensor(paths, dtype=torch.int64).reshape(len(paths), level)
            tensors[f"level.{level}.offsets"] = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int64)
            tensors[f"level.{level}.centroids"] = torch.from_numpy(np.concatenate([nodes[p] for p in paths]))
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        try:
            self.root = tensors["level.0.centroids"].numpy()
            self.nodes = []
            for level in range(1, self.levels):
                paths = tensors[f"level.{level}.paths"].tolist()
                offsets = tensors[f"level.{level}.offsets"].tolist()
                centroids = tensors[f"level.{level}.centroids"].numpy()
                if len(offsets) != len(paths) + 1 or offsets[-1] != len(centroids):
                    raise SnapshotError(f"hkmeans snapshot: level {level} offsets do not match its centroids")
                self.nodes.append({tuple(p): centroids[offsets[i] : offsets[i + 1]] for i, p in enumerate(paths)})
        except KeyError as exc:
            raise SnapshotError(f"hkmeans snapshot lacks tensor {exc.args[0]}") from None
