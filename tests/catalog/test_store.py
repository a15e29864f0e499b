from __future__ import annotations

from lmindexer.catalog.items import Item
from lmindexer.catalog.store import apply_drops, read_catalog, write_catalog


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
