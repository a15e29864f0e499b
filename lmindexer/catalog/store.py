"""The current catalogue: every live item's latest fields, kept as one Parquet file per pipeline run.

Drops are applied in order to the previous version: a row with ``deleted: true`` removes its item, any other row
inserts or replaces it. The result is written sorted by item_id (so identical inputs give identical files) with
``attributes`` as JSON text, which :class:`~lmindexer.catalog.readers.CatalogReader` reads back as an object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lmindexer.catalog.items import Item
from lmindexer.catalog.readers import CatalogReader
from lmindexer.storage.parquet import write_parquet

SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("category", pa.string()),
        pa.field("attributes", pa.string()),
        pa.field("updated_at", pa.string()),
    ]
)


def read_catalog(location: str | os.PathLike[str]) -> dict[str, Item]:
    """item_id -> Item for a catalogue written by :func:`write_catalog` (or any valid catalogue file)."""
    return {item.item_id: item for batch in CatalogReader(location, strict=True) for item in batch}


def write_catalog(items: Iterable[Item], destination: str | os.PathLike[str]) -> int:
    """Write live items as Parquet sorted by item_id; returns how many were written."""
    rows = sorted((item for item in items if not item.deleted), key=lambda item: item.item_id)
    table = pa.Table.from_pydict(
        {
            "item_id": [i.item_id for i in rows],
            "title": [i.title for i in rows],
            "text": [i.text for i in rows],
            "category": [i.category for i in rows],
            "attributes": [json.dumps(dict(i.attributes), sort_keys=True) if i.attributes else None for i in rows],
            "updated_at": [i.updated_at for i in rows],
        },
        schema=SCHEMA,
    )
    write_parquet(table, destination)
    return len(rows)


@dataclass
class CatalogDelta:
    """What a set of drops changed: items new to the catalogue, items whose fields changed, items removed."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    deletes_of_unknown_items: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "new": len(self.new),
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "unchanged": self.unchanged,
            "deletes_of_unknown_items": self.deletes_of_unknown_items,
        }


def apply_drops(current: Mapping[str, Item], drops: Iterable[Iterable[Item]]) -> tuple[dict[str, Item], CatalogDelta]:
    """Apply drops in order to ``current``. An item touched by several drops ends in its last state."""
    merged = dict(current)
    touched: dict[str, str] = {}
    for drop in drops:
        for item in drop:
            if item.deleted:
                if merged.pop(item.item_id, None) is not None or item.item_id in touched:
                    touched[item.item_id] = "deleted"
                else:
                    touched.setdefault(item.item_id, "unknown-delete")
                continue
            merged[item.item_id] = item
            touched[item.item_id] = "upserted"
    delta = CatalogDelta()
    for item_id, what in sorted(touched.items()):
        before = current.get(item_id)
        after = merged.get(item_id)
        if what == "unknown-delete":
            delta.deletes_of_unknown_items += 1
        elif after is None:
            if before is not None:
                delta.deleted.append(item_id)
        elif before is None:
            delta.new.append(item_id)
        elif _fields(before) != _fields(after):
            delta.changed.append(item_id)
        else:
            delta.unchanged += 1
    return merged, delta


def _fields(item: Item) -> tuple[Any, ...]:
    return (item.title, item.text, item.category, json.dumps(dict(item.attributes), sort_keys=True))
