from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testsupport.s3_requests import recorded_gets

from lmindexer import idtable
from lmindexer.errors import IdTableError
from lmindexer.idtable import (
    Candidate,
    IdSpace,
    IdTable,
    format_sid,
    id_stability,
    parse_sid,
    read_id_rows,
    read_id_table,
    store_allocation,
    stored_item_ids,
)
from lmindexer.storage.versioned import VersionConflict

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
    version = base.write(tmp_path / "ids.parquet")
    before = pq.read_table(tmp_path / "ids.parquet")
    loaded = IdTable.read(tmp_path / "ids.parquet")
    grown, report = loaded.allocate(
        [cand("a", (1, 2), "changed"), cand("z", (1, 2)), cand("y", (0, 0)), cand("c", (0, 0))], assigned_at=T1
    )
    grown.write(tmp_path / "ids.parquet", replacing=version)
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
        "moved_to_free_code": 0,
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


@pytest.fixture(params=["local", "s3", "local-parts", "s3-parts"])
def table_uri(request, tmp_path):
    """An ID table's location: one Parquet file, or a table stored as parts (a manifest), locally and on S3."""
    name = "ids.json" if request.param.endswith("-parts") else "ids.parquet"
    if request.param.startswith("local"):
        return str(tmp_path / "ids" / name)
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/ids/v1/{name}"


def test_a_write_over_a_version_that_moved_on_is_refused(table_uri):
    first, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1))], assigned_at=T0)
    version = first.write(table_uri)
    with pytest.raises(VersionConflict, match="changed since it was read"):
        first.write(table_uri)  # "only if absent", but it exists now
    theirs, _ = first.allocate([cand("b", (1, 1))], assigned_at=T1)
    theirs.write(table_uri, replacing=version)
    mine, _ = first.allocate([cand("c", (1, 1))], assigned_at=T1)  # built on the version read before theirs
    with pytest.raises(VersionConflict):
        mine.write(table_uri, replacing=version)
    assert IdTable.read(table_uri).sid_map() == {"a": "1-1-0", "b": "1-1-1"}  # theirs survived, untouched


def raced_reads(monkeypatch, table_uri, other_writer):
    """Each read of the table at ``table_uri`` by a writer is followed at once by ``other_writer()`` (a whole
    allocation of another writer), before the writer can write: the race a compare-and-swap write must lose."""
    real_read = idtable.read_versioned
    busy = []

    def read_then_lose_the_race(location, **options):
        stored = real_read(location, **options)
        if str(location) == table_uri and not busy:
            busy.append(True)  # the other writer's own reads do not race it
            try:
                other_writer()
            finally:
                busy.pop()
        return stored

    monkeypatch.setattr(idtable, "read_versioned", read_then_lose_the_race)


def test_an_allocation_raced_by_another_writer_is_redone_on_top_of_its_rows(table_uri, monkeypatch):
    store_allocation(table_uri, SPACE, [cand("a", (2, 2))], assigned_at=T0)
    raced = []

    def theirs():
        if not raced:  # once: the retry that follows wins
            raced.append(store_allocation(table_uri, SPACE, [cand("theirs", (2, 2))], assigned_at=T1))

    raced_reads(monkeypatch, table_uri, theirs)
    mine = store_allocation(table_uri, SPACE, [cand("mine", (2, 2)), cand("a", (2, 2))], assigned_at=T1)
    assert mine.attempts == 2 and mine.written
    final = IdTable.read(table_uri)
    assert final.sid_map() == {"a": "2-2-0", "theirs": "2-2-1", "mine": "2-2-2"}
    # what each writer reported is what the table holds: no ID changed owner
    assert raced[0].added.sid_map() == {"theirs": "2-2-1"}
    assert mine.added.sid_map() == {"mine": "2-2-2"}
    assert (mine.rows_before, mine.rows_after) == (2, 3)


