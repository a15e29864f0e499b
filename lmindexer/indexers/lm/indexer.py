"""``lmindexer``: semantic IDs learned self-supervised by a generative seq2seq LM (the LMIndexer method).

The ID of an item is what the saved snapshot writes for its text, greedily, position by position: codes are never
taken from a training pass, so ``assign`` is a pure function of the text and reproduces every stored ID.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers.base import Indexer, IndexerConfig
from lmindexer.indexers.lm.backbone import backbone_from_snapshot, load_backbone
from lmindexer.indexers.lm.config import LMIndexerConfig
from lmindexer.indexers.lm.model import LMIndexerModel, LossSettings, tied_names
from lmindexer.indexers.lm.training import Trainer


def loss_settings(config: LMIndexerConfig) -> LossSettings:
    return LossSettings(
        code_temperature=config.code_temperature,
        contrastive_temperature=config.contrastive_temperature,
        reconstruction_weight=config.reconstruction_weight,
        contrastive_weight=config.contrastive_weight,
        commitment_weight=config.commitment_weight,
        diversity_weight=config.diversity_weight,
        anchor_weight=config.anchor_weight,
        mask_rate=tuple(config.mask_rate or ()),
        reconstruct_tokens=config.reconstruct_tokens,
    )


class LMIndexer(Indexer):
    """A generative seq2seq LM that writes the ID code by code, trained self-supervised (LMIndexer)."""

    method = "lmindexer"
    config_class = LMIndexerConfig
    config: LMIndexerConfig

    def __init__(self, config: Mapping[str, Any] | IndexerConfig | None = None) -> None:
        super().__init__(config)
        self._model: LMIndexerModel | None = None
        self._previous: LMIndexer | None = None

    @property
    def model(self) -> LMIndexerModel:
        if self._model is None:
            raise SnapshotError("the lmindexer model is not built; fit it or load a snapshot")
        return self._model

    def _new_model(self) -> LMIndexerModel:
        backbone = load_backbone(self.config.backbone, decoder_layers=self.config.decoder_layers, seed=self.config.seed)
        return self._wrap(backbone)

    def _wrap(self, backbone: Any) -> LMIndexerModel:
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            return LMIndexerModel(backbone, self.codebook_sizes, self.config.max_length, loss_settings(self.config))

    # -- fitting -------------------------------------------------------------------------------------------------

    def warm_start(self, previous: Indexer) -> None:
        if not isinstance(previous, LMIndexer) or previous._model is None:
            raise ConfigError(f"a warm start needs a fitted lmindexer snapshot, not {previous.method}")
        if previous.config.architecture() != self.config.architecture():
            raise ConfigError(
                "a warm start keeps the previous weights and codebooks, so backbone, decoder_layers, levels and "
                f"codebook_size must match: previous {previous.config.architecture()}, "
                f"now {self.config.architecture()}"
            )
        self._previous = previous

    def fit_texts(self, texts: Sequence[str], *, progress: bool) -> dict[str, Any] | None:
        previous = self._previous
        if previous is not None:
            model = copy.deepcopy(previous.model)
            model.losses = loss_settings(self.config)
        else:
            model = self._new_model()
        trainer = Trainer(
            model,
            self.config,
            texts,
            checkpoint_dir=self.checkpoint_dir,
            progress=progress,
            warm=previous is not None,
            warm_version=previous.version if previous is not None else None,
        )
        stats = trainer.run()
        self._model = trainer.model
        self.is_main_process = trainer.is_main
        result: dict[str, Any] = {"training": stats}
        if previous is not None:
            result["warm_start"] = {
                "previous_version": previous.version,
                # Items whose full code tuple is what the previous snapshot gave them.
                "code_stability": stats["warm_code_stability"],
            }
        self._previous = None
        return result

    # -- assignment ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        model = self.model.eval()
        device = next(model.parameters()).device
        tokenizer = model.backbone.tokenizer
        # Batches of similar length keep padding small; codes go back to the caller's order.
        lengths = [
            len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=self.config.max_length)["input_ids"]
        ]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out = np.empty((len(texts), self.levels), dtype=np.int64)
        size = self.config.inference_batch_size
        starts = range(0, len(order), size)
        for start in tqdm(starts, desc="assigning", unit="batch", disable=not progress, leave=False):
            index = order[start : start + size]
            batch = model.backbone.tokenize([texts[i] for i in index], self.config.max_length)
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            codes = model.greedy_codes(model.encode(input_ids, mask), mask)
            out[index] = codes.cpu().numpy()
        return out

    # -- persistence ---------------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tied = tied_names(self.model)
        return {name: t for name, t in self.model.state_dict().items() if name not in tied}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(dict(tensors), strict=False)
        if unexpected or set(missing) - tied_names(self.model):
            raise SnapshotError(
                f"the snapshot's weights do not fit its lmindexer model (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )

    def snapshot_metadata(self) -> dict[str, Any]:
        return {"backbone_config": self.model.backbone.config_dict()}

    def write_assets(self, directory: Path) -> None:
        self.model.backbone.save_tokenizer(directory)

    def load_assets(self, directory: Path, metadata: Mapping[str, Any]) -> None:
        model_config = metadata.get("backbone_config")
        if not isinstance(model_config, Mapping):
            raise SnapshotError(f"snapshot {directory} does not record its backbone configuration")
        self._model = self._wrap(backbone_from_snapshot(directory, dict(model_config)))
