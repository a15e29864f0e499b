from __future__ import annotations

import json

import pyarrow as pa
import pytest

from lmindexer.idtable import SCHEMA, Candidate, IdSpace, IdTable
from lmindexer.storage.s3 import open_binary, s3_client
from lmindexer.validation import OutputValidation, ValidationFailed, staged_item_ids, validate_drop, validate_ids

SPACE = IdSpace("2024-05-01-hkmeans-a1b2", "hkmeans", (4, 8, 16))
ITEMS = [f"SKU-{n:04d}" for n in range(30)]


def _table(item_ids=ITEMS) -> IdTable:
    # Few distinct code tuples, so several items share one and get suffixes 0, 1, 2, ...
    candidates = [Candidate(i, (n % 4, n % 3, n % 2), f"hash-{i}") for n, i in enumerate(item_ids)]
    table, _ = IdTable.empty(SPACE).allocate(candidates)
    return table


def _tampered(table: IdTable, change) -> IdTable:
    rows = table.table.replace_schema_metadata(None).to_pylist()
    change(rows)
    return IdTable(pa.Table.from_pylist(rows, schema=SCHEMA), table.space)


def _failed(result: OutputValidation) -> dict[tuple[str, str], list[dict]]:
    return {(f["expectation"], f["column"]): f["examples"] for f in result.failures}


def test_a_good_table_passes(tmp_path):
    table = _table()
    assert max(table.table.column("suffix").to_pylist()) > 0  # collisions resolved by suffixes
    result = validate_ids(table, ITEMS, run_id="run-1", result_uri=str(tmp_path / "ids" / "validation.json"))
    assert result.success, result.describe()
    assert (result.rows, result.staged_items, result.missing_items, result.failures) == (30, 30, 0, [])
    assert "all 30 staged items have IDs" in result.describe()
    # sid, item_id, levels, three code levels, suffix, version, sid format: every expectation ran.
    assert len(result.expectations) == 10
    assert {e["column"] for e in result.expectations} >= {"code_0", "code_1", "code_2", "sid", "item_id"}
    document = json.loads((tmp_path / "ids" / "validation.json").read_text())
    assert document["success"] is True
    assert document["meta"]["lmindexer"]["codebook_sizes"] == [4, 8, 16]
    assert json.loads(json.dumps(result.to_dict()))["success"] is True


def test_duplicate_sid_out_of_range_codes_and_a_lost_item_fail():
    def break_rows(rows):
        rows[1]["sid"] = rows[0]["sid"]  # two items, one ID
        rows[2]["codes"] = [4, 0, 0]  # level 0 has only 4 codes
        rows[3]["suffix"] = -1
        rows[4]["codes"] = [1, 1]  # a level missing

    bad = _tampered(_table(), break_rows)
    result = validate_ids(bad, [*ITEMS, "SKU-NEW"])
    assert not result.success
    assert result.missing_items == 1
    failed = _failed(result)
    assert failed[("expect_column_values_to_not_be_null", "sid")] == [{"sid": None, "item_id": "SKU-NEW"}]
    assert len(failed[("expect_column_values_to_be_unique", "sid")]) == 2
    assert failed[("expect_column_values_to_be_between", "code_0")][0]["code_0"] == 4
    assert failed[("expect_column_values_to_be_between", "suffix")][0]["suffix"] == -1
    assert failed[("expect_column_values_to_be_between", "levels")][0]["levels"] == 2
    # Rows 2-4 no longer match their sid strings either.
    assert len(failed[("expect_column_values_to_be_in_set", "sid_matches_codes")]) == 4
    assert ("expect_column_values_to_be_unique", "item_id") not in failed


