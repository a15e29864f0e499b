"""The current catalogue: every live item's latest fields, one catalogue version per pipeline run.

Drops are applied in order to the previous version: a row with ``deleted: true`` removes its item, any other row
inserts or replaces it. Catalogue tables are written sorted by item_id (so identical inputs give identical files)
with ``attributes`` as JSON text, which :class:`~lmindexer.catalog.readers.CatalogReader` reads back as an object.

A version the pipeline writes is a small manifest (``catalog/<run>/version.json``, :class:`CatalogVersion`) over
parts: the parts of the version it was merged onto, plus one part of the run's own (the rows it added or changed,
and the item_ids it deleted). A run therefore writes what its drops hold, not the whole catalogue again; every
``max_parts`` runs the version is compacted into one part (``catalog/<run>/items.parquet``). An item's row is the
one in the newest part that has it, unless a newer part deleted it. A single catalogue Parquet file (what runs
before manifests wrote, and what tests and tools write) is read as a version of one part.

Rows are validated once, when a drop comes in. A catalogue version this module wrote holds only validated rows, so
the pipeline reads it as a trusted Arrow table (:func:`read_catalog_table`: only the columns and rows a step needs,
no per-row checks; from S3 only the column chunks read, range by range) and merges drops into it column-wise: the
cost that grows with the catalogue is Arrow's, not a Python object per item.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmindexer.catalog.items import Item
from lmindexer.catalog.readers import CatalogReader
from lmindexer.catalog.schema import CATALOG_SCHEMA, item_columns, items_from_rows
from lmindexer.errors import UserError
from lmindexer.layout import join_uri
from lmindexer.storage.parquet import prefetch_columns, write_parquet
from lmindexer.storage.s3 import local_copy, open_random_access, read_bytes, write_bytes

SCHEMA = CATALOG_SCHEMA  # the name this module has always exported


def read_catalog(location: str | os.PathLike[str]) -> dict[str, Item]:
    """item_id -> Item for a catalogue version (:func:`is_catalog_version`) or any valid catalogue file."""
    if is_catalog_version(location):
        return {item.item_id: item for item in items_from_table(read_catalog_table(location))}
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


VERSION_FORMAT = "lmindexer.catalog-version"
VERSION_NAME = "version.json"
PART_NAME = "part.parquet"
REMOVED_NAME = "removed.parquet"
COMPACTED_NAME = "items.parquet"
_REMOVED_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False)])


class CatalogPart(BaseModel):
    """One part of a catalogue version: rows (catalogue Parquet, sorted by item_id) and the item_ids it removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: str = Field(description="catalogue Parquet file: the rows this part adds or replaces")
    row_count: int = Field(ge=0)
    removed: str | None = Field(None, description="Parquet file of item_ids this part deletes (None: none)")
    removed_count: int = Field(0, ge=0)


class CatalogVersion(BaseModel):
    """A catalogue version as parts, oldest first: an item's row comes from the newest part that has it, unless a
    newer part removed it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["lmindexer.catalog-version"] = VERSION_FORMAT
    format_version: Literal[1] = 1
    items: int = Field(ge=0, description="live items in the version")
    parts: list[CatalogPart]


def is_catalog_version(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a catalogue version manifest (rather than a catalogue file)."""
    return str(location).endswith(".json")


def load_catalog_version(location: str | os.PathLike[str]) -> CatalogVersion:
    """The version at ``location``: a manifest, or a single catalogue Parquet file read as a version of one part."""
    if not is_catalog_version(location):
        with open_random_access(location) as handle:
            rows = _catalog_file(location, handle).metadata.num_rows
        return CatalogVersion(items=rows, parts=[CatalogPart(rows=str(location), row_count=rows)])
    try:
        return CatalogVersion.model_validate_json(read_bytes(location))
    except ValidationError as exc:
        raise UserError(f"{location} is not a catalogue version manifest: {exc}") from exc


