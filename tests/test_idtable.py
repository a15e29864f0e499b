from __future__ import annotations

import datetime as dt
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmindexer.errors import IdTableError
from lmindexer.idtable import Candidate, IdSpace, IdTable, format_sid, id_stability, parse_sid

SPACE = IdSpace("rq-kmeans-20260101T000000Z-abcd1234", "rq-kmeans", (4, 4))
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)


def cand(item_id: str, codes: tuple[int, ...], digest: str = "h") -> Candidate:
    return Candidate(item_id, codes, digest)


def test_sid_round_trip():
    assert format_sid((12, 204, 7), 0) == "12-204-7-0"
    assert parse_sid("12-204-7-0") == ((12, 204, 7), 0)
    for bad in ("", "1", "a-b", "1--2", "-1-0"):
        with pytest.raises(IdTableError):
            parse_sid(bad)


def test_collisions_get_suffixes_in_code_then_item_order():
    table, report = IdTable.empty(SPACE).allocate(
        [cand("b", (1, 2)), cand("a", (1, 2)), cand("c", (0, 3)), cand("d", (1, 2))], assigned_at=T0
    )
    assert table.sid_map() == {"c": "0-3-0", "a": "1-2-0", "b": "1-2-1", "d": "1-2-2"}
    assert report.newly_assigned == 4
    assert len(set(table.sid_map().values())) == 4


def test_allocation_does_not_depend_on_input_order():
    candidates = [cand(f"i{n}", (n % 2, n % 3)) for n in range(40)]
    shuffled = candidates[:]
    random.Random(1).shuffle(shuffled)
    first, _ = IdTable.empty(SPACE).allocate(candidates, assigned_at=T0)
    second, _ = IdTable.empty(SPACE).allocate(shuffled, assigned_at=T0)
    assert first.table.equals(second.table)


def test_suffixes_are_unbounded():
    table, _ = IdTable.empty(SPACE).allocate([cand(f"i{n:03d}", (3, 3)) for n in range(300)], assigned_at=T0)
    assert sorted(row[1] for row in map(parse_sid, table.sid_map().values())) == list(range(300))


def test_incremental_allocation_keeps_existing_rows_byte_identical(tmp_path):
    base, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 2)), cand("b", (1, 2)), cand("c", (0, 0))], assigned_at=T0)
    base.write(tmp_path / "ids.parquet")
    before = pq.read_table(tmp_path / "ids.parquet")
    loaded = IdTable.read(tmp_path / "ids.parquet")
    grown, report = loaded.allocate(
        [cand("a", (1, 2), "changed"), cand("z", (1, 2)), cand("y", (0, 0)), cand("c", (0, 0))], assigned_at=T1
    )
    grown.write(tmp_path / "ids.parquet")
    after = pq.read_table(tmp_path / "ids.parquet")
    assert after.slice(0, before.num_rows).equals(before)
    assert after.slice(0, before.num_rows).to_pylist() == before.to_pylist()
    assert grown.sid_map()["z"] == "1-2-2"  # next free suffix of its code tuple
    assert grown.sid_map()["y"] == "0-0-1"
    assert report.to_dict() | {"changed_item_ids_sample": None} == {
        "candidates": 4,
        "newly_assigned": 2,
        "already_assigned": 2,
        "text_changed": 1,
        "changed_item_ids_sample": None,
    }
    assert grown.row("z")["assigned_at"] == T1
    assert grown.row("a")["assigned_at"] == T0


def test_ids_of_removed_items_are_never_reused():
    table, _ = IdTable.empty(SPACE).allocate([cand("a", (2, 2)), cand("b", (2, 2))], assigned_at=T0)
    # "a" is not offered again (deleted upstream) but its ID stays reserved
    grown, _ = table.allocate([cand("b", (2, 2)), cand("c", (2, 2))])
    assert grown.sid_map() == {"a": "2-2-0", "b": "2-2-1", "c": "2-2-2"}


def test_allocation_without_new_items_returns_the_same_table():
    table, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1))])
    same, report = table.allocate([cand("a", (1, 1))])
    assert same is table
    assert report.newly_assigned == 0


def test_bad_candidates_are_refused():
    with pytest.raises(IdTableError, match="do not fit codebook sizes"):
        IdTable.empty(SPACE).allocate([cand("a", (4, 0))])
    with pytest.raises(IdTableError, match="do not fit codebook sizes"):
        IdTable.empty(SPACE).allocate([cand("a", (1, 1, 1))])
    with pytest.raises(IdTableError, match="appears twice"):
        IdTable.empty(SPACE).allocate([cand("a", (1, 1)), cand("a", (1, 2))])


def test_reading_something_else_fails_clearly(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(IdTableError, match="not an lmindexer ID table"):
        IdTable.read(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(IdTableError, match="not a readable Parquet"):
        IdTable.read(tmp_path / "junk.parquet")


def test_id_space_survives_the_round_trip_and_s3(tmp_path, s3_bucket):
    table, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1))])
    table.write(f"s3://{s3_bucket}/ids/v1/ids.parquet")
    loaded = IdTable.read(f"s3://{s3_bucket}/ids/v1/ids.parquet")
    assert loaded.space == SPACE
    assert loaded.sid_map() == {"a": "1-1-0"}


def test_id_stability():
    old, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1)), cand("b", (2, 2)), cand("c", (3, 3))])
    other = IdSpace("v2", "rq-kmeans", (4, 4))
    new, _ = IdTable.empty(other).allocate([cand("a", (1, 1)), cand("b", (0, 2)), cand("d", (3, 3))])
    assert id_stability(old, new) == {
        "common_items": 2,
        "unchanged": 1,
        "stability": 0.5,
        "only_in_previous": 1,
        "only_in_current": 1,
        "same_id_space": False,
    }
