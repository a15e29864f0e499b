"""The generative model of the downstream tasks: a source (query text or item history) -> the target's ID tokens.

The decoder writes the ID one position at a time, as the LMIndexer does: it is fed a start vector (holding a summary
of the source) and the embeddings of the tokens written so far, and its last state is scored by cosine against the
output vectors of the next position. The token vectors start random, or, from an LMIndexer snapshot, as its
codebooks (see :mod:`lmindexer.downstream.generative`).

Retrieval reads text with the backbone's encoder. Recommendation reads the user's history as a sequence of ID tokens
(each item as its tokens, most recent last) with a small transformer encoder over the same token vectors.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmindexer.downstream.trie import IdTrie
from lmindexer.indexers.lm.backbone import Seq2SeqBackbone

Task = Literal["retrieval", "recommendation"]
# What stands for a history where the decoder starts, in its residual and as the item prior's query: the mean of the
# history encoder's states over the whole window, or over the tokens of its most recent item alone (SASRec reads the
# last position's state: under a causal encoder it has attended to every item before it).
HistorySummary = Literal["mean", "last-item"]
# (position, source summaries (R, d), the rows' prefixes (R, position)) -> (R, sizes[position]) prior scores.
PriorScores = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
INITIAL_LOGIT_SCALE = 20.0


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` (R,) under ``logits`` (R, C), the target's probability smoothed: a share
    ``label_smoothing`` of it spread evenly over the tokens each row may emit, those with a finite logit (a token
    masked to -inf, one that continues no existing ID, gets none). ``F.cross_entropy(label_smoothing=...)`` spreads
    it over every class, so a masked token's -inf log-probability would make the loss infinite; with no token masked
    the two are the same loss."""
    if label_smoothing == 0.0:
        return F.cross_entropy(logits, targets)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    allowed = torch.isfinite(logits)
    target_term = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    uniform_term = -log_probs.masked_fill(~allowed, 0.0).sum(dim=-1) / allowed.sum(dim=-1)
    return ((1.0 - label_smoothing) * target_term + label_smoothing * uniform_term).mean()


class HistoryEncoder(nn.Module):
    """Encodes a window of items, each written as its ID tokens, into states the decoder attends to.

    ``causal``: each item's tokens attend only to the tokens of the items up to it (its own included), so the states
    of a window's first ``t`` items do not depend on what follows them: one pass over a window then holds the
    history of every next-item step in it (sequence training), as SASRec's causal self-attention does."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        layers: int,
        window: int,
        depth: int,
        dropout: float = 0.1,
        *,
        causal: bool = False,
        input_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.window = window
        self.depth = depth
        self.causal = causal
        self.item_position = nn.Embedding(window, hidden)
        self.token_position = nn.Embedding(depth, hidden)
        # nn.Embedding's unit-variance default would drown the item vectors (norm ~ the word-embedding scale).
        for table in (self.item_position, self.token_position):
            nn.init.normal_(table.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 4 * hidden, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        # Pre-norm layers drop out only what their sublayers add, so the inputs (the items' vectors) otherwise
        # reach every layer whole; SASRec drops them out too (its emb_dropout). No weights: saved models load alike.
        self.input_dropout = nn.Dropout(dropout) if input_dropout else nn.Identity()

    def forward(self, token_vectors: torch.Tensor, item_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``token_vectors`` (B, W, depth, d) of a window (right-aligned; left-aligned when causal, so that padding
        only follows real items); ``item_mask`` (B, W), 1 for real items."""
        batch, window, depth, hidden = token_vectors.shape
        positions = torch.arange(window, device=token_vectors.device)
        tokens = torch.arange(depth, device=token_vectors.device)
        states = token_vectors + self.item_position(positions)[None, :, None] + self.token_position(tokens)[None, None]
        states = self.input_dropout(states.reshape(batch, window * depth, hidden))
        mask = item_mask.repeat_interleave(depth, dim=1)
        later = None
        if self.causal:
            item_of_token = positions.repeat_interleave(depth)
            later = item_of_token[None, :] > item_of_token[:, None]  # True: a later item's token, hidden
        out = self.layers(states, mask=later, src_key_padding_mask=mask == 0)
        return self.norm(out), mask


