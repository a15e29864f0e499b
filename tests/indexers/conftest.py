from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lmindexer.indexers import create_indexer
from lmindexer.indexers.base import SNAPSHOT_FILE

TINY = {"levels": 3, "codebook_size": 8}
TINY_OPTIONS = {
    "rq-kmeans": {},
    "hkmeans": {},
    "rqvae": {"epochs": 40, "batch_size": 64, "hidden_dims": [128, 64], "latent_dim": 16},
}


@pytest.fixture(scope="session")
def fitted(wiki_items):
    """Each baseline fitted once on the real sample catalogue (tiny sizes)."""
    indexers = {}
    for method, options in TINY_OPTIONS.items():
        indexer = create_indexer(method, {**TINY, **options})
        indexer.fit(wiki_items, progress=False)
        indexers[method] = indexer
    return indexers


def read_document(directory: Path) -> dict:
    return json.loads((directory / SNAPSHOT_FILE).read_text())


def write_document(directory: Path, document: dict) -> None:
    (directory / SNAPSHOT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _hash_before_digests(directory: Path, config: dict) -> str:
    # How releases before content digests computed the hash their versions end in: every file's relative path and
    # bytes in path order, then the config as sorted-key JSON. Kept separate from the library's own code on purpose.
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / SNAPSHOT_FILE):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()


@pytest.fixture
def as_written_before_digests():
    """Turns a saved snapshot into the layout releases before content digests wrote: no integrity record, and a
    version ending in the hash of its files and config."""

    def rewrite(directory: Path) -> dict:
        document = read_document(directory)
        del document["integrity"]
        stem = document["version"].rsplit("-", 1)[0]
        document["version"] = f"{stem}-{_hash_before_digests(directory, document['config'])[:8]}"
        write_document(directory, document)
        return document

    return rewrite
