"""Shared machinery of the two-stage baselines: frozen sentence embeddings, then a quantiser over them."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmindexer.embeddings import TextEncoder
from lmindexer.errors import SnapshotError
from lmindexer.indexers.base import Indexer
from lmindexer.methods import EmbeddingIndexerConfig, IndexerConfig


class EmbeddingIndexer(Indexer):
    """An indexer whose codes are a function of a frozen encoder's embedding of the item's text."""

    config_class = EmbeddingIndexerConfig
    config: EmbeddingIndexerConfig

    def __init__(self, config: Mapping[str, Any] | IndexerConfig | None = None) -> None:
        super().__init__(config)
        self._encoder: TextEncoder | None = None

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(
                self.config.encoder,
                max_length=self.config.max_length,
                batch_size=self.config.embed_batch_size,
                precision=self.config.inference_precision,
            )
        return self._encoder

    def embed(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        return self.encoder.encode(texts, progress=progress)

    def snapshot_metadata(self) -> dict[str, Any]:
        return {"encoder": self.config.encoder, "encoder_fingerprint": self.encoder.fingerprint}

    def check_snapshot_metadata(self, metadata: Mapping[str, Any]) -> None:
        recorded = metadata.get("encoder_fingerprint")
        if recorded and recorded != self.encoder.fingerprint:
            raise SnapshotError(
                f"the snapshot was fitted with encoder {metadata.get('encoder')!r} fingerprint {recorded}, but the "
                f"encoder available here has fingerprint {self.encoder.fingerprint}; its IDs would not reproduce"
            )

    def fit_texts(self, texts: Sequence[str], *, progress: bool) -> dict[str, Any] | None:
        return self.fit_embeddings(self.embed(texts, progress=progress), progress=progress)

    def encode_texts(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        return self.encode_embeddings(self.embed(texts, progress=progress))

    def encode_texts_with_preferences(self, texts: Sequence[str], *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.embed(texts, progress=progress)
        codes = np.asarray(self.encode_embeddings(embeddings), dtype=np.int64)
        return codes, self.last_level_preferences(embeddings, codes)

    def last_level_preferences(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Last-level codes best first for each item, given its prefix (see ``Indexer.codes_and_preferences``)."""
        return codes[:, -1:]

    @abstractmethod
    def fit_embeddings(self, embeddings: np.ndarray, *, progress: bool) -> dict[str, Any] | None:
        """Fit the quantiser on unit-norm embeddings."""

    @abstractmethod
    def encode_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Codes ``(n, L)`` for embeddings, row by row."""
