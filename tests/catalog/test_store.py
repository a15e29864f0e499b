from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmindexer.catalog.items import Item
from lmindexer.catalog.store import (
    apply_drops,
    catalog_table,
    items_from_table,
    merge_catalog,
    read_catalog,
    read_catalog_table,
    write_catalog,
)
from lmindexer.errors import UserError
from lmindexer.storage.parquet import write_parquet


def test_write_read_round_trip_is_sorted_and_deterministic(tmp_path):
    items = [Item("b", title="B", attributes={"x": 1}), Item("a", text="A"), Item("gone", text="g", deleted=True)]
    assert write_catalog(items, tmp_path / "one.parquet") == 2
    write_catalog(items[::-1], tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    catalogue = read_catalog(tmp_path / "one.parquet")
    assert list(catalogue) == ["a", "b"]
    assert catalogue["b"].attributes == {"x": 1}


def test_apply_drops_reports_new_changed_deleted():
    current = {"a": Item("a", text="A"), "b": Item("b", text="B"), "c": Item("c", text="C")}
    first = [Item("a", text="A"), Item("b", text="B2"), Item("d", text="D"), Item("zz", deleted=True)]
    second = [Item("c", deleted=True), Item("e", text="E"), Item("e", text="E2")]
    merged, delta = apply_drops(current, [first, second])
    assert sorted(merged) == ["a", "b", "d", "e"]
    assert merged["e"].text == "E2"
    assert delta.counts() == {"new": 2, "changed": 1, "deleted": 1, "unchanged": 1, "deletes_of_unknown_items": 1}
    assert (delta.new, delta.changed, delta.deleted) == (["d", "e"], ["b"], ["c"])


def test_item_added_then_deleted_in_one_run_leaves_no_trace():
    merged, delta = apply_drops({}, [[Item("x", text="X")], [Item("x", deleted=True)]])
    assert merged == {}
    assert delta.counts()["new"] == 0 and delta.counts()["deleted"] == 0


ids = st.sampled_from([f"item-{n}" for n in range(8)] + ["é-1", "z"])
texts = st.sampled_from(["A", "B", "C"])
attrs = st.sampled_from([{}, {"class": "x"}, {"class": "y", "n": 2}])
rows = st.builds(
    lambda item_id, text, attributes, deleted: (
        Item(item_id, deleted=True) if deleted else Item(item_id, title=text.lower(), text=text, attributes=attributes)
    ),
    ids,
    texts,
    attrs,
    st.booleans(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    previous=st.lists(rows, max_size=10, unique_by=lambda item: item.item_id),
    drops=st.lists(st.lists(rows, max_size=6), max_size=3),
)
def test_merging_column_wise_gives_the_file_and_delta_of_merging_item_by_item(tmp_path, previous, drops):
    """The pipeline merges drops into the stored catalogue in Arrow (only touched rows become items); the file
    and the delta must be exactly those of applying the drops to every item and writing the result."""
    stored = tmp_path / "previous.parquet"
    write_catalog(previous, stored)
    expected, expected_delta = apply_drops(read_catalog(stored), drops)
    write_catalog(expected.values(), tmp_path / "expected.parquet")
    merged, delta = merge_catalog(stored, drops)
    write_parquet(merged, tmp_path / "merged.parquet")
    assert (tmp_path / "merged.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert (delta.counts(), delta.new, delta.changed, delta.deleted) == (
        expected_delta.counts(),
        expected_delta.new,
        expected_delta.changed,
        expected_delta.deleted,
    )
    first, _ = merge_catalog(None, drops)
    assert first.equals(catalog_table(apply_drops({}, drops)[0].values()))


def test_a_catalogue_version_is_read_as_trusted_columns_and_rows(tmp_path):
    location = tmp_path / "items.parquet"
    write_catalog([Item("b", text="B", category="k", attributes={"class": "x"}), Item("a", text="A")], location)
    whole = read_catalog_table(location)
    assert items_from_table(whole) == list(read_catalog(location).values())
    assert read_catalog_table(location, columns=["category"]).column_names == ["category"]
    picked = read_catalog_table(location, columns=["text"], item_ids=["b", "missing"])
    assert picked.to_pylist() == [{"text": "B"}]


def test_a_file_that_is_not_a_catalogue_version_is_refused_by_the_trusted_read(tmp_path):
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "text": ["A"]}), other)
    with pytest.raises(UserError, match="not a catalogue version written by the pipeline"):
        read_catalog_table(other)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a readable catalogue version"):
        read_catalog_table(tmp_path / "broken.parquet")