def test_an_allocation_that_keeps_losing_gives_up_without_writing(table_uri, monkeypatch):
    store_allocation(table_uri, SPACE, [cand("a", (0, 0))], assigned_at=T0)
    counter = iter(range(1000))
    real_read = idtable.read_versioned
    raced_reads(
        monkeypatch, table_uri, lambda: store_allocation(table_uri, SPACE, [cand(f"other-{next(counter)}", (0, 1))])
    )
    with pytest.raises(IdTableError, match="changed by other writers 3 times"):
        store_allocation(table_uri, SPACE, [cand("mine", (0, 0))], attempts=3)
    monkeypatch.setattr(idtable, "read_versioned", real_read)
    assert "mine" not in IdTable.read(table_uri)
    assert len(IdTable.read(table_uri)) == 4  # "a" and the three writers that won


def test_allocation_into_a_table_of_another_id_space_is_refused(table_uri):
    store_allocation(table_uri, SPACE, [cand("a", (0, 0))])
    other = IdSpace("rq-kmeans-20270101T000000Z-ffff0000", "rq-kmeans", (4, 4))
    with pytest.raises(IdTableError, match="a new snapshot defines a new ID space"):
        store_allocation(table_uri, other, [cand("b", (0, 0))])


def test_a_stored_table_with_flipped_bytes_is_detected(tmp_path):
    table, _ = IdTable.empty(SPACE).allocate([cand(f"item-{n}", (n % 4, n // 4 % 4)) for n in range(200)])
    path = tmp_path / "ids.parquet"
    table.write(path)
    data = bytearray(path.read_bytes())
    item_ids = pq.ParquetFile(path).metadata.row_group(0).column(0)
    data[item_ids.data_page_offset + item_ids.total_compressed_size // 2] ^= 0xFF  # inside item_id's data page
    path.write_bytes(bytes(data))
    with pytest.raises(IdTableError, match=r"ids.parquet (is not a readable Parquet ID table|is corrupted)"):
        IdTable.read(path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda rows: rows.append(dict(rows[0])), "an item_id appears on more than one row"),
        (lambda rows: rows[1].update(sid=rows[0]["sid"]), "held by more than one item"),
        # a whole row's ID repeated, each sid spelling its codes: found on the integer (codes, suffix) rows
        (lambda rows: rows[1].update({k: rows[0][k] for k in ("sid", "codes", "suffix")}), "held by more than one"),
        (lambda rows: rows[0].update(sid="3-3-9"), "a sid does not match its codes and suffix"),
        (lambda rows: rows[0].update(codes=[9, 1]), "does not fit the codebook sizes"),
        (lambda rows: rows[0].update(codes=[1]), "does not have 2 codes"),
    ],
)
def test_a_stored_table_that_breaks_its_invariants_is_refused(tmp_path, damage, problem):
    table, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1)), cand("b", (1, 1)), cand("c", (2, 3))])
    rows = table.table.to_pylist()
    damage(rows)
    broken = pa.Table.from_pylist(rows, schema=idtable.SCHEMA).replace_schema_metadata(table.table.schema.metadata)
    pq.write_table(broken, tmp_path / "ids.parquet")
    with pytest.raises(IdTableError, match=problem):
        IdTable.read(tmp_path / "ids.parquet")
    with pytest.raises(IdTableError, match=problem):
        read_id_table(tmp_path / "ids.parquet", SPACE)


def test_rows_sharing_codes_and_suffix_are_found_also_where_one_integer_per_row_would_overflow():
    codes = np.array([[1, 2], [1, 2], [2, 1]])
    assert not idtable._distinct_rows(codes, np.array([0, 0, 0]), (4, 4))
    assert idtable._distinct_rows(codes, np.array([0, 1, 0]), (4, 4))
    huge = (2**40, 2**40)  # mixed radix past 2**63: the rows themselves are compared
    assert not idtable._distinct_rows(codes, np.array([3, 3, 0]), huge)
    assert idtable._distinct_rows(codes, np.array([3, 4, 0]), huge)


BALANCED = IdSpace("rq-kmeans-20260101T000000Z-abcd1234", "rq-kmeans", (2, 4), "balanced")


def ranked(item_id: str, prefix: int, *order: int) -> Candidate:
    return Candidate(item_id, (prefix, order[0]), "h", order)