class GenerativeIdModel(nn.Module):
    def __init__(
        self,
        backbone: Seq2SeqBackbone,
        sizes: Sequence[int],
        *,
        task: Task = "retrieval",
        history_window: int = 20,
        history_layers: int = 2,
        causal_history: bool = False,
        history_summary: HistorySummary = "mean",
        prior: bool = False,
        dropout: float | None = None,
        history_input_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.task = task
        self.history_summary = history_summary
        self.sizes = tuple(int(s) for s in sizes)
        hidden = backbone.hidden_size
        with torch.no_grad():
            scale = backbone.word_embeddings.weight.float().norm(dim=-1).mean().item()
        # Token vectors enter the decoder at the scale of its word embeddings, as in the indexer.
        self.register_buffer("input_scale", torch.tensor(scale if math.isfinite(scale) and scale > 0 else 1.0))
        self.start = nn.Parameter(torch.zeros(hidden))
        self.summary_scale = nn.Parameter(torch.ones(()))
        self.token_vectors = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(size, hidden), dim=-1)) for size in self.sizes]
        )
        self.output_vectors = nn.ParameterList(
            [nn.Parameter(vectors.detach().clone()) for vectors in self.token_vectors]
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(INITIAL_LOGIT_SCALE)))
        # The log-weight of the prior over the items (see lmindexer.downstream.prior), starting at a weight of 1;
        # only models that use one have it (a retriever's dense prior, a recommender's item prior).
        self.prior_weight: nn.Parameter | None = None
        if prior:
            self.prior_weight = nn.Parameter(torch.zeros(()))
        # A centre per previous token subtracted before scoring. Zero (no effect): kept so that the weights of
        # models saved by earlier releases, which copied them from LMIndexer snapshots, still load.
        for position in range(self.depth):
            rows = 1 if position == 0 else self.sizes[position - 1]
            self.register_buffer(f"centre_{position}", torch.zeros(rows, hidden))
        self.history: HistoryEncoder | None = None
        if task == "recommendation":
            self.history = HistoryEncoder(
                hidden,
                backbone.num_heads,
                history_layers,
                history_window,
                self.depth,
                causal=causal_history,
                input_dropout=history_input_dropout,
            )
        if dropout is not None:  # None keeps what the backbone's config and the history encoder declare
            # BERT-style attention reads its dropout module's p; torch's MultiheadAttention keeps a float of its own.
            parts = [backbone.decoder_module, *([self.history] if self.history is not None else [])]
            for module in (module for part in parts for module in part.modules()):
                if isinstance(module, nn.Dropout):
                    module.p = dropout
                elif isinstance(module, nn.MultiheadAttention):
                    module.dropout = dropout

    @property
    def depth(self) -> int:
        return len(self.sizes)

    # -- sources ---------------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(input_ids, attention_mask)

    def embed_tokens(self, position: int, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.token_vectors[position], dim=-1)[tokens]

    def encode_history(
        self, history: torch.Tensor, item_mask: torch.Tensor, item_vectors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``history`` (B, W, depth) tokens of the items (padding rows anything in range), ``item_mask`` (B, W);
        ``item_vectors`` (B, W, d): unit vectors of the items, added to each of their tokens' vectors (the item
        prior's own vectors, so that one vector per item is both what a history reads and what is scored, as SASRec
        ties its input and output item embeddings)."""
        if self.history is None:
            raise ValueError("this model reads text, not item histories")
        vectors = torch.stack([self.embed_tokens(p, history[..., p]) for p in range(self.depth)], dim=2)
        if item_vectors is not None:
            vectors = vectors + item_vectors.unsqueeze(2).to(vectors.dtype)
        return self.history(vectors * self.input_scale, item_mask)

    # -- the decoder -----------------------------------------------------------------------------------------------

    @staticmethod
    def summary(memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The normalised mean of the states under ``memory_mask``: a text's summary (and a history's, by default)."""
        weights = memory_mask.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def source_summary(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """(B, d): the vector the decoder starts from, adds to its states and queries the prior with: a text's
        :meth:`summary`; a history's, or with ``history_summary="last-item"`` that of its most recent item's tokens
        (the last real item, wherever the window aligns its items)."""
        if self.history is None or self.history_summary == "mean":
            return self.summary(memory, memory_mask)
        item_of_token = torch.arange(memory.size(1), device=memory.device).div(self.depth, rounding_mode="floor")
        real = memory_mask.bool()
        last = item_of_token.masked_fill(~real, -1).max(dim=1).values  # (B,): -1 for an empty history
        return self.summary(memory, (item_of_token[None, :] == last[:, None]) & real)

    def states(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, t+1, d) after the start vector and the ``t`` tokens of ``prefix``."""
        summary = self.source_summary(memory, memory_mask)
        inputs = [F.normalize(summary + self.start, dim=-1).unsqueeze(1)]
        inputs += [self.embed_tokens(p, prefix[:, p]).unsqueeze(1) for p in range(prefix.size(1))]
        embeds = torch.cat(inputs, dim=1) * self.input_scale
        states = self.backbone.decode(embeds.to(memory.dtype), memory, memory_mask)
        return states + self.summary_scale * summary.unsqueeze(1).to(states.dtype)

    def centre(self, position: int) -> torch.Tensor:
        return getattr(self, f"centre_{position}")

    def logits(
        self, state: torch.Tensor, position: int, prefix: torch.Tensor, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores (B, sizes[position]) of the next token: scaled cosine of the centred state to the output vectors,
        plus ``prior`` (B, sizes[position]: the dense prior's score of each token, -inf off the trie) times the
        learned prior weight when the model has one.

        ``prefix`` holds the tokens before ``position`` (at least ``position`` columns).
        """
        if position == 0:
            parents = torch.zeros(state.size(0), dtype=torch.long, device=state.device)
        else:
            parents = prefix[:, position - 1]
        centred = state.float() - self.centre(position)[parents].float()
        scores = F.normalize(centred, dim=-1) @ F.normalize(self.output_vectors[position].float(), dim=-1).T
        scores = scores * self.logit_scale.exp().clamp(max=100.0)
        if prior is not None:
            if self.prior_weight is None:
                raise ValueError("this model was built without a dense prior")
            # -inf (off the trie) is masked, not multiplied: its gradient would be NaN.
            off = torch.isinf(prior).to(scores.device)
            weighted = prior.to(scores.device).masked_fill(off, 0.0) * self.prior_weight.exp().clamp(max=100.0)
            scores = (scores + weighted).masked_fill(off, float("-inf"))
        return scores

    def loss(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        targets: torch.Tensor,
        prior: PriorScores | None = None,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target IDs (B, depth), averaged over positions. With ``prior`` (see
        :meth:`beam_search`) the softmax runs over the tokens that continue an existing ID, as decoding does;
        ``label_smoothing`` see :func:`smoothed_cross_entropy`."""
        states = self.states(memory, memory_mask, targets[:, :-1])
        summary = self.source_summary(memory, memory_mask)
        return self._teacher_forced_loss(states, summary, targets, prior, label_smoothing)

    def _teacher_forced_loss(
        self,
        states: torch.Tensor,
        summary: torch.Tensor,
        targets: torch.Tensor,
        prior: PriorScores | None,
        label_smoothing: float,
    ) -> torch.Tensor:
        """Cross-entropy of ``targets`` (R, depth) from the decoder's states (R, depth, d), averaged over positions."""
        losses = []
        for p in range(self.depth):
            scores = None if prior is None else prior(p, summary, targets[:, :p])
            logits = self.logits(states[:, p], p, targets, scores)
            losses.append(smoothed_cross_entropy(logits, targets[:, p], label_smoothing))
        return torch.stack(losses).mean()

    def prefix_summaries(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """(B, W, d): for each item slot ``t`` of a window, :meth:`source_summary` of the memory of items 0..t alone
        (the mean over them, or item ``t``'s own tokens with ``history_summary="last-item"``)."""
        batch, tokens, hidden = memory.shape
        depth = self.depth
        weights = memory_mask.unsqueeze(-1).to(memory.dtype)
        sums = (memory * weights).view(batch, tokens // depth, depth, hidden).sum(dim=2)
        counts = weights.view(batch, tokens // depth, depth).sum(dim=2)
        if self.history_summary == "mean":
            sums, counts = sums.cumsum(dim=1), counts.cumsum(dim=1)
        return F.normalize(sums / counts.clamp(min=1.0).unsqueeze(-1), dim=-1)

    def sequence_loss(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        targets: torch.Tensor,
        target_mask: torch.Tensor,
        prior: PriorScores | None = None,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """:meth:`loss` of every next-item step of a window in one pass: ``memory`` (B, W x depth, d) comes from a
        causal history encoder over W left-aligned items, ``targets`` (B, W, depth) holds the item that followed
        each slot and ``target_mask`` (B, W) the slots that are steps to learn. Slot ``t`` is decoded against the
        memory of items 0..t only, so each step's loss is the one :meth:`loss` gives for its history alone."""
        batch, window, depth = targets.shape
        item_of_token = torch.arange(window, device=memory.device).repeat_interleave(depth)
        slots = torch.arange(window, device=memory.device)
        visible = (item_of_token[None, :] <= slots[:, None])[None] & memory_mask.bool()[:, None, :]
        summaries = self.prefix_summaries(memory, memory_mask)
        inputs = [F.normalize(summaries + self.start, dim=-1).unsqueeze(2)]
        inputs += [self.embed_tokens(p, targets[..., p]).unsqueeze(2) for p in range(depth - 1)]
        embeds = torch.cat(inputs, dim=2) * self.input_scale
        states = self.backbone.decode_blocks(embeds.to(memory.dtype), memory, visible)
        states = states + self.summary_scale * summaries.unsqueeze(2).to(states.dtype)
        steps = target_mask.reshape(-1).bool()
        return self._teacher_forced_loss(
            states.reshape(batch * window, depth, -1)[steps],
            summaries.reshape(batch * window, -1)[steps],
            targets.reshape(batch * window, depth)[steps],
            prior,
            label_smoothing,
        )

    # -- decoding --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def beam_search(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        trie: IdTrie,
        beam_size: int,
        excluded: Sequence[Collection[str]] | None = None,
        prior: PriorScores | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``beam_size`` most likely existing IDs per source, as (item_id, log-probability), best first.

        At each position only tokens that continue a prefix in ``trie`` are scored (the softmax is taken over them),
        so every finished beam is an ID that exists and maps back to its item. ``excluded`` (one collection of
        item_ids per source, e.g. a user's history) is never returned for that source: a beam is not extended by a
        token under which every item is excluded, so no beam is spent on them and the result holds ``beam_size``
        items whenever that many others exist. Scores stay the model's log-probabilities under the trie (the
        exclusion prunes, it does not renormalise), so the result is the model's ranking with those items left out.
        ``prior(position, summaries, prefixes)`` gives each row's dense-prior scores (see :meth:`logits`).

        Decoding is incremental (see :mod:`lmindexer.indexers.lm.decoding`): each position feeds only the beams'
        last tokens and reads the earlier positions and the memory's cross-attention keys and values from the
        decoder's cache (the same states as :meth:`states` recomputes from scratch, which the tests cross-check
        against teacher-forced scores). Each source keeps the same number of rows at a position (a source with fewer
        live beams is padded with dead rows that are never extended), so that its rows can share one copy of its
        memory's keys and values.
        """
        if trie.depth != self.depth:
            raise ValueError(f"the trie holds IDs of {trie.depth} tokens, the model writes {self.depth}")
        batch = memory.size(0)
        if excluded is not None and len(excluded) != batch:
            raise ValueError(f"excluded holds {len(excluded)} collections for {batch} sources")
        pruned = [trie.excluded_counts(items) for items in excluded] if excluded is not None else [Counter()] * batch
        summary = self.source_summary(memory, memory_mask)
        decoder = self.backbone.incremental_decoder(memory, memory_mask)
        row_summary = summary
        inputs = F.normalize(summary + self.start, dim=-1).unsqueeze(1) * self.input_scale
        # The live beams of each source: (tokens, score, row of the beam it extends); all sources advance together.
        beams: list[list[tuple[tuple[int, ...], float, int]]] = [[((), 0.0, b)] for b in range(batch)]
        # The decoder's rows, source-major, ``width`` per source: (tokens, score, live) of the beam (or padding) each
        # row holds.
        rows: list[tuple[tuple[int, ...], float, bool]] = [((), 0.0, True) for _ in range(batch)]
        width = 1
        for position in range(self.depth):
            prefix = torch.tensor([tokens for tokens, _, _ in rows], dtype=torch.long, device=memory.device)
            prefix = prefix.reshape(len(rows), position)
            hidden = decoder.step(inputs)
            state = hidden + self.summary_scale * row_summary.to(hidden.dtype)
            scores = None if prior is None else prior(position, row_summary, prefix)
            logits = self.logits(state, position, prefix, scores)
            children = [trie.allowed(tokens) if live else [] for tokens, _, live in rows]
            allowed = torch.full_like(logits, float("-inf"))
            allowed[_cells(children)] = 0.0
            log_probs = torch.log_softmax(logits + allowed, dim=-1).cpu()
            if any(pruned):
                # What may extend each beam: the trie's children, less those under which all items are excluded
                # (the softmax stays over the children: the exclusion prunes, it does not renormalise).
                extensions = [
                    trie.open_children(tokens, pruned[row // width], tokens_allowed)
                    if tokens_allowed and pruned[row // width]
                    else tokens_allowed
                    for row, ((tokens, _, _), tokens_allowed) in enumerate(zip(rows, children, strict=True))
                ]
                open_cells = torch.zeros_like(log_probs, dtype=torch.bool)
                open_cells[_cells(extensions)] = True
                log_probs = log_probs.masked_fill(~open_cells, float("-inf"))
            # Every (row, token) candidate's score; off the trie, excluded or on a padding row: -inf (a padding row's
            # softmax over nothing is NaN).
            totals = log_probs + torch.tensor([score for _, score, _ in rows]).unsqueeze(1)
            totals = totals.masked_fill(totals.isnan(), float("-inf")).view(batch, -1)
            values, indices = totals.topk(min(beam_size, totals.size(1)), dim=1)
            # Candidates that tie with the last one kept are all taken, so that the order below (score, then tokens)
            # decides which stay, as it does for the others, not topk's order among equal values (bf16 states give
            # equal scores often enough).
            edge = values[:, -1:]
            tied = ((totals >= edge).sum(dim=1) > values.size(1)) & torch.isfinite(edge).squeeze(1)
            vocabulary = log_probs.size(1)
            beams = []
            for source in range(batch):
                if tied[source]:
                    found_indices = (totals[source] >= edge[source]).nonzero().squeeze(1)
                    found_values = totals[source, found_indices]
                else:
                    found_indices, found_values = indices[source], values[source]
                found = []
                for value, index in zip(found_values.tolist(), found_indices.tolist(), strict=True):
                    if value == float("-inf"):
                        continue
                    row = source * width + index // vocabulary
                    found.append(((*rows[row][0], index % vocabulary), value, row))
                beams.append(sorted(found, key=lambda c: (-c[1], c[0]))[:beam_size])
            if position + 1 == self.depth:
                break
            previous, width = width, max(len(found) for found in beams)
            if width == 0:
                break
            # A source with fewer live beams repeats its first row with any valid token (0) as padding.
            parents: list[int] = []
            current, rows = rows, []
            for source, found in enumerate(beams):
                for tokens, score, parent in found:
                    parents.append(parent)
                    rows.append((tokens, score, True))
                padding = source * previous
                for _ in range(width - len(found)):
                    parents.append(padding)
                    rows.append(((*current[padding][0], 0), float("-inf"), False))
            index = torch.tensor(parents, device=memory.device)
            decoder.reorder(index)
            row_summary = row_summary[index]
            last = torch.tensor([tokens[-1] for tokens, _, _ in rows], device=memory.device)
            inputs = self.embed_tokens(position, last).unsqueeze(1) * self.input_scale
        results: list[list[tuple[str, float]]] = []
        for found in beams:
            ranked = []
            for tokens, score, _ in found:
                item_id = trie.item_for(tokens)
                if item_id is not None:  # always, by construction; kept as a guard against a concurrent removal
                    ranked.append((item_id, score))
            results.append(ranked)
        return results


def _cells(tokens_per_row: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """The (rows, columns) index of every token of every row, for indexing a (rows, vocabulary) tensor."""
    return [row for row, tokens in enumerate(tokens_per_row) for _ in tokens], [t for ts in tokens_per_row for t in ts]