def read_catalog_table(
    location: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    item_ids: Iterable[str] | None = None,
    ordered: bool = True,
) -> pa.Table:
    """A catalogue version (or a catalogue file written by :func:`write_catalog`), as Arrow, sorted by item_id:
    trusted (its rows were validated when their drop came in), so nothing is checked row by row. ``columns``: only
    those; ``item_ids``: only those rows; ``ordered=False``: rows in any order (a version of several parts is then
    not sorted, which is most of the cost of reading a column of a large one). Anything that is not such a version
    or file is an error naming it."""
    wanted = list(columns) if columns is not None else None
    keep = None if item_ids is None else pa.array(sorted(set(item_ids)), type=pa.string())
    if not is_catalog_version(location):
        return _read_part_rows(location, wanted, keep)
    version = load_catalog_version(location)
    read = None if wanted is None else list(dict.fromkeys(["item_id", *wanted]))
    pieces: list[pa.Table] = []
    superseded = pa.array([], type=pa.string())  # item_ids a newer part holds or removed
    for older_parts, part in reversed(list(enumerate(version.parts))):
        rows = _read_part_rows(part.rows, read, keep)
        if len(superseded):
            rows = rows.filter(pc.invert(pc.is_in(rows.column("item_id"), value_set=superseded)))
        pieces.append(rows)
        if not older_parts:
            break  # nothing older for the oldest part's ids to supersede (at 1M items: half a second)
        newer = [rows.column("item_id").combine_chunks()]
        if part.removed is not None:
            newer.append(_read_part_rows(part.removed, None, keep, schema=_REMOVED_SCHEMA).column("item_id"))
        superseded = pa.concat_arrays([superseded, *(pc.unique(ids) for ids in newer if len(ids))])
    contributing = [piece for piece in pieces if piece.num_rows]
    if len(contributing) <= 1:
        table = contributing[0] if contributing else pieces[0]
    else:
        table = pa.concat_tables(contributing)
        if ordered:
            table = table.take(pc.sort_indices(table, sort_keys=[("item_id", "ascending")]))
    return table.select(wanted) if wanted is not None else table


def _read_part_rows(
    location: str | os.PathLike[str], columns: list[str] | None, keep: pa.Array | None, *, schema: pa.Schema = SCHEMA
) -> pa.Table:
    """One catalogue file's ``columns`` (all: None), rows in ``keep`` only (None: all). With ``keep``, the item_id
    column is read first and the other columns only when some row is wanted."""
    with open_random_access(location) as handle:
        parquet = _catalog_file(location, handle, schema)
        if keep is None:
            prefetch_columns(handle, parquet, columns or schema.names)
            return parquet.read(columns=columns)
        prefetch_columns(handle, parquet, ["item_id"])
        hit = pc.is_in(parquet.read(columns=["item_id"]).column("item_id"), value_set=keep)
        if not pc.any(hit).as_py():
            return schema.empty_table().select(columns) if columns is not None else schema.empty_table()
        read = columns if columns is None or "item_id" in columns else [*columns, "item_id"]
        prefetch_columns(handle, parquet, read or schema.names)
        table = parquet.read(columns=read).filter(hit)
    return table.select(columns) if columns is not None else table


def _catalog_file(location: str | os.PathLike[str], handle: Any, schema: pa.Schema = SCHEMA) -> pq.ParquetFile:
    try:
        parquet = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{location} is not a readable catalogue version: {exc}") from exc
    if not parquet.schema_arrow.remove_metadata().equals(schema):
        raise UserError(f"{location} is not a catalogue version written by the pipeline:\n{parquet.schema_arrow}")
    return parquet


