"""The run summary `lmindexer pipeline status` prints: counts that say what they count."""

from __future__ import annotations

import datetime as dt

from lmindexer.idtable import Candidate, IdSpace, IdTable
from lmindexer.pipeline.summary import catalogue_counts, prefix_lookups, render_summary


def _merge_record(**counts: int) -> dict:
    return {"catalog_uri": "s3://b/catalog/run/items.parquet", "delta_uri": "s3://b/staged/run/delta.parquet", **counts}


def _summary(catalogue: dict, quality: dict | None = None) -> dict:
    return {
        "published": True,
        "run_id": "manual__2026-12-02",
        "snapshot_version": "rq-kmeans-20261201T235229Z-29ede91f",
        "drops": [],
        "catalogue": catalogue,
        "decision": {"mode": "apply", "reason": "11.5% added since the last retrain"},
        "ids": {"rows_before": 9030, "rows_after": 10033, "newly_assigned": 1003},
        "quality": quality,
        "stability": None,
        "publish": {"mode": "incremental", "index": "catalog-rq-kmeans-20261201t235229z-01cf5c73"},
    }


def test_an_incremental_run_counts_the_existing_items_it_left_untouched():
    # 9,030 items before; the drop adds 1,003, changes 25, deletes 25 and repeats 2 items as they were.
    counts = catalogue_counts(
        _merge_record(items=10008, previous_items=9030, new=1003, changed=25, deleted=25, unchanged=2)
    )
    assert counts["untouched"] == 8978
    assert counts["items"] == counts["new"] + counts["changed"] + counts["unchanged"] + counts["untouched"]
    line = next(line for line in render_summary(_summary(counts)).splitlines() if "catalogue" in line)
    assert line.strip() == (
        "catalogue: 10008 live items = 1003 new + 25 changed + 2 re-sent unchanged by the drops + 8978 existing "
        "items the drops did not touch; 25 deleted"
    )


def test_a_first_run_lists_only_new_items():
    counts = catalogue_counts(_merge_record(items=9030, previous_items=0, new=9030, changed=0, deleted=0, unchanged=0))
    text = render_summary(_summary(counts))
    assert "catalogue: 9030 live items = 9030 new; 0 deleted" in text
    assert "unchanged" not in text


def test_the_collision_rate_says_that_ids_stay_unique():
    counts = catalogue_counts(_merge_record(items=9030, previous_items=0, new=9030, changed=0, deleted=0, unchanged=0))
    quality = {"ami": [0.41, 0.35], "collision_rate": 0.646, "utilisation": [1.0, 0.97]}
    text = render_summary(_summary(counts, quality))
    assert (
        "collision rate 64.6% (items whose learned codes are shared with another item; such items get a suffix, so "
        "IDs stay unique)" in text
    )


class _Backend:
    """The two reads the lookups make, over documents kept in a dict (deleted items are absent)."""

    def __init__(self, table: IdTable, deleted: set[str] = frozenset()) -> None:
        self.sids = {row["item_id"]: row["sid"] for row in table.table.to_pylist() if row["item_id"] not in deleted}

    def get(self, item_id: str) -> dict | None:
        return {"title": item_id.upper()} if item_id in self.sids else None

    def items_sharing_prefix(self, sid: str, level: int, size: int) -> list[dict]:
        prefix = "-".join(sid.split("-")[:level]) + "-"
        return [{"sid": s, "title": i.upper()} for i, s in sorted(self.sids.items()) if s.startswith(prefix)][:size]


def _table() -> IdTable:
    space = IdSpace("rq-kmeans-20260101T000000Z-abcd1234", "rq-kmeans", (4, 4, 4))
    codes = {"a": (0, 1, 0), "b": (2, 3, 0), "c": (2, 3, 1), "d": (3, 3, 2), "e": (3, 3, 3)}
    table, _ = IdTable.empty(space).allocate(
        [Candidate(item_id, code, "h") for item_id, code in codes.items()],
        assigned_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    return table


def test_prefix_lookups_show_different_groups():
    # The newest rows, d and e, share the prefix 3-3: the second lookup is the newest item of another group.
    table = _table()
    lookups = prefix_lookups(_Backend(table), table, count=2, size=6)
    assert [(lookup["item_id"], lookup["prefix"]) for lookup in lookups] == [("e", "3-3"), ("c", "2-3")]
    assert [n["title"] for n in lookups[1]["sharing_prefix"]] == ["B", "C"]


def test_prefix_lookups_skip_items_deleted_since():
    table = _table()
    lookups = prefix_lookups(_Backend(table, deleted={"e", "c"}), table, count=2, size=6)
    assert [(lookup["item_id"], lookup["prefix"]) for lookup in lookups] == [("d", "3-3"), ("b", "2-3")]
