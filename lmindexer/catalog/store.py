"""The current catalogue: every live item's latest fields, kept as one Parquet file per pipeline run.

Drops are applied in order to the previous version: a row with ``deleted: true`` removes its item, any other row
inserts or replaces it. The result is written sorted by item_id (so identical inputs give identical files) with
``attributes`` as JSON text, which :class:`~lmindexer.catalog.readers.CatalogReader` reads back as an object.

Rows are validated once, when a drop comes in. A catalogue version this module wrote holds only validated rows, so
the pipeline reads it as a trusted Arrow table (:func:`read_catalog_table`: only the columns and rows a step needs,
no per-row checks) and merges drops into it column-wise (:func:`merge_catalog`): the cost that grows with the
catalogue is Arrow's, not a Python object per item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmindexer.catalog.items import Item
from lmindexer.catalog.readers import CatalogReader
from lmindexer.catalog.schema import CATALOG_SCHEMA, item_columns, items_from_rows
from lmindexer.errors import UserError
from lmindexer.storage.parquet import write_parquet
from lmindexer.storage.s3 import local_copy

SCHEMA = CATALOG_SCHEMA  # the name this module has always exported


def read_catalog(location: str | os.PathLike[str]) -> dict[str, Item]:
    """item_id -> Item for a catalogue written by :func:`write_catalog` (or any valid catalogue file)."""
    return {item.item_id: item for batch in CatalogReader(location, strict=True) for item in batch}


def catalog_table(items: Iterable[Item]) -> pa.Table:
    """Live items as a catalogue table sorted by item_id (tombstones left out)."""
    rows = sorted((item for item in items if not item.deleted), key=lambda item: item.item_id)
    return pa.Table.from_pydict(item_columns(rows), schema=SCHEMA)


def write_catalog(items: Iterable[Item], destination: str | os.PathLike[str]) -> int:
    """Write live items as Parquet sorted by item_id; returns how many were written."""
    table = catalog_table(items)
    write_parquet(table, destination)
    return table.num_rows


def read_catalog_table(
    location: str | os.PathLike[str], *, columns: Sequence[str] | None = None, item_ids: Iterable[str] | None = None
) -> pa.Table:
    """A catalogue version written by :func:`write_catalog`, as Arrow: trusted (its rows were validated when their
    drop came in), so nothing is checked row by row. ``columns``: only those; ``item_ids``: only those rows (in
    the file's item_id order). Anything that is not such a file is an error naming it."""
    wanted = list(columns) if columns is not None else None
    with local_copy(location, suffix=".parquet") as path:
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{location} is not a readable catalogue version: {exc}") from exc
        if not parquet.schema_arrow.remove_metadata().equals(SCHEMA):
            raise UserError(f"{location} is not a catalogue version written by the pipeline:\n{parquet.schema_arrow}")
        read = wanted if wanted is None or "item_id" in wanted or item_ids is None else [*wanted, "item_id"]
        table = parquet.read(columns=read)
    if item_ids is not None:
        keep = pa.array(sorted(set(item_ids)), type=pa.string())
        table = table.filter(pc.is_in(table.column("item_id"), value_set=keep))
    return table.select(wanted) if wanted is not None else table


def items_from_table(table: pa.Table) -> list[Item]:
    """The rows of a catalogue table (all of :data:`SCHEMA`'s columns) as items."""
    return items_from_rows(table.to_pylist())


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


def merge_catalog(
    previous: str | os.PathLike[str] | None, drops: Sequence[Sequence[Item]]
) -> tuple[pa.Table, CatalogDelta]:
    """Apply ``drops`` (in order) to the catalogue version at ``previous`` (``None``: an empty catalogue): the same
    result as :func:`apply_drops` on every item, written out by :func:`catalog_table`, but only the rows the drops
    touch become items; the untouched rest of the catalogue stays in Arrow."""
    touched = sorted({item.item_id for drop in drops for item in drop})
    if previous is None:
        rest, before = SCHEMA.empty_table(), {}
    else:
        stored = read_catalog_table(previous)
        hit = pc.is_in(stored.column("item_id"), value_set=pa.array(touched, type=pa.string()))
        before = {item.item_id: item for item in items_from_table(stored.filter(hit))}
        rest = stored.filter(pc.invert(hit))
    merged, delta = apply_drops(before, drops)
    combined = pa.concat_tables([rest.replace_schema_metadata(None), catalog_table(merged.values())])
    return combined.take(pc.sort_indices(combined, sort_keys=[("item_id", "ascending")])), delta


def _fields(item: Item) -> tuple[Any, ...]:
    return (item.title, item.text, item.category, json.dumps(dict(item.attributes), sort_keys=True))
