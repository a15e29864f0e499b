"""Shared machinery of the two-stage baselines: frozen sentence embeddings, then a quantiser over them.

Codes from bf16 embeddings are the float32 codes wherever bf16 cannot have changed them. A quantiser whose codes are
nearest-centroid choices (rq-kmeans, hkmeans) says, per item, how far its embedding may move before a code changes
(:meth:`EmbeddingIndexer.decision_radii`); bf16 moves a unit-norm MiniLM embedding by at most
:data:`BF16_EMBEDDING_ERROR`, so only the items closer than that to a decision boundary are embedded again in
float32. The rest keep their bf16 embedding, whose codes are certified equal to the float32 ones.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmindexer.embeddings import TextEncoder
from lmindexer.errors import SnapshotError
from lmindexer.indexers.base import Indexer
from lmindexer.methods import EmbeddingIndexerConfig, IndexerConfig
from lmindexer.precision import BF16_RELATIVE_ERROR

# The largest L2 distance between a text's bf16 and float32 MiniLM embedding (both unit length) that codes are
# certified against (measured values in lmindexer.precision).
BF16_EMBEDDING_ERROR = BF16_RELATIVE_ERROR


class EmbeddingIndexer(Indexer):
    """An indexer whose codes are a function of a frozen encoder's embedding of the item's text."""

    config_class = EmbeddingIndexerConfig
    config: EmbeddingIndexerConfig

    def __init__(self, config: Mapping[str, Any] | IndexerConfig | None = None) -> None:
        super().__init__(config)
        self._encoder: TextEncoder | None = None
        self._fp32_encoder: TextEncoder | None = None
        self.last_recheck: dict[str, int] | None = None  # what the last bf16 coding embedded again in float32

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

    def embed_for_codes(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        """Embeddings whose codes are the float32 ones: in bf16, the items near a decision boundary are embedded
        again in float32 (see the module doc)."""
        embeddings = self.embed(texts, progress=progress)
        if self.encoder.precision == "fp32":
            return embeddings
        radii = self.decision_radii(embeddings, np.asarray(self.encode_embeddings(embeddings), dtype=np.int64))
        if radii is None:
            return embeddings
        doubtful = np.flatnonzero(radii < BF16_EMBEDDING_ERROR)
        self.last_recheck = {"items": len(texts), "recomputed_in_fp32": len(doubtful)}
        if len(doubtful):
            embeddings = np.array(embeddings, copy=True)
            embeddings[doubtful] = self.fp32_encoder.encode([texts[i] for i in doubtful], progress=False)
        return embeddings

    @property
    def fp32_encoder(self) -> TextEncoder:
        if self._fp32_encoder is None:
            self._fp32_encoder = TextEncoder(
                self.config.encoder,
                max_length=self.config.max_length,
                batch_size=self.config.embed_batch_size,
                precision="fp32",
                use_cache=self.encoder.use_cache,
            )
        return self._fp32_encoder

    def decision_radii(self, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray | None:
        """How far (L2) each embedding may move before any of its ``codes`` changes; None where the quantiser
        cannot say (its codes are not nearest-centroid choices on the embedding)."""
        return None

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
        return self.encode_embeddings(self.embed_for_codes(texts, progress=progress))

    def encode_texts_with_preferences(self, texts: Sequence[str], *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self.embed_for_codes(texts, progress=progress)
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