@pytest.mark.parametrize(
    ("change", "expectation", "column"),
    [
        (lambda rows: rows[5].update(item_id=rows[6]["item_id"]), "expect_column_values_to_be_unique", "item_id"),
        (lambda rows: rows[0].update(codes=[0, 8, 0], sid="0-8-0-0"), "expect_column_values_to_be_between", "code_1"),
        (lambda rows: rows[0].update(snapshot_version="old"), "expect_column_values_to_be_in_set", "snapshot_version"),
        (
            lambda rows: rows[0].update(suffix=rows[0]["suffix"] + 7),
            "expect_column_values_to_be_in_set",
            "sid_matches_codes",
        ),
        (
            lambda rows: rows[1].update(sid=rows[0]["sid"], codes=rows[0]["codes"], suffix=rows[0]["suffix"]),
            "expect_column_values_to_be_unique",
            "sid",
        ),
    ],
)
def test_each_id_rule_fails_alone(change, expectation, column):
    result = validate_ids(_tampered(_table(), change), ITEMS[:5])
    assert [(f["expectation"], f["column"]) for f in result.failures] == [(expectation, column)]


def test_raise_on_failure_after_storing_the_result(tmp_path):
    with pytest.raises(ValidationFailed, match="expect_column_values_to_not_be_null") as failure:
        validate_ids(_table(ITEMS[:10]), ITEMS, raise_on_failure=True, result_uri=str(tmp_path / "v.json"))
    assert failure.value.summary.missing_items == 20
    assert json.loads((tmp_path / "v.json").read_text())["success"] is False
    validate_ids(_table(), ITEMS, raise_on_failure=True)  # a good table does not raise


def test_staged_items_of_a_drop_all_get_ids(tmp_path, s3_bucket):
    drop = tmp_path / "drop.jsonl"
    rows = [{"item_id": i, "title": f"Product {i}"} for i in ITEMS[:12]]
    rows += [{"item_id": "SKU-GONE", "deleted": True}]
    drop.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = f"s3://{s3_bucket}"
    client = s3_client()
    staged = validate_drop(str(drop), "run-1", base_uri=base, s3_client=client).staged_uri
    live = staged_item_ids(staged, s3_client=client)
    assert live == ITEMS[:12]  # the tombstone needs no ID
    assert staged_item_ids(staged, live_only=False, s3_client=client) == [*ITEMS[:12], "SKU-GONE"]

    result_uri = f"{base}/ids/{SPACE.snapshot_version}/validation.json"
    result = validate_ids(_table(ITEMS[:12]), live, result_uri=result_uri, s3_client=client)
    assert result.success
    with open_binary(result_uri, client=client) as stream:
        assert json.loads(stream.read())["success"] is True
    assert not validate_ids(_table(ITEMS[:11]), live).success


def test_from_a_first_row_the_suite_checks_the_rows_after_it_and_finds_staged_items_in_the_whole_table():
    """An incremental run's check: the suite runs on the rows the run added; an item whose row is older is not
    lost, and one without any row is."""

    def break_old_row(rows):
        rows[0]["snapshot_version"] = "old"  # a defect the suite sees, in a row before the checked ones

    table = _tampered(_table(), break_old_row)
    assert not validate_ids(table, ITEMS).success
    later = validate_ids(table, ITEMS, first_row=2)
    assert later.success and later.rows_checked == len(table) - 2 and later.missing_items == 0
    lost = validate_ids(table, [*ITEMS, "SKU-NEW"], first_row=2)
    assert not lost.success and lost.missing_items == 1
    assert validate_ids(table, ITEMS, first_row=len(table) + 5).rows_checked == 0


def test_staged_items_looked_up_by_the_caller_are_found_missing_as_when_the_suite_looks_them_up():
    """check looks each live item's row up once for the suite and the metrics (``staged_rows``): an item without
    a row is lost either way, with the same result; rows that do not match the staged ids are refused."""
    import pyarrow.compute as pc

    table = _table(ITEMS[:28])
    staged = pa.chunked_array([pa.array([*ITEMS, "SKU-NEW"])])
    rows = pc.index_in(staged, value_set=table.table.column("item_id"))
    given = validate_ids(table, staged, staged_rows=rows, first_row=3)
    looked_up = validate_ids(table, staged, first_row=3)
    assert not given.success and given.missing_items == 3
    assert given.to_dict() == looked_up.to_dict()
    with pytest.raises(ValueError, match="same length"):
        validate_ids(table, staged, staged_rows=rows.slice(1))
