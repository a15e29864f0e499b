"""Generative retrieval and recommendation over semantic IDs: build, fine-tune, decode, save and load.

A :class:`GenerativeModel` couples the network (:class:`~lmindexer.downstream.model.GenerativeIdModel`) with the ID
space it writes (:class:`~lmindexer.downstream.vocabulary.IdVocabulary`) and the trie of IDs that exist now. Every
ID kind starts from the same pretrained backbone with fresh ID token vectors, so a comparison of two ID kinds compares
the IDs, not the networks. With ``from_snapshot`` the model for LMIndexer IDs starts instead from the snapshot that
made them (the paper's recipe): its encoder weights, and its codebooks as the ID token vectors.

Saved as ``generative.json`` (options, ID space, backbone config, the item -> ID map the trie is built from, and the
SHA-256 of each of these and of every file), ``weights.safetensors`` and ``tokenizer/``: nothing is pickled, and a
model whose files or document differ from what was saved is refused on load.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from lmindexer.downstream.dense import DenseIndexConfig
from lmindexer.downstream.fusion import reciprocal_rank_fusion, score_fusion
from lmindexer.downstream.model import GenerativeIdModel, HistorySummary, PriorScores, Task
from lmindexer.downstream.prior import TEMPERATURE as PRIOR_TEMPERATURE
from lmindexer.downstream.prior import DensePrior
from lmindexer.downstream.pseudo_queries import pseudo_query_pairs
from lmindexer.downstream.ranking import rank_metrics
from lmindexer.downstream.training import TokenizedTexts, train_network
from lmindexer.downstream.trie import IdTrie
from lmindexer.downstream.vocabulary import IdVocabulary
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.idtable import IdTable
from lmindexer.indexers.base import Indexer
from lmindexer.indexers.lm.backbone import Seq2SeqBackbone, backbone_from_snapshot, load_backbone
from lmindexer.indexers.lm.encoder import EncoderStack
from lmindexer.indexers.lm.indexer import LMIndexer
from lmindexer.indexers.lm.model import tied_names
from lmindexer.integrity import INTEGRITY_KEY, replaced_atomically, seal, verify, write_safetensors
from lmindexer.methods import PACKAGED_ENCODER, MixedPrecision
from lmindexer.precision import PRECISION_DESCRIPTION, InferencePrecision, inference_autocast, resolve_precision

DOCUMENT = "generative.json"
WEIGHTS = "weights.safetensors"
# The items' embeddings behind the dense prior, saved with the weights (their item_ids in the document).
ITEM_VECTORS = "dense_prior.item_vectors"
FORMAT_VERSION = 1
NO_RECOMMENDATION_EXAMPLES = "no training examples: every sequence needs at least two items with IDs"
# How recommend_fused combines the beam's ranking with the item prior's (lmindexer.downstream.fusion).
RecommendationFusion = Literal["score", "rrf"]
RECOMMENDATION_FUSIONS: tuple[RecommendationFusion, ...] = ("score", "rrf")
# Options are hashed one by one, so that a mismatch names the option.
_EXPANDED = ("config",)


class GenerativeConfig(BaseModel):
    """Options of a generative retriever or recommender."""

    model_config = ConfigDict(extra="forbid")

    task: Task = Field("retrieval", description="retrieval (text -> ID) or recommendation (history -> next ID)")
    backbone: str = Field(PACKAGED_ENCODER, description="the pretrained model every ID kind starts from")
    from_snapshot: bool = Field(
        False,
        description="start from the LMIndexer snapshot that made the IDs (its encoder weights and codebooks as the "
        "ID token vectors); off, every ID kind starts from the same pretrained backbone",
    )
    decoder_layers: int = Field(2, ge=1, le=24, description="decoder depth when built from an encoder")
    max_length: int = Field(64, ge=8, le=4096, description="tokens of a query or item text the encoder reads")
    train_layers: int = Field(
        0,
        ge=-1,
        description="retrieval: top encoder layers that train, over the cached states of the layers below (0: frozen, "
        "its states cached; -1: all of it, embeddings included)",
    )
    indexing_pairs: bool = Field(True, description="also train on (item text -> ID), as generative retrieval does")
    pseudo_queries: int = Field(
        5,
        ge=0,
        le=64,
        description="retrieval: also train on up to this many sentences of each item's text as queries for it "
        "(document as query)",
    )
    dense_prior: bool = Field(
        True,
        description="retrieval: add to each next-token score the log-sum-exp of the query's cosines to the items "
        "under the prefix it makes (its embedding by the model's encoder), times a learned weight "
        "(lmindexer.downstream.prior)",
    )
    item_prior: bool = Field(
        True,
        description="recommendation: add to each next-token score the log-sum-exp of the cosines of the history's "
        "summary to a vector learned for each item under the prefix it makes (initialised from the item's text "
        "embedding where fit_recommendation is given the texts), times a learned weight "
        "(lmindexer.downstream.prior); a retriever's prior is dense_prior",
    )
    prior_max_length: int = Field(
        DenseIndexConfig.model_fields["max_length"].default,
        ge=8,
        le=4096,
        description="tokens of an item text the encoder reads to embed it for the dense prior (the dense index's)",
    )
    history_window: int = Field(20, ge=1, le=512, description="most recent items of a history the model reads")
    history_layers: int = Field(2, ge=1, le=12)
    history_summary: HistorySummary = Field(
        "mean",
        description="recommendation: what stands for a history where the decoder starts and as the item prior's query: "
        "the mean of the history encoder's states over the window, or those of its most recent item (last-item, as "
        "SASRec reads its last position)",
    )
    history_item_vectors: bool = Field(
        False,
        description="recommendation with item_prior: each item of a history also reads its item-prior vector (added "
        "to its ID tokens' vectors), so that one learned vector per item is both read in histories and scored, as "
        "SASRec ties its input and output item embeddings. Off: a history reads its items' ID tokens alone",
    )
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="dropout probability of every dropout in the decoder and the history encoder (attention, "
        "feed-forward, residual), e.g. 0.2 as Cornac's SASRec trains; None: the backbone's own and the history "
        "encoder's default",
    )
    history_input_dropout: bool = Field(
        False,
        description="recommendation: the history encoder also drops out its inputs (each item's token and item "
        "vectors with their positions) at its dropout, as SASRec drops out its input item embeddings; off: the inputs "
        "reach its layers whole (its pre-norm layers drop out only what each layer adds)",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="training loss: at each ID position this share of the target's probability is spread evenly over "
        "the tokens the model may emit there (those that continue an existing ID where the prior restricts them), as "
        "in cross-entropy with label smoothing; 0: plain cross-entropy",
    )
    examples_per_history: int | None = Field(
        None, ge=1, description="train on only the last N next-item steps of each history (None: every step)"
    )
    sequence_training: bool = Field(
        False,
        description="recommendation: read histories with a causal encoder (each item sees only the items before it, "
        "histories left-aligned) and learn every next-item step of a window of history_window + 1 items in one "
        "pass, as SASRec trains; batch_size then counts windows. Off: one (history -> next item) example at a time "
        "over a right-aligned window",
    )
    suffix_headroom: int = Field(16, ge=0, le=100000, description="spare suffix values for items indexed later")
    # 8: over three seeds on clothing-reviews, 16 epochs retrieved no better (Recall@10 -0.009 +- 0.034) at twice
    # the training time (docs/downstream.md, benchmarks/retrieval_steps.py).
    epochs: int = Field(8, ge=1, le=1000, description="passes over the training examples")
    batch_size: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    encoder_learning_rate: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    warmup_share: float = Field(0.05, ge=0, lt=1)
    beam_size: int = Field(20, ge=1, le=1000, description="beams kept per position; also the most results returned")
    inference_batch_size: int = Field(64, ge=1, le=65536)
    inference_precision: InferencePrecision = Field("auto", description=PRECISION_DESCRIPTION)
    checkpoint_every: int = Field(200, ge=1, description="training steps between checkpoints (with a checkpoint_dir)")
    mixed_precision: MixedPrecision | None = Field(
        None, description="training autocast; None follows accelerate launch's --mixed_precision"
    )
    seed: int = 0
    device: Literal["auto", "cpu"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _read_train_encoder(cls, values: Any) -> Any:
        # Models saved before train_layers existed record train_encoder (true: the whole encoder trained).
        if isinstance(values, dict) and "train_encoder" in values:
            values = dict(values)
            whole = values.pop("train_encoder")
            if not isinstance(whole, bool):
                raise ValueError("train_encoder must be true or false (it is now train_layers: -1 or 0)")
            values.setdefault("train_layers", -1 if whole else 0)
        return values

    @model_validator(mode="after")
    def _item_vectors_need_the_item_prior(self) -> GenerativeConfig:
        if self.history_item_vectors and (self.task != "recommendation" or not self.item_prior):
            raise ValueError(
                "history_item_vectors reads the item prior's vectors: it needs task recommendation and item_prior"
            )
        if self.history_input_dropout and self.task != "recommendation":
            raise ValueError("history_input_dropout drops out a history's inputs: it needs task recommendation")
        return self


# Validated recipes for a recommender: options over GenerativeConfig's defaults, one set per preset (never one per data
# set). Each is exactly the options of a run measured over three seeds (the test in
# tests/downstream/test_recommender_jobs.py holds it to the stored result files; docs/downstream.md has the figures).
RECOMMENDER_PRESETS: dict[str, dict[str, Any]] = {
    # The best recommender measured: SASRec's way of training over ID tokens (every next-item step of a window
    # learnt in one causal pass, 10 epochs, the most recent item's states as the history's query, one
    # vector per item both read in histories and scored), over the defaults' window of 20 items (ahead of a window
    # of 10 with the history left out on three seeds) and every next-item step, with the history encoder's inputs
    # dropped out too, as SASRec's embedding dropout (ahead without it in the three seeds' means of NDCG@10 and
    # Recall@10 under both protocols: it memorises the training steps far less), at dropout 0.3 (chosen over SASRec's
    # 0.2 at the validation step, then ahead in the test step's three-seed means). The defaults stay cheaper (one
    # history -> next item example at a time) because this recipe trains every step 10 times.
    "sequence": {
        "task": "recommendation",
        "sequence_training": True,
        "batch_size": 128,
        "epochs": 10,
        "history_summary": "last-item",
        "history_item_vectors": True,
        "dropout": 0.3,
        "history_input_dropout": True,
    },
}


def recommender_preset(name: str) -> dict[str, Any]:
    """The options of the recommender preset ``name`` (a copy); an unknown name is an error naming the known ones."""
    if name not in RECOMMENDER_PRESETS:
        raise ConfigError(f"unknown recommender preset {name!r}; presets: {', '.join(sorted(RECOMMENDER_PRESETS))}")
    return dict(RECOMMENDER_PRESETS[name])


def parse_generative_config(values: Mapping[str, Any] | GenerativeConfig | None) -> GenerativeConfig:
    if isinstance(values, GenerativeConfig):
        return values
    try:
        return GenerativeConfig(**dict(values or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid generative model options: {problems}") from None


def _uses_prior(config: GenerativeConfig) -> bool:
    """Whether the model scores next tokens with a prior over its items: the dense prior of a retriever, the item
    prior of a recommender."""
    return config.dense_prior if config.task == "retrieval" else config.item_prior


def _device(config: GenerativeConfig) -> torch.device:
    return torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu")


class _HistoryBatch(NamedTuple):
    """Histories as the network reads them: each window's items' ID tokens (B, W, depth), which slots hold an item
    (B, W) and, with history_item_vectors, each slot's row in the item prior's table (B, W; 0 on padding)."""

    tokens: torch.Tensor
    item_mask: torch.Tensor
    item_rows: torch.Tensor | None

    def select(self, index: list[int]) -> _HistoryBatch:
        return _HistoryBatch(
            self.tokens[index], self.item_mask[index], None if self.item_rows is None else self.item_rows[index]
        )


class _Examples(NamedTuple):
    """What a recommender trains on: how many examples (or windows) there are, the loss of a batch of them (indices),
    one description per example for the checkpoint's fingerprint, and what the training summary reports of them."""

    count: int
    batch_loss: Callable[[list[int]], torch.Tensor]
    described: Iterable[str]
    summary: dict[str, int]


