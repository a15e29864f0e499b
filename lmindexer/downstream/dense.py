"""A dense index of the catalogue for serving: each live item's sentence embedding, saved as a verified artifact.

``lmindexer serve --dense DIR`` loads it to answer ``/search?mode=dense`` and to put a dense leg into
``mode=hybrid`` (score fusion of the engine's ID-prefix-boosted BM25 search with dense retrieval: the best
ID-aware hybrid measured in ``benchmarks/downstream.py``). The embeddings are those of the dense baseline the
benchmarks measure: the frozen encoder (all-MiniLM-L6-v2 by default), mean-pooled and L2-normalised, over the same
text the ID indexers read; search is exact inner product (cosine) with a flat faiss index.

The directory holds ``embeddings.safetensors`` (one float32 row per item) and ``dense_index.json`` (the options,
the item_ids in row order, the encoder's weights fingerprint and an integrity record); loading verifies every part,
and refuses an encoder whose weights differ from those that embedded the items, since its query vectors would not
be comparable. Building again after catalogue changes is cheap: the embedding cache embeds only new texts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmindexer.catalog.items import Item
from lmindexer.downstream.baselines import DenseRetriever
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.integrity import INTEGRITY_KEY, replaced_atomically, seal, verify, write_safetensors
from lmindexer.options import parse_config
from lmindexer.text import DEFAULT_TEMPLATE, TextTemplate

DOCUMENT = "dense_index.json"
WEIGHTS = "embeddings.safetensors"
FORMAT_VERSION = 1
_EMBEDDINGS = "embeddings"
_EXPANDED = ("config",)


class DenseIndexConfig(BaseModel):
    """How a dense index embeds items (and, when served, queries)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str = Field(DEFAULT_ENCODER, description="the frozen sentence encoder (a packaged name or a directory)")
    # 256: what the benchmarks' dense baseline reads (benchmarks/downstream.py --dense-max-length).
    max_length: int = Field(256, ge=8, le=4096, description="tokens of an item text or a query the encoder reads")
    text_template: str = Field(DEFAULT_TEMPLATE, description="how an item's fields become the embedded text")
    batch_size: int = Field(64, ge=1, le=65536, description="texts embedded per forward pass")

    @field_validator("text_template")
    @classmethod
    def _template(cls, value: str) -> str:
        TextTemplate(value)  # raises ConfigError naming the problem
        return value


def parse_dense_config(values: Mapping[str, Any] | DenseIndexConfig | None) -> DenseIndexConfig:
    """Validate dense index options; one :class:`ConfigError` names every problem."""
    return parse_config(DenseIndexConfig, values, what="dense index options")


class DenseIndex:
    """Unit embeddings of items, searchable by a text query. Build with :meth:`build`, persist with :meth:`save` and
    :meth:`load`."""

    def __init__(
        self,
        config: DenseIndexConfig,
        item_ids: Sequence[str],
        matrix: np.ndarray,
        encoder: TextEncoder,
        *,
        built_at: str | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.built_at = built_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._retriever = DenseRetriever(encoder).index_embeddings(list(item_ids), matrix)

    @property
    def item_ids(self) -> list[str]:
        return self._retriever.item_ids

    def __len__(self) -> int:
        return len(self._retriever.item_ids)

    @classmethod
    def build(
        cls,
        items: Iterable[Item],
        config: DenseIndexConfig | Mapping[str, Any] | None = None,
        *,
        use_cache: bool = True,
        progress: bool = False,
    ) -> DenseIndex:
        """Embed the live items of ``items`` (tombstones are left out); the last version of a repeated item_id
        wins, as in a catalogue."""
        chosen = parse_dense_config(config)
        live: dict[str, Item] = {}
        for item in items:
            if item.deleted:
                live.pop(item.item_id, None)
            else:
                live[item.item_id] = item
        if not live:
            raise ConfigError("a dense index needs at least one live item; the catalogue given has none")
        encoder = TextEncoder(
            chosen.encoder, max_length=chosen.max_length, batch_size=chosen.batch_size, use_cache=use_cache
        )
        template = TextTemplate(chosen.text_template)
        item_ids = sorted(live)
        try:
            matrix = encoder.encode([template.render(live[i]) for i in item_ids], progress=progress)
        finally:
            encoder.close()
        return cls(chosen, item_ids, matrix, _query_encoder(chosen))

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest items of each query text with their cosine similarity, best first."""
        return self._retriever.search_scored(self.encoder.encode(list(queries)), k)

    # -- persistence -----------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index atomically (a half-written directory never replaces a good one)."""
        target = Path(directory)
        with replaced_atomically(target) as staging:
            matrix = self._retriever.vectors()
            write_safetensors({_EMBEDDINGS: torch.from_numpy(matrix)}, staging / WEIGHTS)
            document: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "config": self.config.model_dump(mode="json"),
                "encoder_fingerprint": self.encoder.fingerprint,
                "dim": int(matrix.shape[1]),
                "built_at": self.built_at,
                "item_ids": self.item_ids,
            }
            document[INTEGRITY_KEY] = seal(staging, document, document_file=DOCUMENT, expand=_EXPANDED)
            (staging / DOCUMENT).write_text(json.dumps(document, indent=1) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DenseIndex:
        """Load a saved index from a local directory or an ``s3://`` prefix, verified against what was saved."""
        from lmindexer.storage.s3 import local_directory

        with local_directory(directory, prefix="lmindexer-dense-") as path:
            return cls._load_verified(path)

    @classmethod
    def _load_verified(cls, path: Path) -> DenseIndex:
        try:
            document = json.loads((path / DOCUMENT).read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"not a dense index directory: {path} ({exc})") from exc
        if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
            found = document.get("format_version") if isinstance(document, dict) else None
            raise SnapshotError(f"{path}: unsupported dense index format {found!r}")
        verify(path, document, what="dense index", document_file=DOCUMENT, expand=_EXPANDED)
        config = parse_dense_config(document["config"])
        try:
            matrix = load_file(str(path / WEIGHTS))[_EMBEDDINGS].numpy()
        except (OSError, SafetensorError, KeyError) as exc:
            raise SnapshotError(f"cannot read {path / WEIGHTS}: {exc}") from exc
        item_ids = document["item_ids"]
        if matrix.ndim != 2 or matrix.shape != (len(item_ids), document["dim"]):
            raise SnapshotError(
                f"{path}: {WEIGHTS} holds a {tuple(matrix.shape)} matrix for {len(item_ids)} items of dimension "
                f"{document['dim']}"
            )
        encoder = _query_encoder(config)
        if encoder.fingerprint != document["encoder_fingerprint"] or encoder.dim != matrix.shape[1]:
            raise SnapshotError(
                f"dense index {path} was built with encoder {config.encoder!r} of weights "
                f"{document['encoder_fingerprint']}, but the encoder loaded now has weights {encoder.fingerprint} "
                f"(dimension {encoder.dim}): its query vectors would not be comparable; build the index again"
            )
        return cls(config, item_ids, matrix, encoder, built_at=document["built_at"])


def _query_encoder(config: DenseIndexConfig) -> TextEncoder:
    # Queries are never cached: they are the users' text, each is seen about once, and the serving thread that
    # embeds them must not share the build's SQLite connection. The weights are loaded once per process.
    return TextEncoder(config.encoder, max_length=config.max_length, batch_size=config.batch_size, use_cache=False)


__all__ = ["DOCUMENT", "DenseIndex", "DenseIndexConfig", "parse_dense_config"]
