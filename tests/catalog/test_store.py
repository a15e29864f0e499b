from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmindexer.catalog.items import Item
from lmindexer.catalog.store import (
    CatalogVersion,
    apply_drops,
    catalog_file,
    catalog_table,
    items_from_table,
    load_catalog_version,
    merge_catalog,
    merge_into_version,
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    previous=st.lists(rows, max_size=10, unique_by=lambda item: item.item_id),
    runs=st.lists(st.lists(st.lists(rows, max_size=5), max_size=2), min_size=1, max_size=5),
    max_parts=st.integers(1, 4),
)
def test_a_version_of_parts_holds_exactly_the_catalogue_of_applying_every_drop(tmp_path, previous, runs, max_parts):
    """Run after run, each writing only its drops' rows as a part (compacting every ``max_parts``): the version
    read back, whole, by columns, by item_ids and unordered, is the catalogue of applying every drop to every item,
    and each run's delta is the item-by-item merge's."""
    import uuid

    root = tmp_path / uuid.uuid4().hex
    write_catalog(previous, root / "legacy.parquet")  # a version written before manifests: one file
    location, expected = str(root / "legacy.parquet"), {item.item_id: item for item in previous if not item.deleted}
    for number, drops in enumerate(runs):
        expected, expected_delta = apply_drops(expected, drops)
        written, delta = merge_into_version(location, drops, str(root / f"run-{number}"), max_parts=max_parts)
        location = written.uri
        assert read_catalog_table(location).equals(catalog_table(expected.values()))
        assert (delta.counts(), delta.new, delta.changed, delta.deleted) == (
            expected_delta.counts(),
            expected_delta.new,
            expected_delta.changed,
            expected_delta.deleted,
        )
        assert written.items == len(expected) == load_catalog_version(location).items
        assert written.parts <= max_parts
        assert written.upserts.equals(catalog_table(expected[i] for i in delta.new + delta.changed))
    wanted = [*sorted(expected)[::2], "not-there"]
    assert read_catalog_table(location, columns=["text"], item_ids=wanted).equals(
        catalog_table(expected[i] for i in wanted if i in expected).select(["text"])
    )
    unordered = read_catalog_table(location, columns=["item_id", "category"], ordered=False)
    assert unordered.sort_by("item_id").equals(catalog_table(expected.values()).select(["item_id", "category"]))
    with catalog_file(location) as path:
        assert read_catalog(path) == dict(sorted(expected.items()))


def test_a_run_writes_only_its_drops_rows_and_compacts_after_max_parts(tmp_path):
    """The point of parts: a run's new part holds the rows its drops added or changed and the ids they deleted, not
    the catalogue; the manifest lists the earlier parts unchanged; the run that would exceed ``max_parts`` writes
    one compacted part instead."""
    base = [Item(f"item-{n:03d}", text=f"T{n}") for n in range(100)]
    first, _ = merge_into_version(None, [base], str(tmp_path / "r0"), max_parts=3)
    drop = [Item("item-005", text="changed"), Item("new-1", text="N"), Item("item-007", deleted=True)]
    second, delta = merge_into_version(first.uri, [drop], str(tmp_path / "r1"), max_parts=3)
    version = load_catalog_version(second.uri)
    assert [part.rows for part in version.parts] == [
        *(part.rows for part in load_catalog_version(first.uri).parts),
        str(tmp_path / "r1" / "part.parquet"),
    ]
    assert pq.read_table(version.parts[-1].rows).column("item_id").to_pylist() == ["item-005", "new-1"]
    assert pq.read_table(version.parts[-1].removed).column("item_id").to_pylist() == ["item-007"]
    assert (version.items, delta.counts()["new"], delta.counts()["changed"]) == (100, 1, 1)
    third, _ = merge_into_version(second.uri, [[Item("new-2", text="M")]], str(tmp_path / "r2"), max_parts=3)
    assert third.parts == 3 and not third.compacted
    fourth, _ = merge_into_version(third.uri, [[Item("new-3", text="O")]], str(tmp_path / "r3"), max_parts=3)
    assert fourth.compacted and load_catalog_version(fourth.uri).parts[0].rows == str(tmp_path / "r3" / "items.parquet")
    assert pq.read_table(tmp_path / "r3" / "items.parquet").num_rows == 102
    assert read_catalog(fourth.uri)["item-005"].text == "changed" and "item-007" not in read_catalog(fourth.uri)
    unchanged, _ = merge_into_version(fourth.uri, [[Item("new-3", text="O")]], str(tmp_path / "r4"), max_parts=3)
    assert load_catalog_version(unchanged.uri).parts == load_catalog_version(fourth.uri).parts


def test_a_version_manifest_that_is_not_one_is_refused_naming_it(tmp_path):
    bad = tmp_path / "version.json"
    bad.write_text('{"format": "lmindexer.catalog-version", "format_version": 1, "items": 1}')
    with pytest.raises(UserError, match=f"{bad} is not a catalogue version manifest"):
        read_catalog_table(bad)
    good = CatalogVersion(items=0, parts=[])
    assert good.format == "lmindexer.catalog-version"
