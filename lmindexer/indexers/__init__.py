"""Indexers, chosen by method name, and snapshot loading."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers.base import Indexer, read_snapshot_document, snapshot_config
from lmindexer.indexers.hkmeans import HKMeansIndexer
from lmindexer.indexers.lm import LMIndexer
from lmindexer.indexers.rq_kmeans import RQKMeansIndexer
from lmindexer.indexers.rqvae import RQVAEIndexer
from lmindexer.methods import DEFAULT_METHOD, INDEXER_CONFIGS, INDEXER_METHODS, IndexerConfig
from lmindexer.storage.s3 import is_s3_uri

INDEXERS: dict[str, type[Indexer]] = {
    RQKMeansIndexer.method: RQKMeansIndexer,
    HKMeansIndexer.method: HKMeansIndexer,
    RQVAEIndexer.method: RQVAEIndexer,
    LMIndexer.method: LMIndexer,
}
if {method: cls.config_class for method, cls in INDEXERS.items()} != INDEXER_CONFIGS:
    raise ImportError(
        f"lmindexer.methods declares {INDEXER_METHODS} with their option classes, but the registered indexers are "
        f"{ {method: cls.config_class.__name__ for method, cls in INDEXERS.items()} }"
    )

if TYPE_CHECKING:
    from lmindexer.idtable import IdSpace


def available_methods() -> list[str]:
    return sorted(INDEXERS)


def indexer_class(method: str) -> type[Indexer]:
    try:
        return INDEXERS[method]
    except KeyError:
        raise ConfigError(f"unknown indexer method {method!r}; available: {', '.join(available_methods())}") from None


def create_indexer(method: str, config: Mapping[str, Any] | None = None) -> Indexer:
    return indexer_class(method)(config)


def load_snapshot(location: str | os.PathLike[str]) -> Indexer:
    """Load a snapshot from a local directory or an ``s3://`` prefix, verified against its recorded digests."""
    if is_s3_uri(location):
        from lmindexer.storage.s3 import local_directory

        with local_directory(location, prefix="lmindexer-snapshot-") as copy:
            return load_snapshot(copy)
    directory = Path(location)
    if not directory.is_dir():
        raise SnapshotError(f"snapshot not found: {location}")
    document = read_snapshot_document(directory)
    return indexer_class(document["method"]).from_snapshot_document(directory, document)


def read_id_space(location: str | os.PathLike[str]) -> IdSpace:
    """The ID space a snapshot defines (version, method, codebook sizes), from its ``snapshot.json`` alone: for
    steps that need the space but not the model, so they neither download the weights nor load an encoder."""
    from lmindexer.idtable import IdSpace
    from lmindexer.options import parse_config
    from lmindexer.storage.s3 import StorageError, local_copy

    with tempfile.TemporaryDirectory(prefix="lmindexer-snapshot-") as tmp:
        if is_s3_uri(location):
            try:
                with local_copy(f"{str(location).rstrip('/')}/snapshot.json") as path:
                    (Path(tmp) / "snapshot.json").write_bytes(path.read_bytes())
            except StorageError as exc:
                raise SnapshotError(f"not a snapshot (no readable snapshot.json): {location}: {exc}") from exc
            directory = Path(tmp)
        else:
            directory = Path(location)
        document = read_snapshot_document(directory)
    config = parse_config(
        indexer_class(document["method"]).config_class, snapshot_config(document), what="indexer config"
    )
    return IdSpace(str(document["version"]), str(document["method"]), tuple(config.codebook_size), config.last_level)


__all__ = [
    "DEFAULT_METHOD",
    "INDEXERS",
    "Indexer",
    "IndexerConfig",
    "available_methods",
    "create_indexer",
    "indexer_class",
    "load_snapshot",
    "read_id_space",
]
