"""Search documents, the mapping, the index template and index names (no server needed)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from lmindexer.catalog.items import Item
from lmindexer.idtable import Candidate, IdSpace, IdTable
from lmindexer.search import (
    InvalidDocumentError,
    build_document,
    document_mapping,
    index_name,
    index_template,
    iter_documents,
    prefix_field,
)
from lmindexer.search.documents import MAX_INDEX_NAME_BYTES, MAX_PREFIX_LEVELS, parse_prefix


def _row(item_id: str, codes=(12, 7, 30), suffix=0, version="rq-kmeans-v1") -> dict:
    return {"item_id": item_id, "codes": list(codes), "suffix": suffix, "sid": None, "snapshot_version": version}


def test_document_from_an_item_carries_the_id_and_one_field_per_prefix_level():
    item = Item(
        item_id="sku-1",
        title="Red shoe",
        text=None,
        category="shoes",
        attributes={"brand": "acme", "price": 9.5},
        updated_at="2024-05-01T12:00:00+00:00",
    )
    doc = build_document(item, _row("sku-1"))
    assert doc == {
        "item_id": "sku-1",
        "title": "Red shoe",
        "category": "shoes",
        "attributes": {"brand": "acme", "price": 9.5},
        "updated_at": "2024-05-01T12:00:00+00:00",
        "sid": "12-7-30-0",
        "codes": [12, 7, 30],
        "suffix": 0,
        "snapshot_version": "rq-kmeans-v1",
        "sid_prefix_1": "12",
        "sid_prefix_2": "12-7",
        "sid_prefix_3": "12-7-30",
    }


def test_document_from_a_dict_and_a_matching_sid():
    row = {**_row("a", codes=(3, 1), suffix=4), "sid": "3-1-4"}
    doc = build_document({"item_id": "a", "text": "plain"}, row)
    assert doc["sid"] == "3-1-4" and doc["sid_prefix_2"] == "3-1" and "sid_prefix_3" not in doc
    assert "title" not in doc and "attributes" not in doc


@pytest.mark.parametrize(
    ("item", "row", "message"),
    [
        ({"title": "no id"}, _row("x"), "has no item_id"),
        ({"item_id": "a", "deleted": True}, _row("a"), "is a tombstone"),
        ({"item_id": "a", "title": "t"}, _row("b"), "was given for item 'a'"),
        ({"item_id": "a", "title": "t"}, {**_row("a"), "sid": "1-2-3-0"}, "does not match codes"),
        ({"item_id": "a", "title": "t"}, _row("a", codes=()), "expected 1 to 8 non-negative codes"),
        ({"item_id": "a", "title": "t"}, _row("a", codes=range(9)), "expected 1 to 8 non-negative codes"),
        ({"item_id": "a", "title": "t"}, _row("a", codes=(1, -2)), "non-negative"),
        ({"item_id": "a", "title": "t"}, _row("a", version=""), "has no snapshot_version"),
        ({"item_id": "a", "title": "t"}, {"item_id": "a", "codes": [1]}, "lacks suffix, snapshot_version"),
    ],
)
def test_bad_input_names_the_item_and_the_problem(item, row, message):
    with pytest.raises(InvalidDocumentError, match=message):
        build_document(item, row)


def test_iter_documents_joins_an_id_table_and_skips_tombstones():
    space = IdSpace("rq-kmeans-v1", "rq-kmeans", (4, 4))
    table, _ = IdTable.empty(space).allocate(
        [Candidate("a", (1, 2), "h1"), Candidate("b", (1, 2), "h2"), Candidate("c", (3, 0), "h3")],
        assigned_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )
    items = [Item("a", title="A"), Item("b", deleted=True), Item("c", text="C")]
    docs = list(iter_documents(items, table))
    assert [d["item_id"] for d in docs] == ["a", "c"]
    assert docs[0]["sid"] == "1-2-0" and docs[1]["sid"] == "3-0-0"
    with pytest.raises(InvalidDocumentError, match="'z' has no row in the ID table"):
        list(iter_documents([Item("z", title="Z")], table))


def test_mapping_declares_keyword_prefix_fields_and_is_strict():
    mapping = document_mapping()
    assert mapping["dynamic"] == "strict"
    properties = mapping["properties"]
    for level in range(1, MAX_PREFIX_LEVELS + 1):
        assert properties[prefix_field(level)] == {"type": "keyword"}
    assert properties["sid"]["type"] == "keyword"
    assert properties["codes"]["type"] == "integer"
    assert properties["title"]["fields"]["keyword"]["type"] == "keyword"
    assert properties["updated_at"]["type"] == "date"
    assert properties["attributes"] == {"type": "object", "dynamic": True}


def test_template_matches_the_alias_indexes_with_distinct_priorities():
    template = index_template("catalog", number_of_shards=2)
    assert template["index_patterns"] == ["catalog-*"]
    assert template["template"]["settings"] == {"index": {"number_of_shards": 2}}
    assert index_template("catalog-eu")["priority"] != template["priority"]


def test_index_names_are_readable_and_distinct_per_snapshot_and_run():
    version = "rq-kmeans-20261201T235229Z-29ede91f"
    run = "manual__2026-12-01T23:42:37.026601+00:00"
    name = index_name("catalog", version, run)
    # The method and the snapshot's time, then a short hash of the full version and run id.
    assert re.fullmatch(r"catalog-rq-kmeans-20261201t235229z-[0-9a-f]{8}", name), name
    assert index_name("catalog", version, run) == name  # a rerun of the run names the same index
    assert index_name("catalog", version, "manual__2026-12-01T23:42:38.026601+00:00") != name
    assert index_name("catalog", "rq-kmeans-20261201T235229Z-0badcafe", run) != name
    # A version of another shape is kept whole.
    assert re.fullmatch(r"catalog-rq-kmeans-v1-[0-9a-f]{8}", index_name("catalog", "rq-kmeans-v1", "run-1"))


def test_index_names_are_valid_for_airflow_run_ids_and_long_inputs():
    name = index_name("catalog", "rq-kmeans-20240501T120000Z-ab12", "scheduled__2024-05-01T00:00:00+00:00")
    assert re.fullmatch(r"catalog-rq-kmeans-20240501t120000z-[0-9a-f]{8}", name), name
    long_a = index_name("catalog", "v" * 300, "run-a")
    long_b = index_name("catalog", "v" * 300, "run-b")
    assert len(long_a.encode()) <= MAX_INDEX_NAME_BYTES and long_a != long_b
    with pytest.raises(InvalidDocumentError, match="run id"):
        index_name("catalog", "v1", "///")


def test_prefix_of_a_sid():
    assert parse_prefix("12-7-30-0", 2) == "12-7"
    with pytest.raises(InvalidDocumentError, match="prefix level must be 1 to 3"):
        parse_prefix("12-7-30-0", 4)
    with pytest.raises(InvalidDocumentError, match="not a semantic ID"):
        parse_prefix("abc", 1)
