"""The dense prior of a generative retriever: what the encoder's embeddings say about each next ID token.

A generative retriever has to learn, for every ID prefix, which queries lead into it. The encoder it reads with
already knows much of that: a query's embedding lies near those of the items it is about. With ``dense_prior`` the
model adds to each next-token score the log-sum-exp, over the items under the prefix that token would make, of
``TEMPERATURE`` x the cosine of the query's summary (the encoder's mean-pooled, normalised states, the vector the
decoder starts from) to the item's embedding, times a learned weight (starting at 1).

Why a log-sum-exp: with an untrained decoder (scores near zero) the product over positions of the softmaxes of these
priors is exactly the softmax over all items of ``TEMPERATURE`` x cosine, dense retrieval's ranking, which beam
search then approximates; training learns the decoder's corrections on top. Starting a generative retriever from
what dense retrieval knows is the idea of RIPOR (Zeng et al., 2024); here it does not tie the IDs to one quantiser,
so every ID kind can use it.

An item inserted without its text (so without an embedding) takes the centroid of the embedded items under its
nearest ancestor prefix, so it stays reachable and ranks with its siblings.

A recommender's **item prior** is the same score with other vectors: the summary is that of the history encoder's
states, and each item's vector is learned with the model (:meth:`DensePrior.learning`), starting from the item's
text embedding where its text is given. With an untrained decoder the recommender then ranks as a two-tower model
with a free vector per item (SASRec's output layer, with cosines): the per-item memory that a decoder spelling IDs
token by token lacks. An item indexed after training takes its prefix's centroid, as above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmindexer.downstream.model import INITIAL_LOGIT_SCALE
from lmindexer.downstream.trie import IdTrie
from lmindexer.errors import ConfigError

Prefix = tuple[int, ...]
# The softmax temperature of the item cosines: the scale the model's own cosine scores start at.
TEMPERATURE = INITIAL_LOGIT_SCALE
# The name of the learned item vectors on the network while :meth:`DensePrior.learning` trains them.
LEARNED_ITEMS = "prior_items"


class DensePrior:
    """Item embeddings and, for a trie of their IDs, the prior score of every prefix at every position."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        self._vectors: dict[str, torch.Tensor] = {}
        # Rebuilt after any change to the items or their IDs: one row per item in the trie, and per position the
        # node (prefix of that length) each item lies under, the parents' rows and each child token's node.
        self._built_for: tuple[int, int] | None = None
        self._items: torch.Tensor = torch.zeros(0)
        self._row_of_item: dict[str, int] = {}
        self._node_of_item: list[torch.Tensor] = []
        self._node_counts: list[int] = []
        self._parents: list[dict[Prefix, int]] = []
        self._children: list[torch.Tensor] = []
        # While learning: the trainable item vectors (rows in the order of the built tables) the scores read.
        self._learned: nn.Parameter | None = None

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._vectors

    @property
    def depth(self) -> int:
        return len(self.sizes)

    def item_ids(self) -> list[str]:
        return sorted(self._vectors)

    def vectors(self, item_ids: Sequence[str]) -> torch.Tensor:
        return torch.stack([self._vectors[item_id] for item_id in item_ids])

    def set_vectors(self, item_ids: Sequence[str], vectors: torch.Tensor, *, normalised: bool = False) -> None:
        """Set (or replace) the embeddings of these items; rows are L2-normalised unless ``normalised`` says they
        are already (rows read back from a saved model: normalising again would move their last bits)."""
        if vectors.ndim != 2 or vectors.size(0) != len(item_ids):
            raise ConfigError(f"expected {len(item_ids)} embedding rows, got a tensor of shape {tuple(vectors.shape)}")
        rows = vectors.detach().float().cpu()
        rows = rows if normalised else F.normalize(rows, dim=-1)
        for item_id, row in zip(item_ids, rows, strict=True):
            self._vectors[item_id] = row
        self._built_for = None

    def invalidate(self) -> None:
        """Call when the trie changed: the tables are rebuilt before the next use."""
        if self._learned is not None:
            raise ConfigError("the items changed while their vectors were being learned")
        self._built_for = None

    @contextlib.contextmanager
    def learning(self, network: nn.Module, trie: IdTrie) -> Iterator[None]:
        """Train the vectors of ``trie``'s items with ``network``: inside the block they are a parameter of the
        network (``LEARNED_ITEMS``, on its device, so its optimiser and checkpoints hold them) that the scores read;
        when the block ends without an error the learned rows become the items' vectors. Every item needs a vector
        to start from."""
        missing = [item_id for item_id, _ in trie if item_id not in self._vectors]
        if missing:
            raise ConfigError(f"{len(missing)} items have no vector to start from, e.g. {missing[0]!r}")
        self._build(trie)
        device = next(network.parameters()).device
        self._learned = nn.Parameter(self._items.clone().to(device))
        network.register_parameter(LEARNED_ITEMS, self._learned)
        try:
            yield
            learned = self._learned.detach()
        finally:
            del network._parameters[LEARNED_ITEMS]
            self._learned = None
        self.set_vectors([item_id for item_id, _ in sorted(trie)], learned)

    def _ensure_built(self, trie: IdTrie) -> None:
        if self._built_for != (id(trie), len(trie)):
            self._build(trie)

    def _build(self, trie: IdTrie) -> None:
        if trie.depth != self.depth:
            raise ConfigError(f"the trie holds IDs of {trie.depth} tokens, the prior {self.depth}")
        if not self._vectors:
            raise ConfigError(
                "no item embeddings: the dense prior is built from the items' texts (fit_retrieval embeds them; "
                "GenerativeModel.embed_items embeds them without training)"
            )
        hidden = next(iter(self._vectors.values())).numel()
        entries = sorted(trie)
        sums: dict[Prefix, torch.Tensor] = {}
        for item_id, tokens in entries:
            vector = self._vectors.get(item_id)
            if vector is not None:
                for length in range(self.depth + 1):
                    prefix = tokens[:length]
                    sums[prefix] = sums[prefix] + vector if prefix in sums else vector.clone()
        rows = []
        for item_id, tokens in entries:
            vector = self._vectors.get(item_id)
            if vector is None:  # the centroid of its nearest ancestor with embedded items (the root always has some)
                ancestor = next(tokens[:length] for length in range(self.depth, -1, -1) if tokens[:length] in sums)
                vector = F.normalize(sums[ancestor], dim=-1)
            rows.append(vector)
        self._items = torch.stack(rows) if rows else torch.zeros(0, hidden)
        self._row_of_item = {item_id: row for row, (item_id, _) in enumerate(entries)}
        self._node_of_item, self._node_counts, self._parents, self._children = [], [], [], []
        for position in range(self.depth):
            nodes = sorted({tokens[: position + 1] for _, tokens in entries})
            node_row = {prefix: row for row, prefix in enumerate(nodes)}
            parent_row = {parent: row for row, parent in enumerate(sorted({prefix[:-1] for prefix in nodes}))}
            children = torch.full((len(parent_row), self.sizes[position]), -1, dtype=torch.long)
            for row, prefix in enumerate(nodes):
                children[parent_row[prefix[:-1]], prefix[-1]] = row
            self._node_of_item.append(torch.tensor([node_row[tokens[: position + 1]] for _, tokens in entries]))
            self._node_counts.append(len(nodes))
            self._parents.append(parent_row)
            self._children.append(children)
        self._built_for = (id(trie), len(trie))

    def item_rows(self, trie: IdTrie, item_ids: Sequence[str]) -> list[int]:
        """Each item's row in :meth:`item_matrix` (the items of ``trie`` in item_id order)."""
        self._ensure_built(trie)
        try:
            return [self._row_of_item[item_id] for item_id in item_ids]
        except KeyError as error:
            raise ConfigError(f"item {error.args[0]!r} has no ID in this model") from None

    def item_matrix(self, trie: IdTrie, device: torch.device) -> torch.Tensor:
        """(items, d): the unit vector of every item of ``trie`` (rows as :meth:`item_rows` gives them); while
        :meth:`learning`, the learned rows, with their gradient."""
        self._ensure_built(trie)
        if self._learned is not None:
            return F.normalize(self._learned.float(), dim=-1)
        return self._items.to(device)

    def scores(self, trie: IdTrie, position: int, summaries: torch.Tensor, prefixes: torch.Tensor) -> torch.Tensor:
        """(rows, sizes[position]): for each row's prefix (``prefixes``, rows x position tokens) and each token, the
        log-sum-exp of ``TEMPERATURE`` x cosine of the row's summary to the items under the prefix the token makes;
        -inf for a token that continues no existing ID."""
        self._ensure_built(trie)
        device = summaries.device
        items = self.item_matrix(trie, device)
        node_of_item = self._node_of_item[position].to(device)
        # In decoding the beams of one source share its summary: each distinct summary is scored against the items
        # once. (In training every row is its own source, and a training encoder needs the gradient unique drops.)
        if summaries.requires_grad:
            distinct, row_of = summaries.float(), torch.arange(summaries.size(0), device=device)
        else:
            distinct, row_of = torch.unique(summaries.float(), dim=0, return_inverse=True)
        # float32 even under a bf16 autocast: the scores of near neighbours differ in the third digit.
        with torch.autocast(device.type, enabled=False):
            logits = TEMPERATURE * (F.normalize(distinct, dim=-1) @ items.T)  # (distinct summaries, items)
        # Log-sum-exp per node: the largest term out first, for stability.
        shape = (logits.size(0), self._node_counts[position])
        index = node_of_item.unsqueeze(0).expand_as(logits)
        peak = torch.full(shape, float("-inf"), device=device).scatter_reduce(1, index, logits, "amax")
        mass = torch.zeros(shape, device=device).scatter_add(1, index, (logits - peak.gather(1, index)).exp())
        node_scores = peak + mass.log()
        parent_row = self._parents[position]
        found = [parent_row.get(tuple(prefix)) for prefix in prefixes[:, :position].tolist()]
        known = torch.tensor([row is not None for row in found], dtype=torch.bool)
        children = self._children[position][torch.tensor([row or 0 for row in found], dtype=torch.long)]
        children[~known] = -1
        present = (children >= 0).to(device)
        chosen = node_scores[row_of].gather(1, children.clamp(min=0).to(device))
        return chosen.masked_fill(~present, float("-inf"))
