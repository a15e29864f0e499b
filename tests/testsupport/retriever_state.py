"""What the retriever refresh reads, built with the real functions: a published pipeline state (snapshot, ID table,
catalogue, current pointer) on a local or s3:// base, query files, and tiny retriever options."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmindexer.catalog import Item
from lmindexer.catalog.store import write_catalog
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.jobs import assign_ids
from lmindexer.pipeline import PipelineConfig
from lmindexer.pipeline.records import current_versioned, set_current
from lmindexer.pipeline.steps import ids_uri
from lmindexer.storage.s3 import upload_file, write_bytes

# A tiny random backbone with the encoder fine-tuned: seconds per epoch on a hundred items.
TINY_RETRIEVER: dict[str, Any] = {
    "backbone": "tiny-random",
    "max_length": 32,
    "epochs": 3,
    "batch_size": 32,
    "beam_size": 10,
    "train_layers": -1,
    "encoder_learning_rate": 1e-3,
    # Off unless a test asks for them: they several-fold the examples, and so the training time.
    "pseudo_queries": 0,
}
RQ_OPTIONS = {"levels": 2, "codebook_size": 8}


def fit_snapshot(config: PipelineConfig, items: Sequence[Item], work: Path) -> str:
    """Fit rq-kmeans on ``items`` and store the snapshot under the pipeline's models prefix; returns its URI."""
    indexer = create_indexer("rq-kmeans", RQ_OPTIONS)
    indexer.fit(list(items), progress=False)
    local = work / "snapshot"
    version = indexer.save(local)
    uri = config.uri(config.models_prefix, version)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            upload_file(path, f"{uri}/{path.relative_to(local).as_posix()}")
    return uri


def publish(config: PipelineConfig, run_id: str, items: Sequence[Item], snapshot_uri: str) -> dict[str, Any]:
    """What a committed catalog_reindex run leaves: its catalogue, the ID table extended with the catalogue's new
    items (existing IDs, deleted items' included, stay), and the current pointer."""
    snapshot = load_snapshot(snapshot_uri)
    catalog_uri = config.uri(config.catalog_prefix, run_id, "items.parquet")
    write_catalog(items, catalog_uri)
    table_uri = ids_uri(config, snapshot.version)
    assign_ids(snapshot, catalog_uri, table_uri, progress=False)
    pointer = {
        "run_id": run_id,
        "snapshot_uri": snapshot_uri,
        "snapshot_version": snapshot.version,
        "ids_uri": table_uri,
        "catalog_uri": catalog_uri,
        "items": len(items),
    }
    move_current(config, pointer)
    return pointer


def move_current(config: PipelineConfig, pointer: dict) -> None:
    """Point the pipeline's ``current.json`` at ``pointer`` whatever it holds now (as a committing run would)."""
    set_current(config, pointer, replacing=current_versioned(config)[1])


def title_queries(items: Iterable[Item]) -> list[tuple[str, str]]:
    """(title, item_id): a real query per item that its indexed text does not start with verbatim."""
    return [(item.title, item.item_id) for item in items]


def write_queries(location: str | Path, pairs: Iterable[tuple[str, str]]) -> str:
    lines = "".join(json.dumps({"query": query, "item_id": item_id}) + "\n" for query, item_id in pairs)
    write_bytes(lines.encode(), str(location))
    return str(location)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: on a few shared cores, a thread per core oversubscribes them and the tiny models train
    tens of times slower (0.7 s against 29 s, measured on 2 busy cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def retriever_files(root: Path, items: Sequence[Item], options: dict[str, Any]) -> SimpleNamespace:
    """What ``lmindexer retriever train`` reads, for ``items``: a published rq-kmeans snapshot, its ID table and
    catalogue, title queries and an options file."""
    import yaml

    store = PipelineConfig(base_uri=str(root / "store"))
    pointer = publish(store, "p1", items, fit_snapshot(store, items, root))
    options_file = root / "options.yaml"
    options_file.write_text(yaml.safe_dump(options))
    return SimpleNamespace(
        root=root, snapshot=pointer["snapshot_uri"], ids=pointer["ids_uri"], catalog=pointer["catalog_uri"],
        queries=write_queries(root / "queries.jsonl", title_queries(items)), options=str(options_file),
    )  # fmt: skip
