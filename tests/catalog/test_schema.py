"""The one Arrow form of the Item contract: a validated drop's staged rows and a catalogue version carry the same
items, read back as the same Items."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lmindexer.catalog.items import Item
from lmindexer.catalog.schema import CATALOG_SCHEMA, ITEM_FIELDS, STAGED_SCHEMA, item_columns, items_from_rows
from lmindexer.catalog.store import catalog_table, items_from_table
from lmindexer.validation.drop import _staged_batch

text = st.one_of(st.none(), st.text(min_size=1, max_size=12))
attribute_values = st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=8), st.booleans(), st.none())
items = st.builds(
    Item,
    item_id=st.text(min_size=1, max_size=10),
    title=text,
    text=text,
    category=text,
    attributes=st.dictionaries(st.text(min_size=1, max_size=6), attribute_values, max_size=4),
    updated_at=st.one_of(st.none(), st.just("2026-01-02T03:04:05Z")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(items, max_size=6, unique_by=lambda item: item.item_id))
def test_staged_rows_and_catalogue_versions_read_back_as_the_same_items(rows):
    staged = items_from_rows(pa.Table.from_batches([_staged_batch(rows)], schema=STAGED_SCHEMA).to_pylist())
    catalogue = items_from_table(catalog_table(rows))
    expected = sorted(rows, key=lambda item: item.item_id)
    assert staged == rows
    assert catalogue == expected
    # Non-ASCII attribute values and keys travel unchanged, and key order does not matter to the contract.
    assert [dict(i.attributes) for i in catalogue] == [dict(i.attributes) for i in expected]


def test_a_staged_row_is_a_catalogue_row_plus_its_tombstone_flag():
    assert STAGED_SCHEMA.names == [*CATALOG_SCHEMA.names, "deleted"]
    assert tuple(CATALOG_SCHEMA.names) == ITEM_FIELDS
    gone = Item("gone", deleted=True)
    assert item_columns([gone], staged=True)["deleted"] == [True]
    assert items_from_rows(pa.Table.from_batches([_staged_batch([gone])]).to_pylist()) == [gone]