def test_a_balanced_last_level_gives_items_of_one_prefix_distinct_codes_while_codes_are_free():
    # all three prefer code 2; only one can have it, the others take their next best free codes
    table, report = IdTable.empty(BALANCED).allocate(
        [ranked("a", 1, 2, 3, 0, 1), ranked("b", 1, 2, 0, 1, 3), ranked("c", 1, 2, 3, 1, 0)], assigned_at=T0
    )
    assert table.sid_map() == {"a": "1-2-0", "b": "1-0-0", "c": "1-3-0"}
    assert report.moved_to_free_code == 2
    # a new item takes its nearest free code; once every code is taken, its own code with the next suffix
    grown, _ = table.allocate([ranked("d", 1, 2, 3, 1, 0)], assigned_at=T1)
    assert grown.sid_map()["d"] == "1-1-0"
    full, _ = grown.allocate([ranked("e", 1, 3, 2, 1, 0)], assigned_at=T1)
    assert full.sid_map()["e"] == "1-3-1"
    assert full.table.slice(0, 3).to_pylist() == table.table.to_pylist()  # existing rows untouched


def test_a_balanced_last_level_never_hands_out_a_deleted_items_code():
    table, _ = IdTable.empty(BALANCED).allocate([ranked("gone", 0, 1, 0, 2, 3)], assigned_at=T0)
    # "gone" is not offered again (deleted upstream): its code stays reserved
    grown, _ = table.allocate([ranked("new", 0, 1, 2, 0, 3)], assigned_at=T1)
    assert grown.sid_map() == {"gone": "0-1-0", "new": "0-2-0"}


def test_a_balanced_allocation_does_not_depend_on_input_order():
    items = [ranked(f"i{n}", n % 2, *(((n + k) % 4) for k in range(4))) for n in range(11)]
    first, _ = IdTable.empty(BALANCED).allocate(items, assigned_at=T0)
    again, _ = IdTable.empty(BALANCED).allocate(list(reversed(items)), assigned_at=T0)
    assert first.sid_map() == again.sid_map()
    # 11 items over 2 prefixes of 4 codes: collisions only where a prefix holds more items than codes
    per_prefix = {p: sum(1 for sid in first.sid_map().values() if sid.startswith(f"{p}-")) for p in (0, 1)}
    suffixed = sum(1 for sid in first.sid_map().values() if not sid.endswith("-0"))
    assert suffixed == sum(max(0, count - 4) for count in per_prefix.values())


def test_without_preferences_a_balanced_level_falls_back_to_the_suffix():
    table, _ = IdTable.empty(BALANCED).allocate([cand("a", (1, 2)), cand("b", (1, 2))], assigned_at=T0)
    assert table.sid_map() == {"a": "1-2-0", "b": "1-2-1"}


def test_the_last_level_policy_is_recorded_with_the_table(tmp_path):
    table, _ = IdTable.empty(BALANCED).allocate([ranked("a", 1, 2, 3)], assigned_at=T0)
    table.write(tmp_path / "ids.parquet")
    assert IdTable.read(tmp_path / "ids.parquet").space.last_level == "balanced"
    # a table written before the policy existed reads as argmax
    old = IdSpace.from_json('{"snapshot_version": "v", "method": "m", "codebook_sizes": [4, 4]}')
    assert old.last_level == "argmax"
    with pytest.raises(IdTableError, match="unknown last-level policy"):
        IdSpace("v", "m", (4,), "random")


def test_stored_item_ids_are_the_tables_item_ids_read_alone(tmp_path):
    """Which items already have an ID, without reading and verifying the whole table: the same ids as the table,
    None where there is no table, and a file that is not an ID table is refused naming it."""
    table, _ = IdTable.empty(SPACE).allocate([cand("b", (1, 2)), cand("a", (1, 2)), cand("c", (0, 3))], assigned_at=T0)
    table.write(tmp_path / "ids.parquet")
    assert stored_item_ids(tmp_path / "ids.parquet").to_pylist() == table.item_ids
    assert stored_item_ids(tmp_path / "none.parquet") is None
    pq.write_table(pa.table({"item_id": ["a"]}), tmp_path / "other.parquet")
    with pytest.raises(IdTableError, match=r"other\.parquet is not an lmindexer ID table"):
        stored_item_ids(tmp_path / "other.parquet")


