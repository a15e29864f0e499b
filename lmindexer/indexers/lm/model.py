"""The LMIndexer network: a text encoder and one code writer per position, each writing its code from the item's
token states and the codes already written.

Position t's writer (:class:`CodeWriter`) attends over the encoder's token states with a query built from the codes
of positions 1..t-1 and adds a learned correction: it is one decoder step (cross-attention conditioned on the
prefix). Its state ``z_t`` is compared with codebook t after subtracting the centre of the item's node (the mean of
``z_t`` over the catalogue items with the same prefix, so that the code separates siblings rather than repeating
what the prefix already says), by Euclidean distance, the metric k-means used to build the codebook.

Everything that computes a position belongs to that position alone (writer, node centres, codebook) and is frozen
once the position is trained, and the encoder is frozen before the first position trains: earlier codes cannot move
while later positions train. At initialisation the attention is uniform and the correction zero, so a writer returns
the item's summary (its mean-pooled, normalised token states) and position 1 is k-means on the encoder's summary.

A bag-of-words head, used only in training, rebuilds the item's content words from the code vectors: the
self-supervision that makes codes carry what the text is about. It is not part of a snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmindexer.indexers.lm.encoder import EncoderStack

KEY_DIM = 64


def tied_names(module: nn.Module) -> set[str]:
    """State-dict names whose tensor shares storage with an earlier name (tied embeddings and heads)."""
    seen: set[tuple[int, int]] = set()
    tied = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            tied.add(name)
        seen.add(key)
    return tied


class CodeWriter(nn.Module):
    """One position's writer: attention pooling with a prefix-dependent query, plus a zero-initialised correction."""

    def __init__(self, hidden: int, prefix_sizes: Sequence[int], key_dim: int = KEY_DIM) -> None:
        super().__init__()
        self.key_dim = key_dim
        self.query = nn.Parameter(torch.zeros(key_dim))
        self.prefix_queries = nn.ParameterList([nn.Parameter(torch.zeros(size, key_dim)) for size in prefix_sizes])
        self.keys = nn.Linear(hidden, key_dim, bias=False)
        nn.init.normal_(self.keys.weight, std=0.02)
        self.correction = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, d)``, unit length, from token states ``(B, T, d)`` and the codes written before ``(B, t-1)``."""
        query = self.query.expand(states.size(0), -1)
        for level, table in enumerate(self.prefix_queries):
            query = query + table[prefix[:, level]]
        logits = (self.keys(states) @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.key_dim)
        logits = logits.masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(logits.float(), dim=-1).to(states.dtype)
        pooled = (weights.unsqueeze(-1) * states).sum(dim=1)
        return F.normalize(pooled + self.correction(pooled), dim=-1)


class NodeCentres:
    """Position t's centre per node (the full prefix of t-1 codes), with the centre of the nearest ancestor that has
    one (ultimately the catalogue mean) for a node no training item reached."""

    def __init__(self, level: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.level = level
        self.keys = keys.to(torch.long).reshape(len(values), level)
        self.values = values.to(torch.float32)
        self._rows = {tuple(row): n for n, row in enumerate(self.keys.tolist())}

    @classmethod
    def fit(cls, states: torch.Tensor, prefixes: torch.Tensor, level: int) -> NodeCentres:
        """Means of ``states`` per distinct prefix, every ancestor included (for the fallback)."""
        states64 = states.double()
        rows: dict[tuple[int, ...], list[int]] = {}
        for n, prefix in enumerate(prefixes[:, :level].tolist()):
            for depth in range(level + 1):
                rows.setdefault(tuple(prefix[:depth]), []).append(n)
        keys, values = [], []
        for key in sorted(rows, key=lambda k: (len(k), k)):
            members = torch.as_tensor(rows[key])
            padded = list(key) + [-1] * (level - len(key))
            keys.append(padded)
            values.append(states64[members].mean(dim=0))
        return cls(level, torch.tensor(keys, dtype=torch.long).reshape(len(keys), level), torch.stack(values).float())

    def lookup(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The centre of each row's node ``(B, d)``."""
        index = []
        for prefix in prefixes[:, : self.level].tolist():
            for depth in range(self.level, -1, -1):
                row = self._rows.get(tuple(prefix[:depth]) + (-1,) * (self.level - depth))
                if row is not None:
                    index.append(row)
                    break
            else:  # pragma: no cover - the root (all -1) is always fitted
                raise KeyError("no centre for the root node")
        return self.values[torch.as_tensor(index, dtype=torch.long)]