@contextmanager
def catalog_file(location: str | os.PathLike[str]) -> Iterator[Path]:
    """A local catalogue Parquet file holding the whole version at ``location``, for tools that read a file (a
    training subprocess, the CLI): the file itself when the version is one, else the parts resolved into a
    temporary file, removed after the block."""
    if not is_catalog_version(location):
        with local_copy(location, suffix=".parquet") as path:
            yield path
        return
    with tempfile.TemporaryDirectory(prefix="lmindexer-catalog-") as tmp:
        path = Path(tmp) / "items.parquet"
        write_parquet(read_catalog_table(location), path)
        yield path


@dataclass(frozen=True)
class WrittenVersion:
    """What :func:`merge_into_version` wrote: the version's manifest, its size, and the rows the drops added or
    changed (sorted by item_id)."""

    uri: str
    items: int
    parts: int
    compacted: bool
    upserts: pa.Table


def merge_into_version(
    previous: str | os.PathLike[str] | None,
    drops: Sequence[Sequence[Item]],
    destination: str,
    *,
    max_parts: int,
) -> tuple[WrittenVersion, CatalogDelta]:
    """Apply ``drops`` (in order) to the version at ``previous`` (``None``: an empty catalogue) and write the result
    under the ``destination`` prefix as a new version: the previous version's parts plus one part of the drops'
    changes, or, when that would make more than ``max_parts`` parts, one compacted part. Only the rows the drops
    touch are read from the previous version. The same catalogue as :func:`merge_catalog` (a property test checks)."""
    if max_parts < 1:
        raise UserError(f"a catalogue version needs at least one part; max_parts is {max_parts}")
    touched = sorted({item.item_id for drop in drops for item in drop})
    base = CatalogVersion(items=0, parts=[]) if previous is None else load_catalog_version(previous)
    before_rows = SCHEMA.empty_table() if previous is None else read_catalog_table(previous, item_ids=touched)
    merged, delta = apply_drops({item.item_id: item for item in items_from_table(before_rows)}, drops)
    upserts = catalog_table(merged[item_id] for item_id in delta.new + delta.changed)
    items = base.items + len(delta.new) - len(delta.deleted)
    compact = len(base.parts) + 1 > max_parts
    if compact:
        whole, _ = merge_catalog(previous, drops)
        rows_uri = join_uri(destination, COMPACTED_NAME)
        write_parquet(whole, rows_uri)
        parts = [CatalogPart(rows=rows_uri, row_count=whole.num_rows)]
    elif upserts.num_rows or delta.deleted:
        rows_uri = join_uri(destination, PART_NAME)
        write_parquet(upserts, rows_uri)
        removed_uri = None
        if delta.deleted:
            removed_uri = join_uri(destination, REMOVED_NAME)
            removed = pa.table({"item_id": pa.array(delta.deleted, pa.string())}, schema=_REMOVED_SCHEMA)
            write_parquet(removed, removed_uri)
        part = CatalogPart(rows=rows_uri, row_count=upserts.num_rows, removed=removed_uri,
                           removed_count=len(delta.deleted))  # fmt: skip
        parts = [*base.parts, part]
    else:  # nothing changed: the same parts
        parts = list(base.parts)
    if not parts:  # an empty first version still names a (empty) part, so every version has one to read
        rows_uri = join_uri(destination, PART_NAME)
        write_parquet(upserts, rows_uri)
        parts = [CatalogPart(rows=rows_uri, row_count=0)]
    version = CatalogVersion(items=items, parts=parts)
    uri = join_uri(destination, VERSION_NAME)
    write_bytes(version.model_dump_json(indent=1).encode(), uri)
    return WrittenVersion(uri=uri, items=items, parts=len(parts), compacted=compact, upserts=upserts), delta


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
    """Apply ``drops`` (in order) to the catalogue version at ``previous`` (``None``: an empty catalogue) and
    return the whole result as one table (what a compacted version holds): the same as :func:`apply_drops` on every
    item, written out by :func:`catalog_table`, but only the rows the drops touch become items; the untouched rest
    of the catalogue stays in Arrow."""
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