def test_read_id_rows_reads_only_the_row_groups_of_the_rows_asked_for(s3_bucket, monkeypatch, tmp_path):
    """A step that needs a run's few rows of a large table (publish) gets exactly those rows, verified: its item_id
    column and the row groups holding the rows, in a few requests; where the gaps between them cost more than a
    request, only a fraction of the table's bytes. A row asked for that is corrupted is refused; one that is not
    asked for is not read."""
    import hashlib

    from lmindexer.storage import s3
    from lmindexer.storage.s3 import s3_client

    monkeypatch.setattr(idtable, "ROW_GROUP_ROWS", 2000)
    rng = random.Random(3)
    space = IdSpace("v", "rq-kmeans", (64, 64, 64))
    candidates = [
        cand(f"item-{n:05d}", tuple(rng.randrange(64) for _ in range(3)), hashlib.sha256(b"%d" % n).hexdigest())
        for n in range(60_000)
    ]
    # a run's rows are appended after the rows of the runs before it
    table, _ = IdTable.empty(space).allocate(candidates[:59_950], assigned_at=T0)
    table, _ = table.allocate(candidates[59_950:], assigned_at=T1)
    uri = f"s3://{s3_bucket}/ids/v/ids.parquet"
    table.write(uri)
    wanted = [f"item-{n:05d}" for n in (*range(59_950, 60_000), 12, 4001)] + ["not-there"]  # the run's, 2 older
    client = s3_client()
    fetched = recorded_gets(client)
    monkeypatch.setattr("lmindexer.storage.s3.shared_s3_client", lambda: client)
    rows = read_id_rows(uri, wanted)
    assert rows.table.equals(table.restricted(wanted).table)
    assert rows.space == space
    # a small table: the 30 item_id chunks and the row groups come in a few requests, not one per chunk
    assert len(fetched) <= 3
    size = len(table.to_parquet_bytes())
    fetched.clear()
    monkeypatch.setattr(s3, "COALESCE_GAP_BYTES", 0)  # as if every gap cost more than a request
    assert read_id_rows(uri, wanted).table.equals(rows.table)
    assert 0 < sum(fetched) < size / 3
    # the same row corrupted: its sid no longer spells its codes
    broken = table.table.set_column(
        table.table.schema.get_field_index("sid"), table.table.schema.field("sid"),
        pa.array([("9-9-9-9" if item == "item-04001" else sid) for item, sid in zip(
            table.item_ids, table.table.column("sid").to_pylist(), strict=True)]),
    )  # fmt: skip
    pq.write_table(IdTable(broken, space).table, tmp_path / "broken.parquet")
    with pytest.raises(IdTableError, match="a sid does not match"):
        read_id_rows(tmp_path / "broken.parquet", ["item-04001"])
    assert len(read_id_rows(tmp_path / "broken.parquet", ["item-00001"])) == 1