class GenerativeModel:
    """A trained (or trainable) generative retriever/recommender with the trie of the IDs it may return."""

    def __init__(
        self, config: GenerativeConfig, vocabulary: IdVocabulary, network: GenerativeIdModel, sids: Mapping[str, str]
    ) -> None:
        self.config = config
        self.vocabulary = vocabulary
        self.network = network
        self.trie: IdTrie = vocabulary.trie(sids)
        # The items' vectors behind the prior: text embeddings (a retriever's dense prior) or learned vectors (a
        # recommender's item prior).
        self.prior: DensePrior | None = DensePrior(vocabulary.sizes) if network.prior_weight is not None else None
        self.device = _device(config)
        # Decoding only reads the IDs that exist; its precision changes rankings, never a stored ID, so 'auto' is
        # resolved for the machine serving the model.
        self.precision = resolve_precision(config.inference_precision, self.device)
        self.network.to(self.device)
        self.initialised_from: str = "backbone"
        self.training: dict[str, Any] = {}
        # False in every process but the first of a multi-process training: only the first saves and reports.
        self.is_main_process = True

    # -- construction ----------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        ids: IdTable,
        snapshot: Indexer | None = None,
        config: Mapping[str, Any] | GenerativeConfig | None = None,
    ) -> GenerativeModel:
        """A model for the IDs of ``ids``; an LMIndexer ``snapshot`` (the one that made them) initialises it."""
        options = parse_generative_config(config)
        vocabulary = IdVocabulary.for_table(ids, suffix_headroom=options.suffix_headroom)
        torch.manual_seed(options.seed)
        if snapshot is not None and snapshot.version != ids.space.snapshot_version:
            raise ConfigError(
                f"the IDs come from snapshot {ids.space.snapshot_version}, not from the given {snapshot.version}"
            )
        if options.from_snapshot and not isinstance(snapshot, LMIndexer):
            made_by = "no snapshot was given" if snapshot is None else f"the IDs come from {snapshot.method}"
            raise ConfigError(f"from_snapshot needs the LMIndexer snapshot that made the IDs; {made_by}")
        backbone = load_backbone(options.backbone, decoder_layers=options.decoder_layers, seed=options.seed)
        network = _network(backbone, vocabulary.sizes, options)
        model = cls(options, vocabulary, network, ids.sid_map())
        if options.from_snapshot:
            _copy_indexer(network, snapshot)  # type: ignore[arg-type]
            model.initialised_from = f"{snapshot.method} snapshot {snapshot.version}"  # type: ignore[union-attr]
        return model

    # -- the live ID set -------------------------------------------------------------------------------------------

    def insert(self, item_id: str, sid: str) -> None:
        """Make a newly indexed item retrievable (no retraining; its suffix must fit the model's vocabulary)."""
        self.trie.insert(item_id, self.vocabulary.tokens_of_sid(sid))
        self._trie_changed()

    def remove(self, item_id: str) -> bool:
        """Stop returning an item; False if it was not there."""
        removed = self.trie.remove(item_id)
        self._trie_changed()
        return removed

    def sync(self, ids: IdTable) -> dict[str, int]:
        """Bring the trie in line with an ID table of the same ID space: inserts new items, drops missing ones."""
        if ids.space.snapshot_version != self.vocabulary.snapshot_version:
            raise ConfigError(
                f"this model writes IDs of snapshot {self.vocabulary.snapshot_version}; the table holds "
                f"{ids.space.snapshot_version}: retrain the model for the new ID space"
            )
        wanted = ids.sid_map()
        removed = [item_id for item_id, _ in list(self.trie) if item_id not in wanted]
        for item_id in removed:
            self.trie.remove(item_id)
        inserted = 0
        for item_id, sid in wanted.items():
            tokens = self.vocabulary.tokens_of_sid(sid)
            if self.trie.tokens_of(item_id) != tokens:
                self.trie.insert(item_id, tokens)
                inserted += 1
        self._trie_changed()
        return {"inserted": inserted, "removed": len(removed), "items": len(self.trie)}

    def _trie_changed(self) -> None:
        if self.prior is not None:
            self.prior.invalidate()

    def sid_of(self, item_id: str) -> str | None:
        tokens = self.trie.tokens_of(item_id)
        return None if tokens is None else self.vocabulary.sid(tokens)

    # -- training --------------------------------------------------------------------------------------------------

    def _targets(self, item_ids: Sequence[str]) -> torch.Tensor:
        rows = []
        for item_id in item_ids:
            tokens = self.trie.tokens_of(item_id)
            if tokens is None:
                raise ConfigError(f"item {item_id!r} has no semantic ID in this model's ID table")
            rows.append(tokens)
        return torch.tensor(rows, dtype=torch.long)

    def _encoder_stack(self) -> EncoderStack:
        """The backbone's encoder as a stack of layers that can run in two parts (a view: it shares the weights)."""
        return EncoderStack(self.network.backbone.encoder_module, self.network.backbone.tokenizer)

    def _freeze_encoder(self, stack: EncoderStack) -> int:
        """Only the encoder layers that train keep gradients; returns the first of them (the layer count when the
        encoder is frozen: recommendation never trains it)."""
        layers = self.config.train_layers if self.config.task == "retrieval" else 0
        split = stack.split_at(layers)
        trained = {id(parameter) for parameter in stack.trainable_parameters(layers)}
        for parameter in self.network.backbone.encoder_parameters():
            parameter.requires_grad_(id(parameter) in trained)
        return split

    def retrieval_examples(
        self, pairs: Sequence[tuple[str, str]], item_texts: Mapping[str, str] | None = None
    ) -> list[tuple[str, str]]:
        """What :meth:`fit_retrieval` trains on: the query pairs, then each item's text (``indexing_pairs``), then
        up to ``pseudo_queries`` sentences of each item's text (items this model can return, in the given order)."""
        examples = list(pairs)
        wants_texts = self.config.indexing_pairs or self.config.pseudo_queries > 0
        if wants_texts and not item_texts:
            raise ConfigError("indexing_pairs or pseudo_queries is on, so the items' texts are needed")
        returnable = {item_id: text for item_id, text in (item_texts or {}).items() if item_id in self.trie}
        if self.config.indexing_pairs:
            examples += [(text, item_id) for item_id, text in returnable.items()]
        examples += pseudo_query_pairs(returnable, self.config.pseudo_queries, self.config.seed)
        return examples

    def fit_retrieval(
        self,
        pairs: Sequence[tuple[str, str]],
        item_texts: Mapping[str, str] | None = None,
        *,
        checkpoint_dir: Path | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Fine-tune on (query text, item_id) pairs, plus (item text, item_id) indexing pairs and pseudo-queries
        when configured (:meth:`retrieval_examples`). The encoder layers below ``train_layers`` run once per text
        and their states are cached. With ``checkpoint_dir`` the training is resumable (see
        :mod:`lmindexer.downstream.training`)."""
        if self.config.task != "retrieval":
            raise ConfigError("this model is a recommender; train it with fit_recommendation")
        examples = self.retrieval_examples(pairs, item_texts)
        if not examples:
            raise ConfigError("no training pairs")
        embedded = 0
        if self.prior is not None and not item_texts:
            raise ConfigError("dense_prior is on, so the items' texts are needed (they are embedded for the prior)")
        if self.prior is not None:
            # Items embedded before (embed_items, with the encoder as it is now) are not embedded again.
            missing = {i: text for i, text in (item_texts or {}).items() if i in self.trie and i not in self.prior}
            embedded = self.embed_items(missing, progress=progress) if missing else 0
        texts = [text for text, _ in examples]
        targets = self._targets([item_id for _, item_id in examples])
        bank = TokenizedTexts(self.network.backbone.tokenizer, texts, self.config.max_length)
        stack = self._encoder_stack()
        split = self._freeze_encoder(stack)
        frozen, partly = split >= stack.num_layers, 0 < split < stack.num_layers
        accelerator = self._start_training()
        started = time.perf_counter()
        if frozen:
            bank.cache_memory(self.network.encode, self.config.inference_batch_size, self.device, progress)
        elif partly:
            lower = functools.partial(stack.lower, split=split)
            bank.cache_memory(lower, self.config.inference_batch_size, self.device, progress)
        encoded_s = time.perf_counter() - started
        dtype = next(self.network.parameters()).dtype

        def batch_loss(index: list[int]) -> torch.Tensor:
            batch = bank.batch(index, self.device)
            mask = batch["attention_mask"]
            if frozen:
                memory = batch["memory"].to(dtype)
            elif partly:
                memory = stack.upper(batch["memory"].to(dtype), mask, split, batch["input_ids"])
            else:
                memory = self.network.encode(batch["input_ids"], mask)
            return self.network.loss(memory, mask, targets[index].to(self.device), prior, self.config.label_smoothing)

        prior = self._prior()
        described = (
            f"{text}\x1f{item_id}\x1f{row}" for (text, item_id), row in zip(examples, targets.tolist(), strict=True)
        )
        stats = train_network(
            self.network, self.config, accelerator, len(examples), batch_loss, trains_encoder=not frozen,
            described_examples=described, checkpoint_dir=checkpoint_dir, progress=progress,
        )  # fmt: skip
        indexing = sum(item_id in self.trie for item_id in item_texts or {}) if self.config.indexing_pairs else 0
        stats.update({
            "pairs": len(pairs), "indexing_pairs": indexing,
            "pseudo_queries": len(examples) - len(pairs) - indexing, "encode_s": encoded_s,
            "embedded_items": embedded,
        })  # fmt: skip
        self.training = stats
        return stats

    @torch.no_grad()
    def embed_items(self, item_texts: Mapping[str, str], *, progress: bool = False) -> int:
        """Embed the texts of the items this model can return (the encoder's summary, as the decoder reads a query)
        for the dense prior; returns how many were embedded. :meth:`fit_retrieval` embeds the texts it trains
        on that have no embedding yet, with the encoder as it is before training."""
        if self.prior is None or self.config.task != "retrieval":
            # A recommender's item vectors are learned: text embeddings would replace them with another space.
            raise ConfigError("this model has no dense prior (dense_prior is off, or it recommends)")
        item_ids = [item_id for item_id in item_texts if item_id in self.trie]
        if not item_ids:
            raise ConfigError("the dense prior needs the texts of the items: none of the given items has an ID here")
        self.prior.set_vectors(item_ids, self._text_vectors([item_texts[i] for i in item_ids], progress))
        return len(item_ids)

    @torch.no_grad()
    def _text_vectors(self, texts: Sequence[str], progress: bool) -> torch.Tensor:
        """The encoder's summaries of ``texts`` (rows in order), as the decoder reads a query."""
        was_training = self.network.training
        self.network.eval()
        size, rows = self.config.inference_batch_size, []
        for start in tqdm(range(0, len(texts), size), desc="embedding items", disable=not progress, leave=False):
            batch = self.network.backbone.tokenize(list(texts[start : start + size]), self.config.prior_max_length)
            mask = batch["attention_mask"].to(self.device)
            memory = self.network.encode(batch["input_ids"].to(self.device), mask)
            rows.append(self.network.summary(memory, mask).float().cpu())
        self.network.train(was_training)
        return torch.cat(rows)

    def _prior(self) -> PriorScores | None:
        prior, trie = self.prior, self.trie
        if prior is None:
            return None
        return lambda position, summaries, prefixes: prior.scores(trie, position, summaries, prefixes)

    def _history_batch(self, histories: Sequence[Sequence[str]]) -> _HistoryBatch:
        """Windows of the most recent items, right-aligned (left-aligned for a causal encoder: sequence_training);
        unknown items are skipped, like a deleted item."""
        window = self.config.history_window
        tokens = torch.zeros((len(histories), window, self.vocabulary.depth), dtype=torch.long)
        mask = torch.zeros((len(histories), window), dtype=torch.long)
        rows = torch.zeros((len(histories), window), dtype=torch.long) if self.config.history_item_vectors else None
        for row, history in enumerate(histories):
            known = [(i, t) for i in history if (t := self.trie.tokens_of(i)) is not None][-window:]
            if not known:
                raise ConfigError(f"history {row} has no item with a semantic ID in this model")
            slots = slice(0, len(known)) if self.config.sequence_training else slice(window - len(known), window)
            tokens[row, slots] = torch.tensor([t for _, t in known], dtype=torch.long)
            mask[row, slots] = 1
            if rows is not None:
                assert self.prior is not None  # history_item_vectors needs item_prior (checked with the options)
                rows[row, slots] = torch.tensor(self.prior.item_rows(self.trie, [i for i, _ in known]))
        return _HistoryBatch(tokens, mask, rows)

    def _encode_histories(self, batch: _HistoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The history encoder's states (and their mask) for ``batch``, on the model's device."""
        vectors = None
        if batch.item_rows is not None:
            assert self.prior is not None
            vectors = self.prior.item_matrix(self.trie, self.device)[batch.item_rows.to(self.device)]
        return self.network.encode_history(batch.tokens.to(self.device), batch.item_mask.to(self.device), vectors)

    def _training_windows(self, sequences: Sequence[Sequence[str]]) -> list[tuple[list[str], int]]:
        """Sequence training's windows: (up to history_window + 1 consecutive items, how many of its last steps to
        learn). Each sequence is cut from its end into windows that overlap by one item, so that every step (the
        last examples_per_history of them when set) is learnt exactly once, with the items before it in its window
        as its history."""
        window = self.config.history_window
        windows = []
        for sequence in sequences:
            known = [item_id for item_id in sequence if item_id in self.trie]
            first = 1 if self.config.examples_per_history is None else len(known) - self.config.examples_per_history
            first, last = max(1, first), len(known) - 1
            while last >= first:
                start = max(0, last - window)
                windows.append((known[start : last + 1], last - max(first, start + 1) + 1))
                last = start
        return windows

    def fit_recommendation(
        self,
        sequences: Sequence[Sequence[str]],
        item_texts: Mapping[str, str] | None = None,
        *,
        checkpoint_dir: Path | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Train on every (prefix of a user's sequence -> the item that followed it) in ``sequences``; resumable
        with ``checkpoint_dir``. With ``item_prior`` the items' vectors train too, each starting from its text's
        embedding where ``item_texts`` has it (else from a random direction)."""
        if self.config.task != "recommendation":
            raise ConfigError("this model is a retriever; train it with fit_retrieval")
        # The item vectors first: with history_item_vectors the examples' histories index them.
        embedded = self._start_item_vectors(item_texts, progress) if self.prior is not None else 0
        examples = self._window_examples(sequences) if self.config.sequence_training else self._step_examples(sequences)
        self._freeze_encoder(self._encoder_stack())
        accelerator = self._start_training()
        learning = self.prior.learning(self.network, self.trie) if self.prior is not None else contextlib.nullcontext()
        with learning:
            stats = train_network(
                self.network, self.config, accelerator, examples.count, examples.batch_loss, trains_encoder=False,
                described_examples=examples.described, checkpoint_dir=checkpoint_dir, progress=progress,
            )  # fmt: skip
        stats.update({**examples.summary, "embedded_items": embedded})
        self.training = stats
        return stats

    def _step_examples(self, sequences: Sequence[Sequence[str]]) -> _Examples:
        """One example per (history window -> next item), each decoded on its own (:meth:`GenerativeIdModel.loss`)."""
        histories: list[Sequence[str]] = []
        nexts: list[str] = []
        for sequence in sequences:
            known = [item_id for item_id in sequence if item_id in self.trie]
            first = 1 if self.config.examples_per_history is None else len(known) - self.config.examples_per_history
            for t in range(max(1, first), len(known)):
                histories.append(known[max(0, t - self.config.history_window) : t])
                nexts.append(known[t])
        if not histories:
            raise ConfigError(NO_RECOMMENDATION_EXAMPLES)
        history = self._history_batch(histories)
        targets = self._targets(nexts)
        prior = self._prior()

        def batch_loss(index: list[int]) -> torch.Tensor:
            memory, mask = self._encode_histories(history.select(index))
            return self.network.loss(memory, mask, targets[index].to(self.device), prior, self.config.label_smoothing)

        described = ("\x1d".join(h) + f"\x1f{n}" for h, n in zip(histories, nexts, strict=True))
        return _Examples(len(histories), batch_loss, described, {"examples": len(histories)})

    def _window_examples(self, sequences: Sequence[Sequence[str]]) -> _Examples:
        """sequence_training's examples: windows, every step of a window learnt in one pass
        (:meth:`GenerativeIdModel.sequence_loss`)."""
        windows = self._training_windows(sequences)
        if not windows:
            raise ConfigError(NO_RECOMMENDATION_EXAMPLES)
        width, depth = self.config.history_window, self.vocabulary.depth
        history = self._history_batch([items[:-1] for items, _ in windows])
        targets = torch.zeros((len(windows), width, depth), dtype=torch.long)
        target_mask = torch.zeros((len(windows), width), dtype=torch.bool)
        for row, (items, learnt) in enumerate(windows):
            steps = len(items) - 1
            targets[row, :steps] = self._targets(items[1:])
            target_mask[row, steps - learnt : steps] = True
        prior = self._prior()

        def batch_loss(index: list[int]) -> torch.Tensor:
            memory, mask = self._encode_histories(history.select(index))
            return self.network.sequence_loss(
                memory,
                mask,
                targets[index].to(self.device),
                target_mask[index].to(self.device),
                prior,
                self.config.label_smoothing,
            )

        described = ("\x1d".join(items) + f"\x1f{learnt}" for items, learnt in windows)
        return _Examples(
            len(windows), batch_loss, described, {"examples": int(target_mask.sum()), "windows": len(windows)}
        )

    def _start_item_vectors(self, item_texts: Mapping[str, str] | None, progress: bool) -> int:
        """Give every item without a vector one to start learning from: its text's embedding where given, else a
        random direction (seeded); items that have one (an earlier training) keep it. Returns how many texts were
        embedded."""
        prior = self.prior
        assert prior is not None
        texts = {i: text for i, text in (item_texts or {}).items() if i in self.trie and i not in prior}
        if texts:
            prior.set_vectors(list(texts), self._text_vectors(list(texts.values()), progress))
        unset = [item_id for item_id, _ in sorted(self.trie) if item_id not in prior]
        if unset:
            generator = torch.Generator().manual_seed(self.config.seed)
            prior.set_vectors(unset, torch.randn(len(unset), self.network.backbone.hidden_size, generator=generator))
        return len(texts)

    def _start_training(self) -> Any:
        """The Accelerator this training runs on; the network moves to its device (one GPU per process)."""
        from accelerate.utils import set_seed

        from lmindexer.training.loop import create_accelerator

        accelerator = create_accelerator(self.config.mixed_precision, self.config.device)
        set_seed(self.config.seed)
        self.device = accelerator.device
        self.network.to(self.device)
        self.is_main_process = accelerator.is_main_process
        return accelerator

    # -- decoding --------------------------------------------------------------------------------------------------

    def use_precision(self, requested: str) -> str:
        """Decode in ``requested`` (auto, fp32 or bf16) from now on; returns the precision chosen."""
        self.precision = resolve_precision(requested, self.device)
        return self.precision

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.config.beam_size:
            raise ConfigError(f"k must be between 1 and the beam size {self.config.beam_size}, got {k}")

    @torch.no_grad()
    def search(self, queries: Sequence[str], k: int = 10, *, progress: bool = False) -> list[list[tuple[str, float]]]:
        """The top ``k`` items per query, (item_id, log-probability) best first; only IDs that exist now."""
        if self.config.task != "retrieval":
            raise ConfigError("this model is a recommender, not a retriever")
        self._check_k(k)
        self.network.eval()
        results: list[list[tuple[str, float]]] = []
        size = self.config.inference_batch_size
        for start in tqdm(range(0, len(queries), size), desc="searching", disable=not progress, leave=False):
            chunk = list(queries[start : start + size])
            batch = self.network.backbone.tokenize(chunk, self.config.max_length)
            mask = batch["attention_mask"].to(self.device)
            with inference_autocast(self.precision, self.device):
                memory = self.network.encode(batch["input_ids"].to(self.device), mask)
                found = self.network.beam_search(memory, mask, self.trie, self.config.beam_size, prior=self._prior())
            results.extend(ranked[:k] for ranked in found)
        return results

    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        *,
        progress: bool = False,
        exclude_seen: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """The top ``k`` next items per history (item_ids, most recent last).

        ``exclude_seen`` leaves out the items of each history (all of it, not only the window the model reads) inside
        the beam search: no beam is spent on them, so the result is the model's best ``k`` unseen items (fewer only
        when fewer unseen items exist)."""
        if self.config.task != "recommendation":
            raise ConfigError("this model is a retriever, not a recommender")
        self._check_k(k)
        self.network.eval()
        results: list[list[tuple[str, float]]] = []
        size = self.config.inference_batch_size
        for start in tqdm(range(0, len(histories), size), desc="recommending", disable=not progress, leave=False):
            chunk = histories[start : start + size]
            history = self._history_batch(chunk)
            with inference_autocast(self.precision, self.device):
                memory, mask = self._encode_histories(history)
                found = self.network.beam_search(
                    memory,
                    mask,
                    self.trie,
                    self.config.beam_size,
                    excluded=chunk if exclude_seen else None,
                    prior=self._prior(),
                )
            results.extend(ranked[:k] for ranked in found)
        return results

    def rank_by_item_prior(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        *,
        exclude_seen: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """The top ``k`` items per history by the item prior alone: ``TEMPERATURE`` x the cosine of the history's
        summary to each item's vector, over every item (no beam, no decoder). It is the two-tower part of the
        recommender, what :meth:`recommend`'s scores would rank by with the decoder's own scores silenced, and says
        how much of a ranking the spelled-out IDs add. ``exclude_seen`` as for :meth:`recommend`."""
        if self.config.task != "recommendation":
            raise ConfigError("this model is a retriever, not a recommender")
        if self.prior is None:
            raise ConfigError("this recommender has no item prior to rank by (it was trained with item_prior: false)")
        if k < 1:  # no beam bounds it: every item is scored
            raise ConfigError(f"k must be at least 1, got {k}")
        self.network.eval()
        item_ids = [item_id for item_id, _ in sorted(self.trie)]  # the rows of the prior's item matrix
        items = self.prior.item_matrix(self.trie, self.device).float()
        results: list[list[tuple[str, float]]] = []
        size = self.config.inference_batch_size
        for start in range(0, len(histories), size):
            chunk = histories[start : start + size]
            with torch.inference_mode(), inference_autocast(self.precision, self.device):
                memory, mask = self._encode_histories(self._history_batch(chunk))
                summaries = self.network.source_summary(memory, mask)
            scores = PRIOR_TEMPERATURE * (torch.nn.functional.normalize(summaries.float(), dim=-1) @ items.T)
            if exclude_seen:
                for row, history in enumerate(chunk):
                    seen = [item_id for item_id in set(history) if item_id in self.trie]
                    scores[row, self.prior.item_rows(self.trie, seen)] = float("-inf")
            top = scores.topk(min(k, len(item_ids)), dim=1)
            for values, rows in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append([(item_ids[j], v) for v, j in zip(values, rows, strict=True) if v != float("-inf")])
        return results

    def recommend_fused(
        self,
        histories: Sequence[Sequence[str]],
        k: int = 10,
        *,
        fusion: RecommendationFusion = "score",
        exclude_seen: bool = False,
        progress: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """The top ``k`` next items per history by the model's two rankings fused: the beam's ``beam_size`` items
        (:meth:`recommend`, scored by log-probability) and the item prior's top ``beam_size``
        (:meth:`rank_by_item_prior`, every item scored by one cosine), combined by ``fusion`` at the one
        configuration of :mod:`lmindexer.downstream.fusion`: ``"score"`` (``score_fusion``, equal weights) or
        ``"rrf"`` (``reciprocal_rank_fusion``). The beam's items crowd into the few prefixes it spells out; the prior
        ranks across all of them, so the fused list reaches items the beam left. Scores are the fusion's, not
        log-probabilities. ``exclude_seen`` applies to both rankings, as for :meth:`recommend`."""
        self._check_k(k)
        if fusion not in RECOMMENDATION_FUSIONS:
            raise ConfigError(f"fusion must be one of {list(RECOMMENDATION_FUSIONS)}, got {fusion!r}")
        depth = self.config.beam_size
        beams = self.recommend(histories, depth, exclude_seen=exclude_seen, progress=progress)
        priors = self.rank_by_item_prior(histories, depth, exclude_seen=exclude_seen)
        if fusion == "rrf":
            return [
                reciprocal_rank_fusion([[i for i, _ in beam], [i for i, _ in prior]], k=k)
                for beam, prior in zip(beams, priors, strict=True)
            ]
        return [score_fusion([beam, prior], k=k) for beam, prior in zip(beams, priors, strict=True)]

    def evaluate_retrieval(self, pairs: Sequence[tuple[str, str]], *, progress: bool = False) -> dict[str, float]:
        ranked = self.search([q for q, _ in pairs], k=min(10, self.config.beam_size), progress=progress)
        return rank_metrics([[i for i, _ in r] for r in ranked], [{item_id} for _, item_id in pairs])

    def evaluate_recommendation(
        self,
        histories: Sequence[Sequence[str]],
        targets: Sequence[str],
        *,
        progress: bool = False,
        exclude_seen: bool = False,
    ) -> dict[str, float]:
        """Ranking metrics of the top 10 against each history's target; ``exclude_seen`` as for :meth:`recommend`
        (off by default: the full-ranking protocol, comparable with the popularity baseline's default)."""
        ranked = self.recommend(
            histories, k=min(10, self.config.beam_size), progress=progress, exclude_seen=exclude_seen
        )
        return rank_metrics([[i for i, _ in r] for r in ranked], [{t} for t in targets])

    # -- persistence -----------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model atomically (a half-written directory never replaces a good one)."""
        target = Path(directory)
        with replaced_atomically(target) as staging:
            tied = tied_names(self.network)
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items() if k not in tied}
            # Only the items it can return: a removed item's embedding is not carried on (a sync embeds it again).
            embedded = [i for i in self.prior.item_ids() if i in self.trie] if self.prior is not None else []
            if embedded:
                tensors[ITEM_VECTORS] = self.prior.vectors(embedded).contiguous()  # type: ignore[union-attr]
            write_safetensors(tensors, staging / WEIGHTS)
            self.network.backbone.save_tokenizer(staging)
            document: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "config": self.config.model_dump(mode="json"),
                "vocabulary": json.loads(self.vocabulary.to_json()),
                "backbone_config": self.network.backbone.config_dict(),
                "initialised_from": self.initialised_from,
                "training": self.training,
                "ids": {item_id: self.vocabulary.sid(tokens) for item_id, tokens in sorted(self.trie)},
                "dense_prior_items": embedded,
            }
            # The digests are taken over the JSON form, which is what a load reads back.
            document = json.loads(json.dumps(document, default=_json_default))
            document[INTEGRITY_KEY] = seal(staging, document, document_file=DOCUMENT, expand=_EXPANDED)
            (staging / DOCUMENT).write_text(json.dumps(document, indent=1) + "\n")
        return target

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, device: Literal["auto", "cpu"] | None = None
    ) -> GenerativeModel:
        """Load a saved model from a local directory or an ``s3://`` prefix."""
        from lmindexer.storage.s3 import local_directory

        with local_directory(directory, prefix="lmindexer-generative-") as path:
            return cls._load_verified(path, device=device)

    @classmethod
    def _load_verified(cls, path: Path, *, device: Literal["auto", "cpu"] | None) -> GenerativeModel:
        try:
            document = json.loads((path / DOCUMENT).read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"not a generative model directory: {path} ({exc})") from exc
        if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
            found = document.get("format_version") if isinstance(document, dict) else None
            raise SnapshotError(f"{path}: unsupported generative model format {found!r}")
        if INTEGRITY_KEY not in document:
            # Nothing recorded what was saved, so an edited or corrupted model could not be told from a good one.
            raise SnapshotError(
                f"generative model {path} records no content digest (it was saved by an earlier release), so it "
                "cannot be verified; train it again (lmindexer retriever train, or retriever refresh --mode retrain)"
            )
        verify(path, document, what="generative model", document_file=DOCUMENT, expand=_EXPANDED)
        values = dict(document["config"])
        # Models saved before the dense prior or the item prior existed have none (their options do not name it).
        values.setdefault("dense_prior", False)
        if values.get("task") == "recommendation":
            values.setdefault("item_prior", False)
        if device is not None:
            values["device"] = device
        config = parse_generative_config(values)
        vocabulary = IdVocabulary.from_dict(document["vocabulary"])
        network = _network(backbone_from_snapshot(path, dict(document["backbone_config"])), vocabulary.sizes, config)
        try:
            tensors = load_file(str(path / WEIGHTS))
        except (OSError, SafetensorError) as exc:
            raise SnapshotError(f"cannot read {path / WEIGHTS}: {exc}") from exc
        item_vectors = tensors.pop(ITEM_VECTORS, None)
        missing, unexpected = network.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - tied_names(network):
            raise SnapshotError(
                f"{path}: the weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        model = cls(config, vocabulary, network.eval(), document["ids"])
        embedded = list(document.get("dense_prior_items", []))
        if model.prior is not None and embedded:
            if item_vectors is None or item_vectors.size(0) != len(embedded):
                raise SnapshotError(f"{path}: the item embeddings of the dense prior do not match the document")
            model.prior.set_vectors(embedded, item_vectors, normalised=True)
        model.initialised_from = document.get("initialised_from", "backbone")
        model.training = document.get("training", {})
        return model


def _network(backbone: Seq2SeqBackbone, sizes: Sequence[int], config: GenerativeConfig) -> GenerativeIdModel:
    """The network ``config`` describes over ``backbone`` (a new model and a loaded one are built alike)."""
    return GenerativeIdModel(
        backbone,
        sizes,
        task=config.task,
        history_window=config.history_window,
        history_layers=config.history_layers,
        causal_history=config.sequence_training,
        history_summary=config.history_summary,
        prior=_uses_prior(config),
        dropout=config.dropout,
        history_input_dropout=config.history_input_dropout,
    )


def _copy_indexer(network: GenerativeIdModel, indexer: LMIndexer) -> None:
    """Start from what the indexer learnt: its (possibly fine-tuned) encoder and its codebooks as ID token vectors.

    The indexer's encoder must have the backbone encoder's architecture (the packaged MiniLM for both by default).
    """
    source = indexer.model.encoder.model.state_dict()
    target = network.backbone.encoder_module
    missing, unexpected = target.load_state_dict(source, strict=False)
    if unexpected or [name for name in missing if not name.startswith("pooler.")]:
        raise ConfigError(
            f"the encoder of snapshot {indexer.version} ({indexer.config.backbone}) does not fit the generative "
            "model's backbone; set the generative model's backbone to the snapshot's encoder"
        )
    with torch.no_grad():
        for position, codebook in enumerate(indexer.model.codebooks):
            vectors = torch.nn.functional.normalize(codebook.detach().float(), dim=-1)
            network.token_vectors[position].copy_(vectors)
            network.output_vectors[position].copy_(vectors)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["GenerativeConfig", "GenerativeModel", "parse_generative_config"]
