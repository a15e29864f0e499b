"""The LMIndexer network: a seq2seq backbone that writes codes, one codebook per position, and a reconstructor.

For position t the decoder reads a start vector followed by the vectors of the codes already chosen and cross-attends
over the encoder's states of the item's text; its last hidden state ``h_t`` is scored against codebook t by cosine
similarity and the code is the argmax (straight-through estimator in training). k-means initialisation, training and
assignment all use that same cosine similarity.

Training losses (per step, at the position being learned):

* reconstruction: a one-layer transformer rebuilds sampled tokens of the item from its code vectors, seeing only a
  random subset of the other tokens (``mask_rate`` per position), so the codes must carry what the text is about;
* contrastive: two dropout views of ``h_t``; at position 1 every other item in the batch is a negative, later only
  items sharing the same prefix are (so siblings are pushed apart); normalised, with a temperature;
* commitment (positions >= 2): the decoder must keep predicting the codes already assigned to earlier positions;
* anchor: states are pulled towards the vectors of their codes (earlier positions, and this one once quantised);
* diversity (quantised stages): one minus the normalised entropy of the batch's mean code distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmindexer.indexers.lm.backbone import Seq2SeqBackbone

IGNORE = -100
CENTRE_MOMENTUM = 0.05


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


@dataclass(frozen=True)
class LossSettings:
    code_temperature: float
    contrastive_temperature: float
    reconstruction_weight: float
    contrastive_weight: float
    commitment_weight: float
    anchor_weight: float
    diversity_weight: float
    mask_rate: tuple[float, ...]
    reconstruct_tokens: int
    view_dropout: float = 0.1


class Reconstructor(nn.Module):
    """One transformer layer: queries are the newest code vector at each target position; keys/values are the code
    vectors and the item's tokens, each query seeing a different random subset of tokens (never its own)."""

    def __init__(self, hidden: int, heads: int, max_tokens: int, levels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.token_position = nn.Embedding(max_tokens, hidden)
        self.code_position = nn.Embedding(levels, hidden)
        self.query_norm = nn.LayerNorm(hidden)
        self.memory_norm = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.output_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(
        self,
        codes: torch.Tensor,
        token_embeddings: torch.Tensor,
        token_mask: torch.Tensor,
        targets: torch.Tensor,
        mask_rate: float,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(B, R, V)`` over ``candidates`` for the token at each target position (``-1`` = padding)."""
        batch, n_codes, _ = codes.shape
        length = token_embeddings.size(1)
        rows = targets.size(1)
        positions = torch.arange(length, device=codes.device)
        memory = torch.cat(
            [codes + self.code_position.weight[:n_codes], token_embeddings + self.token_position(positions)], dim=1
        )
        memory = self.memory_norm(memory)
        where = targets.clamp(min=0)
        query = self.query_norm(codes[:, -1:, :] + self.token_position(where))
        visible = token_mask[:, None, :] & (torch.rand(batch, rows, length, device=codes.device) >= mask_rate)
        visible &= positions[None, None, :] != where[:, :, None]
        allowed = torch.cat([visible.new_ones(batch, rows, n_codes), visible], dim=-1)
        blocked = (~allowed).repeat_interleave(self.heads, dim=0)
        attended, _ = self.attention(query, memory, memory, attn_mask=blocked, need_weights=False)
        hidden = self.attention_norm(query + attended)
        hidden = self.output_norm(hidden + self.feed_forward(hidden))
        return self.output(hidden) @ candidates.T


class LMIndexerModel(nn.Module):
    def __init__(
        self, backbone: Seq2SeqBackbone, codebook_sizes: Sequence[int], max_length: int, losses: LossSettings
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.losses = losses
        hidden = backbone.hidden_size
        with torch.no_grad():
            scale = backbone.word_embeddings.weight.float().norm(dim=-1).mean().item()
        # Code vectors enter the decoder at the scale of its word embeddings.
        self.register_buffer("input_scale", torch.tensor(scale if math.isfinite(scale) and scale > 0 else 1.0))
        self.start = nn.Parameter(torch.zeros(hidden))
        self.summary_scale = nn.Parameter(torch.zeros(()))
        self.codebooks = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(size, hidden), dim=-1)) for size in codebook_sizes]
        )
        # Codes are scored on centred states. Decoder states share a large common component (anisotropy) that would
        # make every item's cosine to every code nearly equal; and below position 1 the items under one parent code
        # share that parent's direction, so one shared codebook would give all siblings the same code. Position 1 is
        # centred on the catalogue mean, position t > 1 on the mean of the items under the same code at t - 1. The
        # centres are set from the catalogue at the start and the end of every stage and follow the training batches
        # while their position trains (they are part of the snapshot).
        for level in range(len(codebook_sizes)):
            rows = 1 if level == 0 else codebook_sizes[level - 1]
            self.register_buffer(f"centre_{level}", torch.zeros(rows, hidden))
        self.reconstructor = Reconstructor(hidden, backbone.num_heads, max_length, len(codebook_sizes))
        self.special_ids = sorted(set(backbone.tokenizer.all_special_ids))

    @property
    def levels(self) -> int:
        return len(self.codebooks)

    # -- the indexer ---------------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(input_ids, attention_mask)

    def code_vectors(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.codebooks[level], dim=-1)[codes]

    @staticmethod
    def summary(memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The item's mean encoder state, L2-normalised (a sentence embedding)."""
        weights = memory_mask.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def decoder_inputs(self, prefix: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """The start vector, then the vectors of the codes in ``prefix``, at the decoder's input scale."""
        vectors = [F.normalize(summary + self.start, dim=-1).unsqueeze(1)]
        vectors += [self.code_vectors(level, prefix[:, level]).unsqueeze(1) for level in range(prefix.size(1))]
        return torch.cat(vectors, dim=1) * self.input_scale

    def decoder_states(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.backbone.decode(self.decoder_inputs(prefix, self.summary(memory, memory_mask)), memory, memory_mask)

    def hidden(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """States ``(B, t+1, d)`` after the start vector and the ``t`` codes of ``prefix``.

        A decoder warm-started from an encoder has new, randomly initialised cross-attention: at first it gives every
        item nearly the same state. So the item's summary (its mean encoder state) enters twice: in the start vector,
        and added to every output with a learned scale that the trainer sets before training so that the summary
        dominates at first. The decoder then learns what to add to it.
        """
        states = self.decoder_states(memory, memory_mask, prefix)
        return states + self.summary_scale * self.summary(memory, memory_mask).unsqueeze(1).to(states.dtype)

    def centres(self, level: int) -> torch.Tensor:
        return getattr(self, f"centre_{level}")

    @staticmethod
    def parents(prefix: torch.Tensor, level: int) -> torch.Tensor:
        """Which centre row each item uses at ``level``: its code at ``level - 1`` (row 0 at position 1)."""
        if level == 0:
            return torch.zeros(prefix.size(0), dtype=torch.long, device=prefix.device)
        return prefix[:, level - 1]

    def code_space(self, hidden: torch.Tensor, level: int, parents: torch.Tensor) -> torch.Tensor:
        """Unit vectors compared with codebook ``level``: decoder states minus their centre."""
        return F.normalize(hidden - self.centres(level)[parents].to(hidden.dtype), dim=-1)

    def similarity(self, hidden: torch.Tensor, level: int, parents: torch.Tensor) -> torch.Tensor:
        return self.code_space(hidden, level, parents) @ F.normalize(self.codebooks[level], dim=-1).T

    @torch.no_grad()
    def follow_centres(self, states: torch.Tensor, level: int, parents: torch.Tensor) -> None:
        table = self.centres(level)
        sums = torch.zeros_like(table).index_add_(0, parents, states.detach().to(table.dtype))
        counts = torch.bincount(parents, minlength=table.size(0)).to(table.dtype).unsqueeze(1)
        seen = counts.squeeze(1) > 0
        table[seen] = torch.lerp(table[seen], sums[seen] / counts[seen], CENTRE_MOMENTUM)

    @torch.no_grad()
    def greedy_codes(self, memory: torch.Tensor, memory_mask: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes position by position, each from the codes this model chose before it (no teacher forcing).

        Scores are compared in float64 so that an item's code does not hinge on float32 rounding differences
        between batch shapes.
        """
        levels = self.levels if levels is None else levels
        prefix = torch.zeros(memory.size(0), 0, dtype=torch.long, device=memory.device)
        for level in range(levels):
            state = self.hidden(memory, memory_mask, prefix)[:, level]
            space = self.code_space(state.double(), level, self.parents(prefix, level))
            scores = space @ F.normalize(self.codebooks[level].double(), dim=-1).T
            prefix = torch.cat([prefix, scores.argmax(dim=-1, keepdim=True)], dim=1)
        return prefix

    # -- training ------------------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor], level: int, quantised: bool) -> dict[str, torch.Tensor]:
        """Training losses at position ``level`` (0-based); ``batch['prefix']`` holds the codes assigned before it."""
        settings = self.losses
        if "memory" in batch:
            memory = batch["memory"].float()
        else:
            memory = self.encode(batch["input_ids"], batch["attention_mask"])
        mask = batch["attention_mask"]
        prefix = batch["prefix"][:, :level]
        dropout = settings.view_dropout if self.training else 0.0
        views = [self.hidden(F.dropout(memory, dropout, self.training), mask, prefix) for _ in range(2)]
        state = views[0][:, level]
        parents = self.parents(prefix, level)
        if self.training:
            self.follow_centres(state, level, parents)
        out: dict[str, torch.Tensor] = {}

        if quantised:
            probabilities = torch.softmax(self.similarity(state, level, parents) / settings.code_temperature, dim=-1)
            hard = F.one_hot(probabilities.argmax(dim=-1), probabilities.size(-1)).to(probabilities.dtype)
            # Straight-through: the forward pass uses the chosen code, gradients flow through the softmax.
            weights = hard + probabilities - probabilities.detach()
            newest = weights @ F.normalize(self.codebooks[level], dim=-1)
            usage = probabilities.mean(dim=0)
            entropy = -(usage * torch.log(usage.clamp(min=1e-12))).sum()
            out["perplexity"] = torch.exp(entropy.detach())
            # Straight-through training can herd items onto a few codes; rewarding an even use of the codebook in
            # each batch (as wav2vec 2.0's diversity loss does) keeps the codes alive.
            out["diversity"] = 1.0 - entropy / math.log(probabilities.size(-1))
        else:
            newest = self.code_space(state, level, parents)
        code_vectors = [self.code_vectors(s, prefix[:, s]) for s in range(level)] + [newest]
        out["reconstruction"] = self._reconstruction(batch, torch.stack(code_vectors, dim=1), level)

        first, second = self.code_space(state, level, parents), self.code_space(views[1][:, level], level, parents)
        logits = first @ second.T / settings.contrastive_temperature
        if level > 0:
            # Later positions separate siblings: only items with the same prefix are negatives.
            same_prefix = (prefix[:, None, :] == prefix[None, :, :]).all(dim=-1)
            logits = logits.masked_fill(~same_prefix, float("-inf"))
        out["contrastive"] = F.cross_entropy(logits, torch.arange(logits.size(0), device=logits.device))

        if level > 0:
            terms = [
                F.cross_entropy(
                    self.similarity(views[0][:, s], s, self.parents(prefix, s)) / settings.code_temperature,
                    prefix[:, s],
                )
                for s in range(level)
            ]
            out["commitment"] = torch.stack(terms).mean()
        else:
            out["commitment"] = state.new_zeros(())

        # Anchor (VQ-style commitment): each state is pulled towards the vector of its code, for the positions
        # already assigned and, once quantised, for this one. Codes sitting deep inside their cell survive the
        # later stages, which move the shared decoder.
        anchored = list(range(level)) + ([level] if quantised else [])
        if anchored:
            pulls = []
            for s in anchored:
                chosen = prefix[:, s] if s < level else probabilities.argmax(dim=-1)
                space = self.code_space(views[0][:, s], s, self.parents(prefix, s))
                target = self.code_vectors(s, chosen).detach()
                pulls.append(1.0 - (space * target).sum(dim=-1).mean())
            out["anchor"] = torch.stack(pulls).mean()
        else:
            out["anchor"] = state.new_zeros(())

        out["loss"] = (
            settings.reconstruction_weight * out["reconstruction"]
            + settings.contrastive_weight * out["contrastive"]
            + settings.commitment_weight * out["commitment"]
            + settings.anchor_weight * out["anchor"]
        )
        if "diversity" in out:
            out["loss"] = out["loss"] + settings.diversity_weight * out["diversity"]
        return out

    def _reconstruction(self, batch: dict[str, torch.Tensor], codes: torch.Tensor, level: int) -> torch.Tensor:
        input_ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        content = mask.clone()
        for special in self.special_ids:
            content &= input_ids != special
        # Sample up to R content positions per item: random scores, best R; rows with fewer get padding (-1).
        rows = min(self.losses.reconstruct_tokens, input_ids.size(1))
        scores = torch.rand(input_ids.shape, device=input_ids.device).masked_fill(~content, -1.0)
        top, targets = scores.topk(rows, dim=1)
        targets = targets.masked_fill(top < 0, -1)
        target_ids = input_ids.gather(1, targets.clamp(min=0)).masked_fill(targets < 0, -1)
        # The softmax runs over the batch's own vocabulary: the true token competes with every other token that
        # occurs in these items, at a fraction of the cost of the full vocabulary.
        vocabulary = torch.unique(target_ids[target_ids >= 0])
        if vocabulary.numel() == 0:
            return codes.new_zeros(())
        embeddings = self.backbone.word_embeddings
        candidates = embeddings(vocabulary)
        tokens = embeddings(input_ids)
        if not any(p.requires_grad for p in embeddings.parameters()):
            candidates, tokens = candidates.detach(), tokens.detach()
        logits = self.reconstructor(codes, tokens, mask, targets, self.losses.mask_rate[level], candidates)
        labels = torch.searchsorted(vocabulary, target_ids.clamp(min=0)).masked_fill(target_ids < 0, IGNORE)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
