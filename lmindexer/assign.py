"""The one way items get IDs, whoever runs it: code the items with a snapshot (:func:`code_items`), then allocate
suffixes and store the ID table compare-and-swap (:func:`~lmindexer.idtable.store_allocation`).

``lmindexer assign`` (:func:`lmindexer.jobs.assign_ids`) does both in one process; the reindex pipeline codes each
shard in a task of its own (``assign_shard``) and allocates once (``reduce_ids``), handing the coded items over as
Parquet (:func:`write_candidates` / :func:`read_candidates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from lmindexer.catalog.items import Item
from lmindexer.idtable import Candidate
from lmindexer.storage.parquet import read_parquet, write_parquet
from lmindexer.text import text_hash

if TYPE_CHECKING:
    from lmindexer.indexers import Indexer

CANDIDATES_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("codes", pa.list_(pa.int32())),
        ("text_hash", pa.string()),
        ("preferences", pa.list_(pa.int32())),  # last-level codes best first, for a balanced last level
    ]
)


def code_items(indexer: Indexer, items: Sequence[Item], texts: Sequence[str] | None = None) -> list[Candidate]:
    """The learned codes of ``items`` (``texts``: their indexed texts, when the caller has them already), with the
    hash of each text and the item's last-level preferences: what the allocation needs, no suffix yet."""
    if not items:
        return []
    texts = indexer.texts(list(items)) if texts is None else texts
    codes, ranked = indexer.codes_and_preferences(list(texts))
    return [
        Candidate(item.item_id, tuple(int(c) for c in row), text_hash(text), tuple(int(c) for c in order if c >= 0))
        for item, text, row, order in zip(items, texts, codes, ranked, strict=True)
    ]


def write_candidates(candidates: Sequence[Candidate], location: str) -> None:
    table = pa.Table.from_pydict(
        {
            "item_id": [c.item_id for c in candidates],
            "codes": [list(c.codes) for c in candidates],
            "text_hash": [c.text_hash for c in candidates],
            "preferences": [list(c.preferences) for c in candidates],
        },
        schema=CANDIDATES_SCHEMA,
    )
    write_parquet(table, location)


def read_candidates(location: str) -> list[Candidate]:
    return [
        Candidate(r["item_id"], tuple(r["codes"]), r["text_hash"], tuple(r.get("preferences") or ()))
        for r in read_parquet(location).to_pylist()
    ]


__all__ = ["CANDIDATES_SCHEMA", "code_items", "read_candidates", "write_candidates"]
