"""Builders of the tiny downstream models' inputs: real snapshots and ID tables of the sample catalogues, trained in
seconds. Shared by the downstream and serving tests."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lmindexer.idtable import IdTable
from lmindexer.indexers import Indexer, create_indexer, load_snapshot
from lmindexer.jobs import assign_ids

# The generative model on a tiny random backbone, encoder fine-tuned: seconds of training on the 320-item sample.
TINY_GENERATIVE = {
    "backbone": "tiny-random",
    "max_length": 32,
    "epochs": 8,
    "batch_size": 32,
    "beam_size": 10,
    "train_layers": -1,
    "encoder_learning_rate": 1e-3,
    # Off unless a test asks for them: they several-fold the examples, and so the training time.
    "pseudo_queries": 0,
}
RQ_OPTIONS = {"levels": 2, "codebook_size": 8}


def snapshot_and_ids(method: str, options: dict[str, Any], catalogue: Path, root: Path) -> tuple[Indexer, IdTable]:
    """Fit ``method`` on ``catalogue``, save and reload the snapshot, and assign every item its ID."""
    from lmindexer.catalog import read_items

    snapshot_dir, ids_path = snapshot_files(root, method)
    indexer = create_indexer(method, options)
    indexer.fit(read_items(catalogue)[0], progress=False)
    indexer.save(snapshot_dir)
    snapshot = load_snapshot(snapshot_dir)
    assign_ids(snapshot, catalogue, ids_path, progress=False)
    return snapshot, IdTable.read(ids_path)


def snapshot_files(root: Path, method: str) -> tuple[Path, Path]:
    """Where :func:`snapshot_and_ids` saves ``method``'s snapshot directory and ID table under ``root``."""
    return root / method / "snapshot", root / method / "ids.parquet"


def movielens_subset(root: Path, movies: int = 300) -> tuple[Indexer, IdTable, list[list[str]], Path]:
    """MovieLens-100k cut to its ``movies`` most-watched movies: rq-kmeans IDs (L=2, K=8), each user's last 30 views
    (users with at least 3 of them) and the cut catalogue."""
    from lmindexer import datasets

    data = datasets.fetch("movielens-100k", progress=False)
    full = [[*s.history, s.test] for s in datasets.read_sequences(data / "sequences.jsonl")]
    popular = {item for item, _ in Counter(i for seq in full for i in seq).most_common(movies)}
    catalogue = root / "items.jsonl"
    items = [line for line in (data / "items.jsonl").read_text().splitlines() if json.loads(line)["item_id"] in popular]
    catalogue.write_text("\n".join(items) + "\n")
    snapshot, table = snapshot_and_ids("rq-kmeans", RQ_OPTIONS, catalogue, root)
    sequences = [kept[-20:] for kept in ([i for i in seq if i in popular] for seq in full) if len(kept) >= 3]
    return snapshot, table, sequences, catalogue


def teacher_forced_log_probability(model: Any, memory: Any, mask: Any, source: int, tokens: tuple[int, ...]) -> float:
    """The log-probability of the ID ``tokens`` for row ``source`` of (``memory``, ``mask``), every position
    recomputed from scratch (no decoder cache), the softmax over the trie's allowed tokens and the model's prior
    scores included when it has a prior: what beam search must give that ID."""
    import torch

    network, trie, prior = model.network, model.trie, model.prior
    row_memory, row_mask = memory[source : source + 1], mask[source : source + 1]
    summary = network.source_summary(row_memory, row_mask)
    target = torch.tensor([tokens])
    states = network.states(row_memory, row_mask, target)
    total = 0.0
    for position in range(network.depth):
        scores = None if prior is None else prior.scores(trie, position, summary, target[:, :position])
        logits = network.logits(states[:, position], position, target, scores)[0]
        allowed = trie.allowed(tokens[:position])
        total += float(torch.log_softmax(logits[allowed], dim=-1)[allowed.index(tokens[position])])
    return total


def recall_of_held_out_next_items(model: Any, table: IdTable, sequences: list[list[str]]) -> tuple[float, float]:
    """Recall@10 of each sequence's last item from the items before it, and that of 10 items picked at random; checks
    on the way that every recommendation list holds 1 to 10 items that have IDs."""
    histories, targets = [s[:-1] for s in sequences], [s[-1] for s in sequences]
    valid = set(table.sid_map())
    ranked = model.recommend(histories, k=10)
    assert all(1 <= len(r) <= 10 and {i for i, _ in r} <= valid for r in ranked)
    return model.evaluate_recommendation(histories, targets)["recall@10"], 10 / len(valid)