class LMIndexerModel(nn.Module):
    def __init__(self, encoder: EncoderStack, codebook_sizes: Sequence[int], *, seed: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.hidden_size
        self.codebook_sizes = tuple(codebook_sizes)
        # Seeded on its own, so that the same options give the same model whatever ran before in the process.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.writers = nn.ModuleList(
                [CodeWriter(hidden, self.codebook_sizes[:level]) for level in range(len(self.codebook_sizes))]
            )
        self.codebooks = nn.ParameterList([nn.Parameter(torch.zeros(size, hidden)) for size in self.codebook_sizes])
        self.centres: list[NodeCentres | None] = [None] * len(self.codebook_sizes)

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    # -- the indexer ---------------------------------------------------------------------------------------------

    def token_states(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.full(input_ids, mask)

    def code_space(self, level: int, states: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Position ``level``'s state minus the centre of the item's node ``(B, d)``."""
        centres = self.centres[level]
        if centres is None:
            raise RuntimeError(f"position {level + 1} has no node centres yet")
        state = self.writers[level](states, mask, prefix)
        return state - centres.lookup(prefix.cpu()).to(state.device, state.dtype)

    @torch.no_grad()
    def greedy_codes(self, states: torch.Tensor, mask: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes position by position, each from the codes this model wrote before it. Distances are compared in
        float64 so that a code does not hinge on float32 rounding differences between batch shapes."""
        levels = self.levels if levels is None else levels
        prefix = torch.zeros(states.size(0), 0, dtype=torch.long, device=states.device)
        for level in range(levels):
            space = self.code_space(level, states, mask, prefix).double()
            prefix = torch.cat([prefix, nearest(space, self.codebooks[level].double()).unsqueeze(1)], dim=1)
        return prefix

    @torch.no_grad()
    def relative_radii(self, states: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> np.ndarray:
        """For each item, how far (as a share of the writer state's length) its states may move at any position
        before that position's code changes: the distance from the centred state to the nearest boundary between
        its code and another, over the state's length, the smallest over positions."""
        from lmindexer.indexers.kmeans import decision_radius

        radii = np.full(states.size(0), np.inf)
        for level in range(self.levels):
            prefix = codes[:, :level]
            state = self.writers[level](states, mask, prefix).double()
            centres = self.centres[level]
            if centres is None:
                raise RuntimeError(f"position {level + 1} has no node centres yet")
            space = state - centres.lookup(prefix.cpu()).to(state.device, state.dtype)
            radius = decision_radius(space.cpu().numpy(), self.codebooks[level].double().cpu().numpy(),
                                     codes[:, level].cpu().numpy())  # fmt: skip
            radii = np.minimum(radii, radius / np.maximum(state.norm(dim=1).cpu().numpy(), 1e-12))
        return radii

    @torch.no_grad()
    def last_level_preferences(self, states: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Every last-level code from nearest to farthest, given the item's prefix (its own code first)."""
        level = self.levels - 1
        space = self.code_space(level, states, mask, codes[:, :level]).double()
        distances = squared_distances(space, self.codebooks[level].double())
        return torch.as_tensor(np.argsort(distances.cpu().numpy(), axis=1, kind="stable"), dtype=torch.long)

    # -- persistence ---------------------------------------------------------------------------------------------

    def centre_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for level, centres in enumerate(self.centres):
            if centres is None:
                raise RuntimeError(f"position {level + 1} has no node centres; the model is not trained")
            tensors[f"centres.{level}.keys"] = centres.keys.contiguous()
            tensors[f"centres.{level}.values"] = centres.values.contiguous()
        return tensors

    def load_centre_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.centres = [
            NodeCentres(level, tensors[f"centres.{level}.keys"], tensors[f"centres.{level}.values"])
            for level in range(self.levels)
        ]


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return (centroids * centroids).sum(dim=1)[None, :] - 2.0 * points @ centroids.T


def nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (ties to the lowest index), as k-means assigns."""
    return squared_distances(points, centroids).argmin(dim=1)
