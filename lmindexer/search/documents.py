"""Search documents, their mapping, the index template and index names.

One document per item, ``_id`` = ``item_id``. Besides the item's own fields it carries the semantic ID as ``sid``
(keyword), ``codes`` (integers), ``suffix``, ``snapshot_version`` and one keyword field per prefix level:
``sid_prefix_k`` holds the first k codes joined by ``-`` (``"12-7"`` for k = 2), so "items sharing a prefix" is one
exact ``term`` query on a keyword field, with the user's value in the query body, never in query-string syntax.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from lmindexer.catalog.items import Item
from lmindexer.catalog.schema import ITEM_FIELDS
from lmindexer.errors import IdTableError
from lmindexer.idtable import IdTable, format_sid, parse_sid, sid_prefix
from lmindexer.methods import MAX_LEVELS
from lmindexer.search.errors import InvalidDocumentError

MAPPING_VERSION = 1
# The mapping is strict, so a prefix field is declared for every level an indexer may learn.
MAX_PREFIX_LEVELS = MAX_LEVELS
MAX_INDEX_NAME_BYTES = 255
ID_FIELDS = ("item_id", "codes", "suffix", "sid", "snapshot_version")
# The analysed text fields a free-text query searches, with their boosts: a title match says more than a body match.
TEXT_FIELDS = {"title": 2.0, "text": 1.0}
META_KEY = "lmindexer"
_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")
# A snapshot version as index names show it: <method>-<UTC time>, without the content digest that ends it.
_STAMPED_VERSION = re.compile(r"^(?P<readable>.+-[0-9]{8}t[0-9]{6}z)-[0-9a-f]+$")


def prefix_field(level: int) -> str:
    """The keyword field holding the first ``level`` codes."""
    if not 1 <= level <= MAX_PREFIX_LEVELS:
        raise InvalidDocumentError(f"prefix level must be between 1 and {MAX_PREFIX_LEVELS}, got {level}")
    return f"sid_prefix_{level}"


def document_mapping() -> dict[str, Any]:
    """The mapping of every search index.

    Top-level fields are strict, so a misspelt or unexpected field fails loudly per document instead of quietly
    growing the mapping; ``attributes`` stays dynamic because catalogues differ in what they carry there.
    """
    keyword = {"type": "keyword"}
    properties: dict[str, Any] = {
        "item_id": keyword,
        "title": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
        "text": {"type": "text"},
        "category": keyword,
        "attributes": {"type": "object", "dynamic": True},
        "updated_at": {"type": "date"},
        "sid": keyword,
        "codes": {"type": "integer"},
        "suffix": {"type": "long"},
        "snapshot_version": keyword,
    }
    for level in range(1, MAX_PREFIX_LEVELS + 1):
        properties[prefix_field(level)] = keyword
    return {"dynamic": "strict", "properties": properties}


def index_settings(number_of_shards: int | None = None, number_of_replicas: int | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if number_of_shards is not None:
        settings["number_of_shards"] = number_of_shards
    if number_of_replicas is not None:
        settings["number_of_replicas"] = number_of_replicas
    return {"index": settings} if settings else {}


def template_name(alias: str) -> str:
    return f"lmindexer-{alias}"


def template_priority(alias: str) -> int:
    # Composable templates with overlapping patterns may not share a priority. "<a>-*" and "<b>-*" overlap only when
    # one alias is a prefix of the other, i.e. when their lengths differ; the offset stays clear of built-in
    # templates (Elasticsearch ships its own at priority 100).
    return 200 + len(alias)


def index_template(
    alias: str, *, number_of_shards: int | None = None, number_of_replicas: int | None = None
) -> dict[str, Any]:
    """The composable index template (body of ``PUT _index_template/<name>``) for indexes of ``alias``."""
    template: dict[str, Any] = {"mappings": document_mapping()}
    settings = index_settings(number_of_shards, number_of_replicas)
    if settings:
        template["settings"] = settings
    return {
        "index_patterns": [f"{alias}-*"],
        "priority": template_priority(alias),
        "template": template,
        "_meta": {"managed_by": "lmindexer", "alias": alias, "mapping_version": MAPPING_VERSION},
    }


def _name_part(value: str, what: str) -> str:
    part = _NAME_UNSAFE.sub("-", str(value).lower()).strip("-")
    part = re.sub(r"-{2,}", "-", part)
    if not part or part in {".", ".."}:
        raise InvalidDocumentError(f"{what} {value!r} has no characters usable in an index name")
    return part


def index_name(alias: str, version: str, run_id: str) -> str:
    """``<alias>-<snapshot>-<hash>``, e.g. ``catalog-rq-kmeans-20261201t235229z-01cf5c73``: readable, and distinct
    for every (snapshot version, run id).

    A snapshot version ``<method>-<UTC time>-<content digest>`` is shown without its digest, and the run id (an
    Airflow one such as ``manual__2026-12-01T23:42:37.026601+00:00`` is long) not at all: both are recorded in the
    index's ``_meta``. The last 8 hex characters hash the full version and run id, so a rerun of a run names the same
    index and distinct runs name distinct ones. Lowercase, characters outside ``[a-z0-9._-]`` become ``-``, at most
    255 bytes. Indexes named by earlier releases (``<alias>-<version>-<run>``) carry the same ``_meta`` record, so
    listing, pruning and rollback treat them alike.
    """
    readable = _name_part(version, "version")
    _name_part(run_id, "run id")  # a run id with no usable character is refused
    stamped = _STAMPED_VERSION.match(readable)
    if stamped:
        readable = stamped["readable"]
    digest = hashlib.sha256(f"{version}\n{run_id}".encode()).hexdigest()[:8]
    room = MAX_INDEX_NAME_BYTES - len(alias.encode()) - len(digest) - 2
    return f"{alias}-{readable[:room].rstrip('-')}-{digest}"


def build_document(item: Item | Mapping[str, Any], id_row: Mapping[str, Any]) -> dict[str, Any]:
    """The search document of one item and its ID-table row (``item_id``, ``codes``, ``suffix``, ``sid``,
    ``snapshot_version``). Empty optional fields are left out. A tombstone has no document: publish it as a delete.
    """
    fields = item.to_dict() if isinstance(item, Item) else dict(item)
    item_id = fields.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise InvalidDocumentError(f"item has no item_id: {sorted(fields)!r}")
    if fields.get("deleted") is True:
        raise InvalidDocumentError(f"item {item_id!r} is a tombstone; publish it as a delete, not a document")
    missing = [name for name in ID_FIELDS if name not in id_row and name != "sid"]
    if missing:
        raise InvalidDocumentError(f"ID row of {item_id!r} lacks {', '.join(missing)}")
    if id_row["item_id"] != item_id:
        raise InvalidDocumentError(f"ID row of {id_row['item_id']!r} was given for item {item_id!r}")
    try:
        codes = [int(c) for c in id_row["codes"]]
        suffix = int(id_row["suffix"])
    except (TypeError, ValueError):
        raise InvalidDocumentError(f"ID row of {item_id!r}: codes and suffix must be integers") from None
    if not 1 <= len(codes) <= MAX_PREFIX_LEVELS or any(c < 0 for c in codes) or suffix < 0:
        raise InvalidDocumentError(
            f"ID row of {item_id!r}: expected 1 to {MAX_PREFIX_LEVELS} non-negative codes and a non-negative "
            f"suffix, got codes {codes} and suffix {suffix}"
        )
    sid = format_sid(codes, suffix)
    if id_row.get("sid") not in (None, sid):
        raise InvalidDocumentError(f"ID row of {item_id!r}: sid {id_row['sid']!r} does not match codes {codes}")
    version = id_row["snapshot_version"]
    if not isinstance(version, str) or not version:
        raise InvalidDocumentError(f"ID row of {item_id!r} has no snapshot_version")

    document: dict[str, Any] = {"item_id": item_id}
    for name in ITEM_FIELDS[1:]:
        value = fields.get(name)
        if name == "attributes":
            value = dict(value) if value else None
        if value is not None and value != "":
            document[name] = value
    document.update({"sid": sid, "codes": codes, "suffix": suffix, "snapshot_version": version})
    for level in range(1, len(codes) + 1):
        document[prefix_field(level)] = sid_prefix(codes, level)
    return document


def id_rows(ids: IdTable | Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    """ID-table rows by item_id, read column-wise once (looking rows up one at a time is slow on big tables)."""
    if not isinstance(ids, IdTable):
        return ids
    rows = ids.table.select(list(ID_FIELDS)).to_pylist()
    return {row["item_id"]: row for row in rows}


def iter_documents(
    items: Iterable[Item | Mapping[str, Any]], ids: IdTable | Mapping[str, Mapping[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Documents of the live items, joined to their ID rows. Tombstones are skipped (collect their ids for
    deletes); an item without an ID row is an error, because publishing it would lose its ID."""
    rows = id_rows(ids)
    for item in items:
        fields = item.to_dict() if isinstance(item, Item) else item
        if fields.get("deleted") is True:
            continue
        item_id = fields.get("item_id")
        row = rows.get(item_id) if isinstance(item_id, str) else None
        if row is None:
            raise InvalidDocumentError(f"item {item_id!r} has no row in the ID table; assign IDs before publishing")
        yield build_document(item, row)


def parse_prefix(sid: str, level: int) -> str:
    """The level-``level`` prefix of a semantic ID string, checked against the ID's length."""
    try:
        codes, _ = parse_sid(sid)
    except IdTableError as exc:
        raise InvalidDocumentError(str(exc)) from None
    if not 1 <= level <= len(codes):
        raise InvalidDocumentError(f"{sid!r} has {len(codes)} code levels; prefix level must be 1 to {len(codes)}")
    prefix_field(level)
    return sid_prefix(codes, level)