@settings(max_examples=60, deadline=None)
@given(
    stored=st.lists(st.integers(0, 60), unique=True, max_size=60),
    asked=st.lists(st.integers(0, 80), max_size=40),
)
def test_the_rows_of_item_ids_are_found_whether_the_ids_or_the_table_are_hashed(stored, asked):
    """A few ids against a large table hash the ids and pass over the table; many ids hash the table. Both give
    each id's row (-1: none), repeated ids alike."""
    table, _ = IdTable.empty(SPACE).allocate([cand(f"i{n}", (n % 4, n // 4 % 4)) for n in stored], assigned_at=T0)
    wanted = [f"i{n}" for n in asked]
    rows = {item_id: row for row, item_id in enumerate(table.item_ids)}
    original = idtable._FEW_ROWS_RATIO
    try:
        for ratio in (0, 10**9):  # always the ids hashed; always the table hashed
            idtable._FEW_ROWS_RATIO = ratio
            assert table._rows_of(wanted).tolist() == [rows.get(item_id, -1) for item_id in wanted]
    finally:
        idtable._FEW_ROWS_RATIO = original


# -- tables stored as parts -------------------------------------------------------------------------------------


def manifest_of(uri) -> dict:
    import json
    from pathlib import Path

    return json.loads(Path(uri).read_text())


def test_a_write_to_a_table_stored_as_parts_adds_one_part_of_its_rows_and_leaves_the_others_untouched(tmp_path):
    uri = tmp_path / "ids" / "ids.json"
    first = store_allocation(uri, SPACE, [cand(f"i{n:02d}", (n % 4, n // 4 % 4)) for n in range(40)], assigned_at=T0)
    old_part = tmp_path / "ids" / manifest_of(uri)["parts"][0]["file"]
    old_bytes = old_part.read_bytes()
    second = store_allocation(uri, SPACE, [cand("i00", (0, 0)), cand("new-1", (1, 1)), cand("new-2", (1, 1))],
                              assigned_at=T1)  # fmt: skip
    parts = manifest_of(uri)["parts"]
    assert [part["rows"] for part in parts] == [40, 2]
    assert old_part.read_bytes() == old_bytes  # the earlier part is not rewritten
    assert IdTable.read(tmp_path / "ids" / parts[1]["file"]).table.equals(second.added.table)  # only the new rows
    whole = IdTable.read(uri)
    assert whole.table.equals(pa.concat_tables([first.added.table, second.added.table]))
    assert second.added.sid_map() == {"new-1": "1-1-3", "new-2": "1-1-4"}  # i05, i21 and i37 hold 1-1-0 to 1-1-2
    assert (second.rows_before, second.rows_after, second.report.already_assigned) == (40, 42, 1)
    # a run that adds nothing writes nothing
    version = (tmp_path / "ids" / "ids.json").read_bytes()
    again = store_allocation(uri, SPACE, [cand("new-1", (1, 1))], assigned_at=T1)
    assert not again.written and (tmp_path / "ids" / "ids.json").read_bytes() == version


def test_the_write_past_max_parts_compacts_a_table_stored_as_parts_into_one_part(tmp_path):
    uri = tmp_path / "ids.json"
    added = []
    for run in range(3):
        stored = store_allocation(uri, SPACE, [cand(f"r{run}-{n}", (n % 4, run)) for n in range(5)], max_parts=2)
        added.append(stored.added.table)
        assert len(manifest_of(uri)["parts"]) == [1, 2, 1][run]
    # the compacted part holds every row, in the order they were added
    assert IdTable.read(uri).table.equals(pa.concat_tables(added))
    assert manifest_of(uri)["rows"] == 15
    with pytest.raises(IdTableError, match="at least one part"):
        store_allocation(uri, SPACE, [], max_parts=0)


def test_a_held_items_changed_text_is_counted_from_the_part_that_holds_it(tmp_path):
    uri = tmp_path / "ids.json"
    store_allocation(uri, SPACE, [cand("a", (0, 0), "ha"), cand("b", (0, 1), "hb")])
    store_allocation(uri, SPACE, [cand("c", (0, 0), "hc"), cand("d", (0, 1), "hd")])
    report = store_allocation(
        uri, SPACE, [cand("d", (0, 1), "hd"), cand("b", (0, 1), "new text"), cand("c", (0, 0), "new text"),
                     cand("a", (0, 0), "ha")],
    ).report  # fmt: skip
    assert (report.already_assigned, report.text_changed) == (4, 2)
    assert report.changed_item_ids == ["b", "c"]


def test_reads_of_a_table_stored_as_parts_see_every_part(tmp_path, s3_bucket):
    local = tmp_path / "ids.json"
    store_allocation(local, SPACE, [cand("b", (1, 2)), cand("a", (1, 2))], assigned_at=T0)
    store_allocation(local, SPACE, [cand("c", (1, 2)), cand("d", (0, 3))], assigned_at=T1)
    whole = IdTable.read(local)
    assert whole.sid_map() == {"a": "1-2-0", "b": "1-2-1", "d": "0-3-0", "c": "1-2-2"}
    remote = f"s3://{s3_bucket}/ids/v/ids.json"
    whole.write(remote)  # one part under a new manifest
    for uri in (local, remote):
        assert stored_item_ids(uri).to_pylist() == whole.item_ids
        assert read_id_rows(uri, ["c", "a", "zz"]).table.equals(whole.restricted(["a", "c"]).table)
        assert read_id_table(uri, SPACE).table.table.equals(whole.table)
        with idtable.id_table_file(uri) as path:
            assert path.suffix == ".parquet" and IdTable.read(path).table.equals(whole.table)
    # a table stored as parts that has none yet: empty, of its ID space
    empty = tmp_path / "empty" / "ids.json"
    assert store_allocation(empty, SPACE, []).written
    assert len(IdTable.read(empty)) == 0 and stored_item_ids(empty).to_pylist() == []
    assert read_id_rows(empty, ["a"]).space == SPACE


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        # a whole read checks the part's hash; a writer reading columns, the part's Parquet checksums
        ("flip a byte of a part", r"part parts/\w+\.parquet is damaged|parts/\w+\.parquet is not a readable"),
        ("remove a part", r"part parts/\w+\.parquet cannot be read"),
        ("miscount a part's rows", "rows is 3 but the parts hold 4"),
        ("not a manifest", "not an lmindexer ID table manifest"),
    ],
)
def test_a_damaged_table_stored_as_parts_is_refused(tmp_path, damage, problem):
    import json

    uri = tmp_path / "ids.json"
    store_allocation(uri, SPACE, [cand("a", (1, 1)), cand("b", (1, 1))])
    store_allocation(uri, SPACE, [cand("c", (1, 1)), cand("d", (2, 2))])
    manifest = manifest_of(uri)
    part = tmp_path / manifest["parts"][1]["file"]
    if damage == "flip a byte of a part":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    elif damage == "remove a part":
        part.unlink()
    elif damage == "miscount a part's rows":
        manifest["rows"] = 3
        uri.write_text(json.dumps(manifest))
    else:
        uri.write_bytes(b"PAR1 not a manifest")
    stored = uri.read_bytes()
    with pytest.raises(IdTableError, match=problem):
        IdTable.read(uri)
    with pytest.raises(IdTableError, match=problem):  # a writer refuses it too, and writes nothing
        store_allocation(uri, SPACE, [cand("e", (3, 3))])
    assert uri.read_bytes() == stored


def test_allocation_on_a_table_stored_as_parts_reads_only_the_columns_allocation_needs(s3_bucket, monkeypatch):
    """Adding a run's IDs to a large table stored as parts on S3 reads its item_id, codes and suffix columns (not
    the sids, text hashes and times that make up most of its bytes) and writes the run's rows alone."""
    import hashlib
    import json

    from lmindexer.storage import s3
    from lmindexer.storage.s3 import read_bytes, s3_client

    space = IdSpace("v", "rq-kmeans", (64, 64, 64))
    rng = random.Random(5)
    candidates = [
        cand(f"item-{n:05d}", tuple(rng.randrange(64) for _ in range(3)), hashlib.sha256(b"%d" % n).hexdigest())
        for n in range(20_000)
    ]
    uri = f"s3://{s3_bucket}/ids/v/ids.json"
    store_allocation(uri, space, candidates[:19_990], assigned_at=T0)
    part_bytes = json.loads(read_bytes(uri))["parts"][0]["bytes"]
    client = s3_client()
    fetched = recorded_gets(client)
    monkeypatch.setattr("lmindexer.storage.s3.shared_s3_client", lambda: client)
    monkeypatch.setattr(s3, "COALESCE_GAP_BYTES", 0)  # each column chunk fetched on its own
    stored = store_allocation(uri, space, candidates[19_990:], assigned_at=T1)
    assert stored.report.newly_assigned == 10
    assert 0 < sum(fetched) < part_bytes / 2
    assert [part["rows"] for part in json.loads(read_bytes(uri))["parts"]] == [19_990, 10]
    assert len(IdTable.read(uri)) == 20_000


def test_the_read_for_check_holds_every_rows_ids_and_codes_and_the_recent_rows_whole(tmp_path):
    """What check reads: every row's item_id and codes, and the rows from first_row on, whole; the same whichever
    way the table is stored."""
    from lmindexer.idtable import read_for_check

    parted = tmp_path / "ids.json"
    for run in range(3):
        store_allocation(parted, SPACE, [cand(f"r{run}-{n}", (n % 4, run)) for n in range(5)], assigned_at=T0)
    whole = IdTable.read(parted)
    single = tmp_path / "ids.parquet"
    whole.write(single)
    for uri in (parted, single):
        for first_row in (0, 7, 10, 15, 99):
            checked = read_for_check(uri, first_row)
            assert checked.item_ids.to_pylist() == whole.item_ids
            assert (checked.codes == whole.code_matrix()).all()
            assert (checked.rows, checked.first_row) == (15, min(first_row, 15))
            assert checked.recent.table.equals(whole.table.slice(min(first_row, 15)))


def two_parts_the_later_changed(tmp_path, later_row) -> Path:
    """A table stored as two sound-looking parts, items a, b and then c, with ``later_row`` applied to c's row
    (each part written as it is, with its hash in the manifest)."""
    from lmindexer.idtable import _manifest, _write_manifest, _write_part

    uri = tmp_path / "ids.json"
    first, _ = IdTable.empty(SPACE).allocate([cand("a", (1, 1)), cand("b", (2, 2))], assigned_at=T0)
    later, _ = IdTable.empty(SPACE).allocate([cand("c", (3, 3))], assigned_at=T1)
    rows = later.table.to_pylist()
    later_row(rows[0])
    broken = IdTable(pa.Table.from_pylist(rows, schema=idtable.SCHEMA), SPACE)
    _write_manifest(uri, _manifest(SPACE, [_write_part(uri, first), _write_part(uri, broken)]), None)
    return uri


@pytest.mark.parametrize(
    ("later_row", "problem"),
    [
        # the later part repeats an earlier part's item, or its (codes, suffix) under another item: found on the
        # columns of the earlier part, which check does not read whole
        (lambda row: row.update(item_id="a"), "an item_id appears on more than one row"),
        (lambda row: row.update(codes=[1, 1], suffix=0, sid="1-1-0"), "a semantic ID is held by more than one item"),
        # the later part, read whole, is verified row by row
        (lambda row: row.update(sid="3-3-9"), "a sid does not match its codes and suffix"),
    ],
)
def test_the_read_for_check_refuses_a_table_whose_parts_break_its_invariants(tmp_path, later_row, problem):
    from lmindexer.idtable import read_for_check

    uri = two_parts_the_later_changed(tmp_path, later_row)
    with pytest.raises(IdTableError, match=problem):
        read_for_check(uri, first_row=2)


@pytest.mark.parametrize(
    ("later_row", "problem"),
    [
        (lambda row: row.update(codes=[1, 1], suffix=0, sid="1-1-0"), "a semantic ID is held by more than one item"),
        (lambda row: row.update(codes=[3, 9], sid="3-9-0"), "a code does not fit the codebook sizes"),
    ],
)
def test_a_writer_refuses_to_allocate_on_parts_that_break_the_tables_invariants(tmp_path, later_row, problem):
    """Allocation reads three columns of each part, never a part whole, so it checks those across the parts
    itself: a later part repeating an earlier part's semantic ID, or holding a code outside the space, stops the
    write, and nothing is written."""
    uri = two_parts_the_later_changed(tmp_path, later_row)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(IdTableError, match=problem):
        store_allocation(uri, SPACE, [cand("d", (0, 0))], assigned_at=T1)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_a_part_replaced_by_another_sound_table_is_refused_by_its_hash(tmp_path):
    """A part swapped for a valid ID table of the same size (no Parquet checksum can see it) differs from the hash
    the manifest records: a whole read refuses it."""
    uri = tmp_path / "ids.json"
    store_allocation(uri, SPACE, [cand("a", (1, 1)), cand("b", (2, 2))], assigned_at=T0)
    part = tmp_path / manifest_of(uri)["parts"][0]["file"]
    other, _ = IdTable.empty(SPACE).allocate([cand("x", (1, 1)), cand("y", (2, 2))], assigned_at=T0)
    part.write_bytes(other.to_parquet_bytes())
    with pytest.raises(IdTableError, match=r"part parts/\w+\.parquet is damaged"):
        IdTable.read(uri)
