"""Training of the LMIndexer on Accelerate (CPU, one GPU or many with the same code), resumable, phase by phase.

1. **Encoder** (when the preset trains it): the top ``train_layers`` layers of the encoder learn from the catalogue
   (the outputs of the layers below are computed once and cached). Two views of each item (each leaving out a random
   share of its tokens) must recognise each other among the batch (contrastive), predict each other's balanced code
   assignment (swapped prediction with Sinkhorn-balanced targets, as in SwAV) and rebuild the item's content words
   from its code (bag-of-words reconstruction over the whole vocabulary). The encoder is then frozen.
2. **Positions 1..L**, in turn: the node centres and codebook start from k-means on the writer's initial states
   (position 1 is then k-means on the encoder's summary, the two-stage baseline); the writer trains with the same
   three objectives on its own states; centres and codebook are refitted on the trained states. The position is then
   frozen: nothing that computes an earlier position ever trains again, so earlier codes cannot drift.

Every learned change is kept only where a label-free criterion says it helped: the cross-entropy of held-out items'
content words under a smoothed word distribution per code prefix fitted on the other items (how much the codes say
about the text). Otherwise the initial (k-means) state is restored. Both values are reported. (``keep_learned:
always`` keeps every change whatever the criterion says: an ablation that measures what its decisions are worth.)

One AdamW optimiser and one schedule (linear warm-up, cosine decay) run across all phases, through the platform's one
training loop (:mod:`lmindexer.training.loop`); the parameters of a phase not running get no gradient. Whole-catalogue
passes (caches, k-means, assignment) run on every process and the main
process's result is broadcast, so processes agree exactly. The state is checkpointed every ``checkpoint_every``
steps and at phase boundaries; a rerun with the same options and catalogue resumes from it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmindexer.indexers.kmeans import fit_kmeans
from lmindexer.indexers.lm.encoder import mean_pool
from lmindexer.indexers.lm.model import LMIndexerModel, NodeCentres, nearest
from lmindexer.methods import LMIndexerConfig
from lmindexer.training.checkpoint import find_checkpoint, save_checkpoint
from lmindexer.training.loop import (
    TrainingLoop,
    create_accelerator,
    pad_token_rows,
    process_share,
    summarise_losses,
    training_fingerprint,
)

log = logging.getLogger(__name__)
SINKHORN_ITERATIONS = 3
# Seeds of one phase's steps start this far from the previous phase's: phases never share a step's randomness.
PHASE_SEED_STRIDE = 7919
# Dirichlet prior (in tokens) pulling a code's word distribution towards the catalogue's: a code seen on few items
# says little, and the criterion must not reward codes for memorising their handful of items.
CRITERION_PRIOR = 50.0


# -- data ---------------------------------------------------------------------------------------------------------


class CatalogueTokens:
    """Every item's token ids (truncated, unpadded), its content words (for the reconstruction objective and the
    criterion) and whether it is held out."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], max_length: int, heldout_share: float) -> None:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.ids = [torch.tensor(row, dtype=torch.long) for row in encoded["input_ids"]]
        self.pad_id = tokenizer.pad_token_id or 0
        self.vocab_size = len(tokenizer)
        content = content_vocabulary(tokenizer)
        self.words = [row[content[row]] for row in self.ids]
        # Held out by a hash of the text: the same items whatever the catalogue's order or the process.
        self.heldout = torch.tensor(
            [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < heldout_share for t in texts]
        )

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_token_rows([self.ids[i] for i in index], self.pad_id)

    def word_targets(self, index: Sequence[int]) -> torch.Tensor:
        """``(B, V)`` each item's content-word distribution (uniform over its content tokens)."""
        targets = torch.zeros((len(index), self.vocab_size))
        for n, i in enumerate(index):
            words = self.words[i]
            if len(words):
                targets[n].index_add_(0, words, torch.full((len(words),), 1.0 / len(words)))
        return targets

    def by_length(self, batch_size: int) -> Iterator[list[int]]:
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def content_vocabulary(tokenizer: Any) -> torch.Tensor:
    """``(V,)`` True for tokens that carry content: not special, not punctuation or digits alone, not a stop word,
    not a word-piece continuation."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        if index >= len(mask) or index in special:
            continue
        word = token.lstrip("▁Ġ").lower()
        if token.startswith("##") or len(word) < 2 or not any(c.isalpha() for c in word):
            continue
        if word in ENGLISH_STOP_WORDS:
            continue
        mask[index] = True
    return mask


class StateCache:
    """Token states of every item (float16, unpadded) at one depth of the encoder."""

    def __init__(self, states: list[torch.Tensor]) -> None:
        self.states = states

    def padded(self, index: Sequence[int], device: torch.device) -> torch.Tensor:
        rows = [self.states[i] for i in index]
        length = max(len(r) for r in rows)
        out = torch.zeros((len(rows), length, rows[0].size(-1)), dtype=torch.float32)
        for n, row in enumerate(rows):
            out[n, : len(row)] = row.float()
        return out.to(device)


# -- objectives ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Soft assignments ``(B, K)`` whose codes are used equally across the batch (Sinkhorn-Knopp, as in SwAV)."""
    q = torch.exp((scores - scores.max()) / epsilon).T.double()
    q /= q.sum()
    codes, batch = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= codes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    return (q * batch).T.float()


