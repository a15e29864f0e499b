from __future__ import annotations

from pathlib import Path

import pytest
from testsupport.lm import TINY_LM

from lmindexer.idtable import IdTable
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.jobs import assign_ids

# The generative model on a tiny random backbone, encoder fine-tuned: seconds of training on the 320-item sample.
TINY_GENERATIVE = {
    "backbone": "tiny-random",
    "max_length": 32,
    "epochs": 8,
    "batch_size": 32,
    "beam_size": 10,
    "train_encoder": True,
    "encoder_learning_rate": 1e-3,
}


def _snapshot_and_ids(method: str, options: dict, catalogue: Path, root: Path):
    items_dir = root / method
    indexer = create_indexer(method, options)
    from lmindexer.catalog import read_items

    indexer.fit(read_items(catalogue)[0], progress=False)
    indexer.save(items_dir / "snapshot")
    snapshot = load_snapshot(items_dir / "snapshot")
    assign_ids(snapshot, catalogue, items_dir / "ids.parquet", progress=False)
    return snapshot, IdTable.read(items_dir / "ids.parquet")


@pytest.fixture(scope="session")
def rq_ids(wiki_sample_path, tmp_path_factory):
    """rq-kmeans snapshot and ID table of the real sample catalogue (L=2, K=8)."""
    root = tmp_path_factory.mktemp("downstream-rq")
    return _snapshot_and_ids("rq-kmeans", {"levels": 2, "codebook_size": 8}, wiki_sample_path, root)


@pytest.fixture(scope="session")
def lm_ids(wiki_sample_path, tmp_path_factory):
    """A tiny LMIndexer snapshot and its ID table of the real sample catalogue (L=3, K=8)."""
    root = tmp_path_factory.mktemp("downstream-lm")
    return _snapshot_and_ids("lmindexer", TINY_LM, wiki_sample_path, root)


@pytest.fixture(scope="session")
def title_pairs(wiki_items):
    """(title, item_id): a real query for each item, its title, which its text does not start with verbatim."""
    return [(item.title, item.item_id) for item in wiki_items]


@pytest.fixture(scope="session")
def item_texts(wiki_items):
    return {item.item_id: item.text for item in wiki_items}


@pytest.fixture(scope="session")
def movielens_small(isolated_cache, tmp_path_factory):
    """MovieLens-100k cut to its 300 most-watched movies: rq-kmeans IDs (L=2, K=8) and each user's last 30 views."""
    import json
    from collections import Counter

    from lmindexer import datasets

    data = datasets.fetch("movielens-100k", progress=False)
    rows = [json.loads(line) for line in (data / "sequences.jsonl").read_text().splitlines()]
    full = [row["train"] + [row["valid"], row["test"]] for row in rows]
    popular = {item for item, _ in Counter(i for seq in full for i in seq).most_common(300)}
    root = tmp_path_factory.mktemp("downstream-ml")
    catalogue = root / "items.jsonl"
    items = [line for line in (data / "items.jsonl").read_text().splitlines() if json.loads(line)["item_id"] in popular]
    catalogue.write_text("\n".join(items) + "\n")
    snapshot, table = _snapshot_and_ids("rq-kmeans", {"levels": 2, "codebook_size": 8}, catalogue, root)
    sequences = [kept[-30:] for kept in ([i for i in seq if i in popular] for seq in full) if len(kept) >= 3]
    return snapshot, table, sequences
