"""The one Arrow form of the Item contract (:class:`~lmindexer.catalog.items.Item`): its fields, the schema of a
catalogue version and of a validated drop's staged rows, and the one way items become those columns and back.

Every module that writes or reads items as Arrow (the catalogue store, drop validation, the search documents, the
text templates, the input suite) takes the field names and schemas from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from lmindexer.catalog.items import Item

# The fields of a live item, in the order of the Arrow schemas; ``deleted`` exists only in a drop's staged rows.
ITEM_FIELDS = ("item_id", "title", "text", "category", "attributes", "updated_at")
# The item's own strings: what a text template may name, and what the row rules check as text.
STRING_FIELDS = ("item_id", "title", "text", "category")

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("category", pa.string()),
        pa.field("attributes", pa.string()),  # a JSON object (keys sorted), or null for none
        pa.field("updated_at", pa.string()),  # UTC ISO-8601, as normalised by the row rules
    ]
)
STAGED_SCHEMA = CATALOG_SCHEMA.append(pa.field("deleted", pa.bool_(), nullable=False))


def attributes_json(item: Item) -> str | None:
    return json.dumps(dict(item.attributes), sort_keys=True, ensure_ascii=False) if item.attributes else None


def item_columns(items: Sequence[Item], *, staged: bool = False) -> dict[str, list[Any]]:
    """The columns of :data:`CATALOG_SCHEMA` (``staged``: of :data:`STAGED_SCHEMA`) for ``items``, in order."""
    columns: dict[str, list[Any]] = {
        "item_id": [i.item_id for i in items],
        "title": [i.title for i in items],
        "text": [i.text for i in items],
        "category": [i.category for i in items],
        "attributes": [attributes_json(i) for i in items],
        "updated_at": [i.updated_at for i in items],
    }
    if staged:
        columns["deleted"] = [i.deleted for i in items]
    return columns


def items_from_rows(rows: Iterable[dict[str, Any]]) -> list[Item]:
    """Items from rows of either schema (trusted: they were validated when they came in)."""
    return [
        Item(
            row["item_id"],
            row["title"],
            row["text"],
            row["category"],
            json.loads(row["attributes"]) if row["attributes"] else {},
            row["updated_at"],
            bool(row.get("deleted", False)),
        )
        for row in rows
    ]


__all__ = ["CATALOG_SCHEMA", "ITEM_FIELDS", "STAGED_SCHEMA", "STRING_FIELDS", "attributes_json", "item_columns",
           "items_from_rows"]  # fmt: skip
