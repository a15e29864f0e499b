"""The Indexer interface, typed configs and the snapshot format.

An indexer turns catalogue items into L learned codes (code i in ``[0, K_i)``). It is fitted on items, produces codes
for any items, and persists as a *snapshot* directory: ``snapshot.json`` (method, config, version, manifest, content
digests) plus ``weights.safetensors`` and the method's assets. Nothing in a snapshot is pickled, so loading one never
runs code, and a snapshot is verified against its recorded digests before anything in it is used.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import lmindexer
from lmindexer.catalog.items import Item
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.integrity import INTEGRITY_KEY, legacy_content_hash, seal, verify, write_safetensors
from lmindexer.methods import IndexerConfig
from lmindexer.options import parse_config
from lmindexer.precision import resolve_precision
from lmindexer.text import TextTemplate

SNAPSHOT_FORMAT = "lmindexer-snapshot"
SNAPSHOT_FORMAT_VERSION = 1
SNAPSHOT_FILE = "snapshot.json"
WEIGHTS_FILE = "weights.safetensors"
# Parts of snapshot.json hashed key by key, so that a mismatch names the key (``config.text_template``).
_EXPANDED = ("config", "metadata")
# The version ends in the content digest, so it cannot be one of the digest's parts.
_UNHASHED = ("version",)
_VERSION_HASH = re.compile(r"-([0-9a-f]{8})$")


class Indexer(ABC):
    """Fits on items, produces codes for items, saves and loads as a snapshot."""

    method: ClassVar[str]
    config_class: ClassVar[type[IndexerConfig]] = IndexerConfig

    def __init__(self, config: Mapping[str, Any] | IndexerConfig | None = None) -> None:
        config = parse_config(self.config_class, config, what="indexer config")
        # 'auto' is resolved once, here, and saved resolved: a snapshot assigns in the precision it was fitted with
        # on whatever machine loads it (see lmindexer.precision).
        resolved = resolve_precision(config.inference_precision)
        self.config = config.model_copy(update={"inference_precision": resolved})
        self.template = TextTemplate(self.config.text_template)
        self.version: str | None = None
        self.manifest: dict[str, Any] = {}
        self._fitted = False
        # Where a long fit keeps resumable state (None: it keeps none); set by the caller before fit().
        self.checkpoint_dir: Path | None = None
        # False on the non-main processes of a multi-process (DDP) fit, which must not write the snapshot.
        self.is_main_process = True

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(self.config.codebook_size)

    @property
    def id_space(self) -> Any:
        """The ID space this fitted, saved indexer defines (:class:`~lmindexer.idtable.IdSpace`)."""
        from lmindexer.idtable import IdSpace

        if self.version is None:
            raise SnapshotError("the indexer has no snapshot version; save it before assigning IDs")
        return IdSpace(self.version, self.method, self.codebook_sizes, self.config.last_level)

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def texts(self, items: Sequence[Item]) -> list[str]:
        return [self.template.render(item) for item in items]

    # -- the interface -------------------------------------------------------------------------------------------

    def fit(self, items: Sequence[Item], *, progress: bool = True) -> dict[str, Any]:
        """Learn the code space from ``items`` (tombstones are ignored). Returns training statistics."""
        live = [item for item in items if not item.deleted]
        minimum = max(self.codebook_sizes)
        if len(live) < minimum:
            raise ConfigError(f"fitting needs at least {minimum} items (the largest codebook size); got {len(live)}")
        started = time.perf_counter()
        stats = self.fit_texts(self.texts(live), progress=progress) or {}
        self._fitted = True
        self.version = None
        self.manifest = {"items": len(live), "fit_seconds": round(time.perf_counter() - started, 3), **stats}
        return self.manifest

    def codes(self, items: Sequence[Item], *, progress: bool = False) -> np.ndarray:
        """The learned codes of ``items`` as an ``(n, L)`` int64 array. A pure function of each item's text."""
        return self.codes_for_texts(self.texts(items), progress=progress)

    def codes_for_texts(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not self._fitted:
            raise SnapshotError(f"the {self.method} indexer is not fitted; fit it or load a snapshot")
        if not texts:
            return np.zeros((0, self.levels), dtype=np.int64)
        return self._checked(self.encode_texts(list(texts), progress=progress), len(texts))

    def codes_and_preferences(self, texts: Sequence[str], *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The codes of ``texts`` ``(n, L)`` and, for the last position, the codes of its codebook in the item's order
        of preference given its prefix ``(n, P)``, best first (``-1`` pads a row that ranks fewer). The first
        preference is always the item's own last code. The ID table's balanced last level reads them."""
        if not self._fitted:
            raise SnapshotError(f"the {self.method} indexer is not fitted; fit it or load a snapshot")
        if not texts:
            return np.zeros((0, self.levels), dtype=np.int64), np.zeros((0, 1), dtype=np.int64)
        codes, preferences = self.encode_texts_with_preferences(list(texts), progress=progress)
        codes = self._checked(codes, len(texts))
        preferences = np.asarray(preferences, dtype=np.int64)
        if preferences.ndim != 2 or len(preferences) != len(codes) or (preferences[:, 0] != codes[:, -1]).any():
            raise RuntimeError(f"{self.method} ranked last-level codes that do not start with each item's own code")
        if (preferences >= self.codebook_sizes[-1]).any() or (preferences < -1).any():
            raise RuntimeError(f"{self.method} ranked a last-level code outside its codebook")
        return codes, preferences

    def encode_texts_with_preferences(self, texts: Sequence[str], *, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """Codes and last-level preferences in one pass. A method that cannot rank the last level offers only each
        item's own code, so that when it is taken the item gets a suffix."""
        codes = np.asarray(self.encode_texts(texts, progress=progress), dtype=np.int64)
        return codes, codes[:, -1:]

    def _checked(self, codes: Any, count: int) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.shape != (count, self.levels):
            raise RuntimeError(f"{self.method} produced codes of shape {codes.shape}, expected {(count, self.levels)}")
        sizes = np.asarray(self.codebook_sizes)
        if (codes < 0).any() or (codes >= sizes).any():
            raise RuntimeError(f"{self.method} produced a code outside its codebook")
        return codes

    @abstractmethod
    def fit_texts(self, texts: Sequence[str], *, progress: bool) -> dict[str, Any] | None:
        """Fit on rendered texts; may return statistics for the manifest."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], *, progress: bool) -> np.ndarray:
        """Codes for rendered texts, independent of batch composition and order."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors (saved with safetensors)."""

    @abstractmethod
    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""

    def snapshot_metadata(self) -> dict[str, Any]:
        """Extra facts a snapshot must record (e.g. the frozen encoder's fingerprint)."""
        return {}

    def check_snapshot_metadata(self, metadata: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Refuse a snapshot whose recorded facts do not hold here (e.g. a different encoder)."""

    def write_assets(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write extra snapshot files (plain data such as tokenizer JSON) into ``directory``."""

    def load_assets(self, directory: Path, metadata: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Read what :meth:`write_assets` wrote; called before :meth:`load_state_tensors`."""

    def warm_start(self, previous: Indexer) -> None:
        """Start the next :meth:`fit` from a fitted snapshot of the same method instead of from scratch."""
        raise ConfigError(f"the {self.method} method does not support warm retraining")

    # -- persistence ---------------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], *, extra_manifest: Mapping[str, Any] | None = None) -> str:
        """Write the snapshot atomically and return its version (``<method>-<UTC time>-<content digest>``)."""
        if not self._fitted:
            raise SnapshotError("cannot save an indexer that has not been fitted")
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.state_tensors().items()}
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            write_safetensors(tensors, staging / WEIGHTS_FILE)
            self.write_assets(staging)
            now = dt.datetime.now(dt.UTC)
            document: dict[str, Any] = {
                "format": SNAPSHOT_FORMAT,
                "format_version": SNAPSHOT_FORMAT_VERSION,
                "method": self.method,
                "created_at": now.isoformat(),
                "lmindexer_version": lmindexer.__version__,
                "config": self.config.model_dump(mode="json"),
                "metadata": self.snapshot_metadata(),
                "manifest": {**self.manifest, **dict(extra_manifest or {})},
                "weights": WEIGHTS_FILE,
            }
            integrity = seal(staging, document, document_file=SNAPSHOT_FILE, expand=_EXPANDED, skip=_UNHASHED)
            version = f"{self.method}-{now:%Y%m%dT%H%M%SZ}-{integrity['digest'][:8]}"
            document.update(version=version, integrity=integrity)
            (staging / SNAPSHOT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            if target.exists():
                if not (target / SNAPSHOT_FILE).is_file():
                    raise SnapshotError(f"{target} exists and is not a snapshot; refusing to overwrite it")
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.version = version
        return version

    @classmethod
    def from_snapshot_document(cls, directory: Path, document: Mapping[str, Any]) -> Indexer:
        # Nothing in the directory is used before it is known to be what was saved.
        verify_snapshot(directory, document)
        indexer = cls(snapshot_config(document))
        indexer.check_snapshot_metadata(document.get("metadata") or {})
        indexer.load_assets(directory, document.get("metadata") or {})
        weights = document.get("weights", WEIGHTS_FILE)
        if not isinstance(weights, str) or Path(weights).name != weights or weights in {"", ".", ".."}:
            raise SnapshotError(f"snapshot {directory} names its weights file {weights!r}; expected a file name")
        try:
            tensors = load_file(str(directory / weights))
        except (OSError, ValueError, SafetensorError) as exc:
            raise SnapshotError(f"cannot read the weights of snapshot {directory}: {exc}") from exc
        indexer.load_state_tensors(tensors)
        indexer._fitted = True
        indexer.version = document["version"]
        indexer.manifest = dict(document.get("manifest") or {})
        return indexer


def snapshot_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """The options a snapshot was fitted with. Snapshots written before the last-level policy existed gave every
    item its own last code, and those written before the precision option assigned in float32: they keep doing so."""
    config = dict(document.get("config") or {})
    config.setdefault("last_level", "argmax")
    config.setdefault("inference_precision", "fp32")
    return config


def read_snapshot_document(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / SNAPSHOT_FILE
    if not path.is_file():
        raise SnapshotError(f"not a snapshot directory (no {SNAPSHOT_FILE}): {directory}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path} is not valid JSON: {exc}") from exc
    if document.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path} is not an lmindexer snapshot")
    if document.get("format_version") != SNAPSHOT_FORMAT_VERSION:
        raise SnapshotError(
            f"{path} has snapshot format version {document.get('format_version')}; "
            f"this release reads version {SNAPSHOT_FORMAT_VERSION}"
        )
    for key in ("method", "version", "config"):
        if key not in document:
            raise SnapshotError(f"{path} lacks the {key!r} entry")
    return document


def verify_snapshot(directory: str | os.PathLike[str], document: Mapping[str, Any]) -> None:
    """Refuse a snapshot whose ``snapshot.json`` entries or files differ from what :meth:`Indexer.save` wrote.

    A snapshot records the SHA-256 of its config, metadata, manifest and every file, and its version ends in the
    first 8 hex of the digest over all of them. One written before these records existed is checked against its
    version alone: the last 8 hex are then a hash of its files and config, so any change to those is still refused.
    """
    directory = Path(directory)
    version = str(document.get("version"))
    if INTEGRITY_KEY in document:
        digest = verify(
            directory, document, what="snapshot", document_file=SNAPSHOT_FILE, expand=_EXPANDED, skip=_UNHASHED
        )
        if not version.endswith(f"-{digest[:8]}"):
            raise SnapshotError(
                f"snapshot {directory}: its version {version} does not end in its content digest {digest[:8]}"
            )
        return
    found = _VERSION_HASH.search(version)
    if found is None:
        raise SnapshotError(
            f"snapshot {directory} records no content digest and its version {version!r} ends in no content hash, "
            "so it cannot be verified; fit it again"
        )
    actual = legacy_content_hash(directory, document.get("config"), document_file=SNAPSHOT_FILE)[:8]
    if actual != found.group(1):
        raise SnapshotError(
            f"snapshot {directory} does not match the content hash in its version ({found.group(1)}, its files and "
            f"config now hash to {actual}): its config or files changed after it was saved"
        )
