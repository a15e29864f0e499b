"""``lmindexer``: semantic IDs written code by code by a language model trained self-supervised (LMIndexer).

The ID of an item is what the saved snapshot writes for its text, greedily, position by position: codes are never
taken from a training pass, so ``assign`` is a pure function of the text and reproduces every stored ID (with a
balanced last level, the ID table may give an item its next preferred last code when its own is taken).
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
from lmindexer.indexers.base import Indexer
from lmindexer.indexers.lm.encoder import encoder_from_snapshot, load_encoder
from lmindexer.indexers.lm.model import LMIndexerModel, tied_names
from lmindexer.indexers.lm.training import Trainer
from lmindexer.methods import IndexerConfig, LMIndexerConfig
from lmindexer.precision import BF16_RELATIVE_ERROR, inference_autocast


class LMIndexer(Indexer):
    """A language model that writes the ID code by code, trained self-supervised (LMIndexer)."""

    method = "lmindexer"
    config_class = LMIndexerConfig
    config: LMIndexerConfig

    def __init__(self, config: Mapping[str, Any] | IndexerConfig | None = None) -> None:
        super().__init__(config)
        self._model: LMIndexerModel | None = None
        self._previous: LMIndexer | None = None
        self.last_recheck: dict[str, int] | None = None  # what the last bf16 coding ran again in float32

    @property
    def model(self) -> LMIndexerModel:
        if self._model is None:
            raise SnapshotError("the lmindexer model is not built; fit it or load a snapshot")
        return self._model

    def _new_model(self) -> LMIndexerModel:
        encoder = load_encoder(self.config.backbone, seed=self.config.seed)
        return LMIndexerModel(encoder, self.codebook_sizes, seed=self.config.seed)

    # -- fitting -------------------------------------------------------------------------------------------------

    def warm_start(self, previous: Indexer) -> None:
        if not isinstance(previous, LMIndexer) or previous._model is None:
            raise ConfigError(f"a warm start needs a fitted lmindexer snapshot, not {previous.method}")
        if previous.config.architecture() != self.config.architecture():
            raise ConfigError(
                "a warm start keeps the previous encoder, so backbone, levels and codebook_size must match: "
                f"previous {previous.config.architecture()}, now {self.config.architecture()}"
            )
        self._previous = previous

    def fit_texts(self, texts: Sequence[str], *, progress: bool) -> dict[str, Any] | None:
        previous = self._previous
        if previous is not None:
            # A warm retrain starts from the previous snapshot's encoder (which already knows the catalogue) and
            # writes the positions again on the grown catalogue.
            model = LMIndexerModel(copy.deepcopy(previous.model.encoder), self.codebook_sizes, seed=self.config.seed)
        else:
            model = self._new_model()
        previous_codes = previous.codes_for_texts(texts) if previous is not None else None
        trainer = Trainer(
            model,
            self.config,
            texts,
            checkpoint_dir=self.checkpoint_dir,
            progress=progress,
            warm_version=previous.version if previous is not None else None,
            # What the previous snapshot writes for each item: a warm retrain numbers its codes after it.
            previous_codes=torch.as_tensor(previous_codes) if previous_codes is not None else None,
        )
        stats = trainer.run()
        self._model = trainer.model.cpu().eval()
        self.is_main_process = trainer.is_main
        result: dict[str, Any] = {"training": stats}
        if previous is not None and previous_codes is not None:
            # The codes training assigned are what the model writes (drift is 0 by construction and reported), so
            # the agreement needs no second pass of the encoder over the catalogue.
            new = trainer.codes.numpy()
            result["warm_start"] = {
                "previous_version": previous.version,
                # Items whose first code is what the previous snapshot gave them (a retrain defines a new ID
                # space, so this is a measure of continuity, not a promise; every position's codes are numbered
                # after the previous snapshot's where their groups overlap).
                "first_code_agreement": round(float((previous_codes[:, 0] == new[:, 0]).mean()), 4),
                # Items whose every learned code is the previous snapshot's (each position is numbered after it).
                "code_agreement": round(float((previous_codes == new).all(axis=1).mean()), 4),
            }
        self._previous = None
        return result

    # -- assignment ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _decode(self, texts: Sequence[str], *, progress: bool, preferences: bool) -> tuple[np.ndarray, np.ndarray]:
        model = self.model.eval()
        device = next(model.parameters()).device
        encoder = model.encoder
        self.last_recheck = {"items": 0, "recomputed_in_fp32": 0}
        # Batches of similar length keep padding small; codes go back to the caller's order.
        tokenized = encoder.tokenizer(list(texts), truncation=True, max_length=self.config.max_length)
        lengths = [len(ids) for ids in tokenized["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        codes = np.empty((len(texts), self.levels), dtype=np.int64)
        ranked = np.empty((len(texts), self.codebook_sizes[-1] if preferences else 1), dtype=np.int64)
        size = self.config.inference_batch_size
        starts = range(0, len(order), size)
        for start in tqdm(starts, desc="assigning", unit="batch", disable=not progress, leave=False):
            index = order[start : start + size]
            batch = encoder.tokenize([texts[i] for i in index], self.config.max_length)
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            # The encoder (nearly all of the cost) runs in the snapshot's precision; the code writers and the float64
            # distance comparisons that pick each code run in float32/float64 on its float32-converted states.
            with inference_autocast(self.config.inference_precision, device):
                states = model.token_states(input_ids, mask)
            states = states.float()
            written = model.greedy_codes(states, mask)
            if self.config.inference_precision != "fp32":
                states, written = self._recheck_in_fp32(input_ids, mask, states, written)
            codes[index] = written.cpu().numpy()
            if preferences:
                ranked[index] = model.last_level_preferences(states, mask, written).numpy()
            else:
                ranked[index] = written[:, -1:].cpu().numpy()
        return codes, ranked

    def _recheck_in_fp32(
        self, input_ids: torch.Tensor, mask: torch.Tensor, states: torch.Tensor, written: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The items whose codes bf16 could have changed (a writer state within
        :data:`~lmindexer.precision.BF16_RELATIVE_ERROR` of a code boundary) run again in float32: every code is
        then the float32 one wherever bf16 moved the states by less than that."""
        model = self.model
        doubtful = torch.as_tensor(model.relative_radii(states, mask, written) < BF16_RELATIVE_ERROR)
        self.last_recheck["items"] += len(written)
        if not bool(doubtful.any()):
            return states, written
        self.last_recheck["recomputed_in_fp32"] += int(doubtful.sum())
        exact = model.token_states(input_ids[doubtful], mask[doubtful]).float()
        states, written = states.clone(), written.clone()
        states[doubtful] = exact
        written[doubtful] = model.greedy_codes(exact, mask[doubtful])
        return states, written

    def encode_texts(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        return self._decode(texts, progress=progress, preferences=False)[0]

    def encode_texts_with_preferences(self, texts: Sequence[str], *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._decode(texts, progress=progress, preferences=True)

    # -- persistence ---------------------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        model = self.model
        tied = tied_names(model.encoder.model)
        tensors = {f"encoder.{k}": v for k, v in model.encoder.model.state_dict().items() if k not in tied}
        tensors |= {f"writers.{k}": v for k, v in model.writers.state_dict().items()}
        tensors |= {f"codebooks.{k}": v for k, v in model.codebooks.state_dict().items()}
        return tensors | model.centre_tensors()

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        model = self.model
        groups: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "writers": {}, "codebooks": {}}
        centres = {}
        for name, tensor in tensors.items():
            head, _, rest = name.partition(".")
            if head in groups:
                groups[head][rest] = tensor
            elif head == "centres":
                centres[name] = tensor
            else:
                raise SnapshotError(f"the snapshot's weights do not fit its lmindexer model (unexpected {name!r})")
        try:
            missing, unexpected = model.encoder.model.load_state_dict(groups["encoder"], strict=False)
            if unexpected or set(missing) - tied_names(model.encoder.model):
                raise KeyError(f"encoder weights missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
            model.writers.load_state_dict(groups["writers"], strict=True)
            model.codebooks.load_state_dict(groups["codebooks"], strict=True)
            model.load_centre_tensors(centres)
        except (RuntimeError, KeyError) as exc:
            raise SnapshotError(
                f"the snapshot's weights do not fit its lmindexer model: {str(exc).splitlines()[0]}"
            ) from exc
        model.eval()

    def snapshot_metadata(self) -> dict[str, Any]:
        return {"encoder_config": self.model.encoder.config_dict()}

    def write_assets(self, directory: Path) -> None:
        self.model.encoder.save_tokenizer(directory)

    def load_assets(self, directory: Path, metadata: Mapping[str, Any]) -> None:
        model_config = metadata.get("encoder_config")
        if not isinstance(model_config, Mapping):
            raise SnapshotError(f"snapshot {directory} does not record its encoder's configuration")
        encoder = encoder_from_snapshot(directory, dict(model_config))
        self._model = LMIndexerModel(encoder, self.codebook_sizes, seed=self.config.seed)