def view_masks(mask: torch.Tensor, drop: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A view of each item that leaves out a random ``drop`` share of its tokens (never the first, never all)."""
    keep = torch.rand(mask.shape, generator=generator) >= drop
    keep = keep.to(mask.device) & mask.bool()
    keep[:, 0] = mask[:, 0].bool()
    return keep.long()


class Objectives(nn.Module):
    """The training losses, around the model and the reconstruction head (a module, so DDP can wrap it)."""

    def __init__(self, model: LMIndexerModel, vocab_size: int, config: LMIndexerConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        hidden = model.encoder.hidden_size
        self.reconstruction = nn.Linear(hidden, vocab_size)
        with torch.no_grad():
            embeddings = model.encoder.word_embeddings.weight
            rows = min(vocab_size, embeddings.size(0))
            self.reconstruction.weight.zero_()
            self.reconstruction.weight[:rows] = F.normalize(embeddings[:rows].float(), dim=-1)
            self.reconstruction.bias.zero_()

    def forward(self, batch: dict[str, Any], phase: str, level: int, split: int) -> dict[str, torch.Tensor]:
        config = self.config
        states = batch["states"]
        views = [batch["view_a"], batch["view_b"]]
        if phase == "encoder":
            tops = [self.model.encoder.upper(states, v, split, batch["input_ids"]) for v in views]
            zs = [mean_pool(top, v) for top, v in zip(tops, views, strict=True)]
            centres = torch.zeros_like(zs[0])
        else:
            prefix = batch["prefix"]
            zs = [self.model.writers[level](states, v, prefix) for v in views]
            centres = batch["centres"]
        spaces = [z - centres for z in zs]
        codebook = F.normalize(self.model.codebooks[level], dim=-1)
        out: dict[str, torch.Tensor] = {}
        first, second = F.normalize(spaces[0], dim=-1), F.normalize(spaces[1], dim=-1)
        logits = first @ second.T / config.contrastive_temperature
        out["contrastive"] = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
        scores = [F.normalize(s, dim=-1) @ codebook.T for s in spaces]
        targets = [sinkhorn(s.detach(), config.sinkhorn_epsilon) for s in scores]
        predicted = [F.log_softmax(s / config.cluster_temperature, dim=-1) for s in scores]
        out["cluster"] = -0.5 * (
            (targets[1] * predicted[0]).sum(-1).mean() + (targets[0] * predicted[1]).sum(-1).mean()
        )
        # The item's content words, from its (soft) code vector placed at its node.
        code_vectors = torch.softmax(scores[0] / config.cluster_temperature, dim=-1) @ self.model.codebooks[level]
        rebuilt = self.reconstruction(F.normalize(centres + code_vectors, dim=-1))
        out["reconstruction"] = -(batch["words"] * F.log_softmax(rebuilt.float(), dim=-1)).sum(-1).mean()
        out["loss"] = (
            config.contrastive_weight * out["contrastive"]
            + config.cluster_weight * out["cluster"]
            + config.reconstruction_weight * out["reconstruction"]
        )
        return out


# -- the label-free criterion -------------------------------------------------------------------------------------


def heldout_cross_entropy(codes: torch.Tensor, items: CatalogueTokens) -> float:
    """Cross-entropy (nats per content word) of the held-out items' words under the word distribution of their code
    prefix, fitted on the other items and smoothed towards the catalogue's. Lower: the codes say more about the text.
    Labels play no part."""
    from scipy import sparse

    keys: dict[tuple[int, ...], int] = {}
    rows = np.asarray([keys.setdefault(tuple(row), len(keys)) for row in codes.tolist()])
    fit = ~items.heldout.numpy()
    data, row_index, col_index = [], [], []
    for n, words in enumerate(items.words):
        if fit[n] and len(words):
            data.append(np.ones(len(words)))
            row_index.append(np.full(len(words), rows[n]))
            col_index.append(words.numpy())
    if not data:
        return float("nan")
    counts = sparse.csr_matrix(
        (np.concatenate(data), (np.concatenate(row_index), np.concatenate(col_index))),
        shape=(len(keys), items.vocab_size),
    )
    overall = np.asarray(counts.sum(axis=0)).ravel() + 1.0
    overall /= overall.sum()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    loss, tokens = 0.0, 0
    for n in np.flatnonzero(~fit):
        words = items.words[n].numpy()
        if not len(words):
            continue
        row = rows[n]
        seen = np.asarray(counts[row, words].todense()).ravel()
        probability = (seen + CRITERION_PRIOR * overall[words]) / (totals[row] + CRITERION_PRIOR)
        loss -= float(np.log(probability).sum())
        tokens += len(words)
    return loss / max(tokens, 1)


# -- the trainer --------------------------------------------------------------------------------------------------


@torch.no_grad()
def reset_writer(writer: nn.Module) -> None:
    """Put a writer back where it starts: no query, no correction (uniform attention: the item's summary). Its key
    projection is left as it is: with a zero query it has no effect."""
    writer.query.zero_()
    for table in writer.prefix_queries:
        table.zero_()
    writer.correction.weight.zero_()
    writer.correction.bias.zero_()


@dataclass(frozen=True)
class Phase:
    name: str  # "encoder" or "position"
    level: int
    steps: int

    @property
    def title(self) -> str:
        return "encoder" if self.name == "encoder" else f"position {self.level + 1}"


def fingerprint_of(config: LMIndexerConfig, texts: Sequence[str], warm_version: str | None) -> str:
    return training_fingerprint(config.model_dump(mode="json"), [str(warm_version), *texts])


class Trainer:
    def __init__(
        self,
        model: LMIndexerModel,
        config: LMIndexerConfig,
        texts: Sequence[str],
        *,
        checkpoint_dir: Path | None,
        progress: bool,
        warm_version: str | None = None,
        previous_codes: torch.Tensor | None = None,
    ) -> None:
        from accelerate.utils import set_seed

        self.config = config
        # A warm retrain's items' codes under the previous snapshot (items x positions): each position numbers its
        # codes after them.
        self.previous_codes = previous_codes
        self.accelerator = create_accelerator(config.mixed_precision, config.device)
        self.is_main = self.accelerator.is_main_process
        self.progress = progress and self.is_main
        self.device = self.accelerator.device
        set_seed(config.seed)
        self.model = model.to(self.device)
        self.items = CatalogueTokens(model.encoder.tokenizer, texts, config.max_length, config.heldout_share)
        self.split = model.encoder.split_at(config.train_layers if config.trains_encoder else 0)
        self.objectives = Objectives(model, self.items.vocab_size, config).to(self.device)
        for parameter in self.objectives.parameters():
            parameter.requires_grad_(False)
        self.codes = torch.full((len(texts), config.levels), -1, dtype=torch.long)
        self.phases = self._plan()
        self.fingerprint = fingerprint_of(config, texts, warm_version)
        self.checkpoint_dir = checkpoint_dir
        self.history: list[dict[str, Any]] = []
        self.lower: StateCache | None = None
        self.top: StateCache | None = None
        self._pristine: dict[str, torch.Tensor] = {}
        self._baseline_summaries = torch.empty(0)
        self.total_steps = sum(p.steps for p in self.phases)
        self.optimizer = self._optimizer()
        # The objectives are not wrapped in DistributedDataParallel: which parameters train changes from phase to
        # phase (DDP fixes that set when it wraps), so gradients are averaged across processes by hand.
        self.optimizer = self.accelerator.prepare(self.optimizer)
        self.loop = TrainingLoop(self.accelerator, self.optimizer, self.objectives, self.total_steps,
                                 config.warmup_share, config.seed, checkpoint_every=config.checkpoint_every,
                                 progress=self.progress)  # fmt: skip

    # -- plan, optimiser, schedule -------------------------------------------------------------------------------

    def _steps(self, epochs: int) -> int:
        fit_items = int((~self.items.heldout).sum())
        return epochs * max(1, fit_items // min(self.config.batch_size, max(fit_items, 1)))

    def _plan(self) -> list[Phase]:
        phases = []
        if self.config.trains_encoder:
            phases.append(Phase("encoder", 0, self._steps(self.config.encoder_epochs)))
        phases += [
            Phase("position", level, self._steps(self.config.writer_epochs)) for level in range(self.config.levels)
        ]
        return phases

    def _optimizer(self) -> torch.optim.Optimizer:
        model, config = self.model, self.config
        encoder = model.encoder.trainable_parameters(config.train_layers) if config.trains_encoder else []
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.objectives.parameters() if id(p) not in encoder_ids]
        groups = [{"params": rest, "lr": config.learning_rate, "peak": config.learning_rate}]
        if encoder:
            groups.append({"params": encoder, "lr": config.encoder_learning_rate, "peak": config.encoder_learning_rate})
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    def _train_only(self, parameters: Sequence[nn.Parameter]) -> None:
        for parameter in self.objectives.parameters():
            parameter.requires_grad_(False)
        for parameter in [*parameters, *self.objectives.reconstruction.parameters()]:
            parameter.requires_grad_(True)

    # -- whole-catalogue passes ----------------------------------------------------------------------------------

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        from accelerate.utils import broadcast

        if self.accelerator.num_processes == 1:
            return tensor
        return broadcast(tensor.to(self.device), from_process=0).cpu()

    @torch.inference_mode()
    def _cache(self, depth: str) -> StateCache:
        """Token states of every item: after the frozen lower layers (``lower``) or at the top (``top``)."""
        self.model.eval()
        states: list[torch.Tensor] = [torch.empty(0)] * len(self.items)
        batches = list(self.items.by_length(self.config.inference_batch_size))
        for index in tqdm(batches, desc=f"encoding ({depth})", unit="batch", disable=not self.progress, leave=False):
            input_ids, mask = self.items.padded(index)
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            if depth == "lower":
                out = self.model.encoder.lower(input_ids, mask, self.split)
            elif self.lower is not None:
                out = self.model.encoder.upper(self.lower.padded(index, self.device), mask, self.split, input_ids)
            else:
                out = self.model.encoder.full(input_ids, mask)
            out = out.to(torch.float16).cpu()
            for n, i in enumerate(index):
                states[i] = out[n, : len(self.items.ids[i])].clone()
        return StateCache(states)

    @torch.no_grad()
    def _summaries(self) -> torch.Tensor:
        """Every item's summary (mean-pooled top states, unit length), float32 on the CPU."""
        assert self.top is not None
        out = torch.empty((len(self.items), self.model.encoder.hidden_size))
        for index in self.items.by_length(self.config.inference_batch_size):
            _, mask = self.items.padded(index)
            out[index] = mean_pool(self.top.padded(index, torch.device("cpu")), mask).float()
        return out

    @torch.no_grad()
    def _states(self, level: int, *, untrained: bool = False) -> torch.Tensor:
        """Position ``level``'s writer states ``z`` of every item, given their codes so far (``untrained``: of the
        writer as it starts, which returns the item's summary)."""
        assert self.top is not None
        self.model.eval()
        writer = self.model.writers[level]
        if untrained:
            writer = copy.deepcopy(writer)
            reset_writer(writer)
        out = torch.empty((len(self.items), self.model.encoder.hidden_size))
        for index in self.items.by_length(self.config.inference_batch_size):
            _, mask = self.items.padded(index)
            states = self.top.padded(index, self.device)
            prefix = self.codes[index, :level].to(self.device)
            out[index] = writer(states, mask.to(self.device), prefix).float().cpu()
        return out

    def _fit_position(self, level: int, states: torch.Tensor) -> tuple[NodeCentres, torch.Tensor, torch.Tensor]:
        """Node centres of ``states``, k-means codebook on the centred states, and every item's code."""
        centres = NodeCentres.fit(states, self.codes, level)
        space = states - centres.lookup(self.codes)
        codebook = torch.as_tensor(
            fit_kmeans(
                space.numpy(),
                self.config.codebook_size[level],
                seed=self.config.seed + level,
                iterations=self.config.kmeans_iterations,
            )
        )
        codebook = self._broadcast(codebook)
        codes = self._broadcast(nearest(space.double(), codebook.double()))
        return centres, codebook, codes

    @torch.no_grad()
    def _number_as_before(self, level: int) -> dict[str, Any]:
        """Renumber position ``level``'s codes so that each takes the number of the previous snapshot's code its items
        overlap most (one-to-one, the most items kept in all: a linear assignment on the overlap counts). Overlaps are
        counted over the items whose earlier codes are all the previous snapshot's (at position 1, every item): for
        any other item no numbering here keeps its codes. Only the numbers change: the codebook's rows are permuted
        with the codes before any later position reads them (node centres are keyed by earlier codes only), so the
        groups, and everything trained after, are what they would have been under the new numbering."""
        from scipy.optimize import linear_sum_assignment

        assert self.previous_codes is not None
        size = self.config.codebook_size[level]
        codes, previous = self.codes[:, level].numpy(), self.previous_codes[:, level].numpy()
        same_prefix = (self.codes[:, :level] == self.previous_codes[:, :level]).all(dim=1).numpy()
        overlap = np.zeros((size, size), dtype=np.int64)
        np.add.at(overlap, (codes[same_prefix], previous[same_prefix]), 1)
        new_codes, old_codes = linear_sum_assignment(overlap, maximize=True)
        number = np.empty(size, dtype=np.int64)
        number[new_codes] = old_codes
        codebook = self.model.codebooks[level]
        renumbered = torch.empty_like(codebook)
        renumbered[torch.as_tensor(number, device=codebook.device)] = codebook
        codebook.copy_(renumbered)
        before = float((same_prefix & (codes == previous)).mean())
        self.codes[:, level] = torch.as_tensor(number[codes])
        after = float((same_prefix & (self.codes[:, level].numpy() == previous)).mean())
        # The share of items whose codes up to this position are all the previous snapshot's.
        return {"prefix_agreement": {"as_fitted": round(before, 4), "renumbered": round(after, 4)}}

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _checkpoint(self, phase_index: int, step: int) -> None:
        if self.checkpoint_dir is None:
            return
        self.accelerator.wait_for_everyone()
        if self.is_main:
            state = {f"objectives.{k}": v for k, v in self.objectives.state_dict().items()}
            done = [c for c in self.model.centres if c is not None]
            for centres in done:
                state[f"centres.{centres.level}.keys"] = centres.keys
                state[f"centres.{centres.level}.values"] = centres.values
            progress = {"fingerprint": self.fingerprint, "phase": phase_index, "step": step, "history": self.history}
            inner = getattr(self.optimizer, "optimizer", self.optimizer)
            save_checkpoint(self.checkpoint_dir, progress=progress, model=state, optimizer=inner,
                            arrays={"codes": self.codes})  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _resume(self) -> tuple[int, int, Any]:
        checkpoint = find_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            return 0, 0, None
        if checkpoint.progress.get("fingerprint") != self.fingerprint:
            log.warning("ignoring the checkpoint in %s: other options or another catalogue", checkpoint.directory)
            return 0, 0, None
        weights = {k.removeprefix("objectives."): v for k, v in checkpoint.model.items() if k.startswith("objectives.")}
        missing, unexpected = self.objectives.load_state_dict(weights, strict=False)
        if missing or unexpected or "codes" not in checkpoint.arrays:
            log.warning("ignoring the checkpoint in %s: it does not fit this model", checkpoint.directory)
            return 0, 0, None
        for level in range(self.config.levels):
            key = f"centres.{level}.keys"
            if key in checkpoint.model:
                self.model.centres[level] = NodeCentres(
                    level, checkpoint.model[key], checkpoint.model[f"centres.{level}.values"]
                )
        self.codes = checkpoint.arrays["codes"].clone()
        self.history = list(checkpoint.progress.get("history", []))
        checkpoint.restore_optimizer(getattr(self.optimizer, "optimizer", self.optimizer))
        phase, step = int(checkpoint.progress["phase"]), int(checkpoint.progress["step"])
        log.info("resumed from the checkpoint in %s at phase %d, step %d", checkpoint.directory, phase, step)
        return phase, step, checkpoint

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        if self.config.trains_encoder:
            # Before any training (or a resume) touches the encoder: the lower layers' cache, the untrained
            # weights (restored if training does not help) and the summaries the trained encoder must beat.
            self.lower = self._cache("lower")
            self.top = self._cache("top")
            self._pristine = {k: v.detach().clone() for k, v in self.model.encoder.state_dict().items()}
            self._baseline_summaries = self._summaries()
        first_phase, first_step, checkpoint = self._resume()
        resumed_at = {"phase": first_phase, "step": first_step} if checkpoint is not None else None
        if checkpoint is not None and self.config.trains_encoder:
            self.top = None  # the encoder's weights came from the checkpoint: its top states are computed again
        steps_before = 0
        for index, phase in enumerate(self.phases):
            if index < first_phase:
                steps_before += phase.steps
                continue
            if phase.name == "position" and self.top is None:
                self.top = self._cache("top")
            resume_step = first_step if (checkpoint is not None and index == first_phase) else 0
            if phase.name == "encoder":
                self._encoder_phase(index, phase, resume_step, steps_before)
            else:
                self._position_phase(index, phase, resume_step, steps_before)
            steps_before += phase.steps
        if self.top is None:
            self.top = self._cache("top")
        drift = self._drift()
        return {
            "phases": self.history,
            "earlier_codes_changed": drift,
            "train_seconds": round(time.perf_counter() - started, 2),
            "processes": self.accelerator.num_processes,
            "device": str(self.device),
            "mixed_precision": str(self.accelerator.mixed_precision),
            "resumed_from": resumed_at,
        }

    @torch.no_grad()
    def _drift(self) -> list[float]:
        """Share of items whose code at each position differs from the one assigned when that position was trained,
        decoding everything again with the final model (0 by construction: no earlier part trains later)."""
        assert self.top is not None
        self.model.eval()
        decoded = torch.empty_like(self.codes)
        for index in self.items.by_length(self.config.inference_batch_size):
            _, mask = self.items.padded(index)
            decoded[index] = self.model.greedy_codes(self.top.padded(index, self.device), mask.to(self.device)).cpu()
        return [round(float((decoded[:, level] != self.codes[:, level]).double().mean()), 6)
                for level in range(self.config.levels)]  # fmt: skip

    def _batches(self, phase_index: int, phase: Phase) -> list[list[int]]:
        """Every process's batches of the phase (training items only), the same list on a resumed run."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + phase_index)
        training = torch.nonzero(~self.items.heldout).flatten()
        size = min(self.config.batch_size, len(training))
        needed = phase.steps * self.accelerator.num_processes
        batches: list[list[int]] = []
        while len(batches) < needed:
            order = training[torch.randperm(len(training), generator=generator)]
            batches += [order[i : i + size].tolist() for i in range(0, len(order) - size + 1, size)]
        return process_share(batches[:needed], self.accelerator.process_index, self.accelerator.num_processes)

    def _train(self, index: int, phase: Phase, start_step: int, steps_before: int, make_batch: Any) -> dict[str, Any]:
        def loss(batch_index: list[int]) -> dict[str, torch.Tensor]:
            return self.objectives(make_batch(batch_index), phase.name, phase.level, self.split)

        losses = self.loop.run(
            self._batches(index, phase), loss, title=phase.title, start_step=start_step, steps_before=steps_before,
            seed_offset=PHASE_SEED_STRIDE * index + 1, checkpoint=lambda step, _: self._checkpoint(index, step),
        )  # fmt: skip
        return {"steps": phase.steps, "resumed_at_step": start_step or None, **summarise_losses(losses)}

    def _views(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return view_masks(mask, self.config.token_dropout), view_masks(mask, self.config.token_dropout)

    def _encoder_phase(self, index: int, phase: Phase, start_step: int, steps_before: int) -> None:
        started = time.perf_counter()
        model, config = self.model, self.config
        assert self.lower is not None
        if start_step == 0:
            codebook = fit_kmeans(self._baseline_summaries.numpy(), config.codebook_size[0], seed=config.seed,
                                  iterations=config.kmeans_iterations)  # fmt: skip
            with torch.no_grad():
                model.codebooks[0].copy_(self._broadcast(torch.as_tensor(codebook)).to(self.device))
        self._train_only([*model.encoder.trainable_parameters(config.train_layers), model.codebooks[0]])

        def make_batch(index_: list[int]) -> dict[str, Any]:
            input_ids, mask = self.items.padded(index_)
            view_a, view_b = self._views(mask)
            words = self.items.word_targets(index_).to(self.device)
            return {"states": self.lower.padded(index_, self.device), "mask": mask.to(self.device),
                    "view_a": view_a.to(self.device), "view_b": view_b.to(self.device),
                    "input_ids": input_ids.to(self.device), "words": words}  # fmt: skip

        record = {"phase": phase.title, **self._train(index, phase, start_step, steps_before, make_batch)}
        frozen_codes = self._position_one_codes(self._baseline_summaries)
        self.top = self._cache("top")
        tuned_codes = self._position_one_codes(self._summaries())
        criterion = {"frozen_encoder": heldout_cross_entropy(frozen_codes, self.items),
                     "trained_encoder": heldout_cross_entropy(tuned_codes, self.items)}  # fmt: skip
        kept = self._keeps(criterion["trained_encoder"], criterion["frozen_encoder"])
        if not kept:
            model.encoder.load_state_dict(self._pristine)
            self.top = self._cache("top")
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
        record.update(heldout_cross_entropy=criterion, kept=kept, seconds=round(time.perf_counter() - started, 2))
        self.history.append(record)
        log.info("encoder done: %s", record)
        self._checkpoint(index + 1, 0)

    def _keeps(self, trained: float, initial: float) -> bool:
        """Whether a phase's learned change is kept, given the criterion after and before it (lower is better)."""
        return self.config.keep_learned == "always" or trained < initial

    def _position_one_codes(self, summaries: torch.Tensor) -> torch.Tensor:
        """k-means codes at position 1 on ``summaries`` (the criterion compares the frozen and the trained encoder
        through them)."""
        codebook = fit_kmeans(summaries.numpy(), self.config.codebook_size[0], seed=self.config.seed,
                              iterations=self.config.kmeans_iterations)  # fmt: skip
        return self._broadcast(nearest(summaries.double(), torch.as_tensor(codebook).double())).unsqueeze(1)

    def _position_phase(self, index: int, phase: Phase, start_step: int, steps_before: int) -> None:
        started = time.perf_counter()
        model, level = self.model, phase.level
        writer = model.writers[level]
        # The phase starts from k-means on the untrained writer's states (the writer's summary); a resumed run
        # computes that start again (it is deterministic) and continues the training from the checkpoint.
        initial_fit = self._fit_position(level, self._states(level, untrained=True))
        if start_step == 0:
            reset_writer(writer)
            model.centres[level] = initial_fit[0]
            with torch.no_grad():
                model.codebooks[level].copy_(initial_fit[1].to(self.device))
            self.codes[:, level] = initial_fit[2]
        initial = (initial_fit[0], initial_fit[1], initial_fit[2])
        record: dict[str, Any] = {"phase": phase.title}
        if phase.steps:
            self._train_only([*writer.parameters(), model.codebooks[level]])
            centres_now = model.centres[level]

            def make_batch(index_: list[int]) -> dict[str, Any]:
                _, mask = self.items.padded(index_)
                view_a, view_b = self._views(mask)
                prefix = self.codes[index_, :level]
                return {"states": self.top.padded(index_, self.device), "mask": mask.to(self.device),
                        "view_a": view_a.to(self.device), "view_b": view_b.to(self.device),
                        "prefix": prefix.to(self.device), "centres": centres_now.lookup(prefix).to(self.device),
                        "words": self.items.word_targets(index_).to(self.device)}  # fmt: skip

            record.update(self._train(index, phase, start_step, steps_before, make_batch))
            centres, codebook, codes = self._fit_position(level, self._states(level))
            prefix_codes = torch.cat([self.codes[:, :level], codes.unsqueeze(1)], dim=1)
            initial_codes = torch.cat([self.codes[:, :level], initial[2].unsqueeze(1)], dim=1)
            criterion = {"initial": heldout_cross_entropy(initial_codes, self.items),
                         "trained": heldout_cross_entropy(prefix_codes, self.items)}  # fmt: skip
            kept = self._keeps(criterion["trained"], criterion["initial"])
            if kept:
                model.centres[level] = centres
                with torch.no_grad():
                    model.codebooks[level].copy_(codebook.to(self.device))
                self.codes[:, level] = codes
            else:
                reset_writer(writer)
                model.centres[level] = initial[0]
                with torch.no_grad():
                    model.codebooks[level].copy_(initial[1].to(self.device))
                self.codes[:, level] = initial[2]
            record.update(heldout_cross_entropy=criterion, kept=kept)
        if self.previous_codes is not None:
            record.update(self._number_as_before(level))
        for parameter in writer.parameters():
            parameter.requires_grad_(False)
        model.codebooks[level].requires_grad_(False)
        counts = torch.bincount(self.codes[:, level], minlength=self.config.codebook_size[level]).double()
        share = counts / counts.sum()
        entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
        record.update(
            codes_used=int((counts > 0).sum()),
            utilisation=round(float((counts > 0).double().mean()), 4),
            perplexity=round(math.exp(entropy), 2),
            seconds=round(time.perf_counter() - started, 2),
        )
        self.history.append(record)
        log.info("%s done: %s", phase.title, record)
        self._checkpoint(index + 1, 0)
