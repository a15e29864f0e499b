from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmindexer.catalog import CatalogFormat, CatalogReader, Rule, detect_format, read_items
from lmindexer.errors import CatalogError

GOOD = [
    {"item_id": "a", "title": "Alpha", "text": "first"},
    {"item_id": "b", "title": "Beta", "category": "c1"},
    {"item_id": "c", "text": "gamma", "attributes": {"brand": "Acme"}},
]


def write_formats(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    jsonl = tmp_path / "cat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jsonl_gz = tmp_path / "cat.jsonl.gz"
    with gzip.open(jsonl_gz, "wt") as handle:
        handle.write(jsonl.read_text())
    parquet = tmp_path / "cat.parquet"
    fields = sorted({k for r in rows for k in r})
    flat = [{k: (json.dumps(r[k]) if k == "attributes" and k in r else r.get(k)) for k in fields} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), parquet)
    csv_path = tmp_path / "cat.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    return {"jsonl": jsonl, "jsonl.gz": jsonl_gz, "parquet": parquet, "csv": csv_path}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet", "csv"])
def test_every_format_reads_the_same_items(tmp_path, fmt):
    path = write_formats(tmp_path, GOOD)[fmt]
    items, summary = read_items(path)
    assert [i.item_id for i in items] == ["a", "b", "c"]
    assert items[1].category == "c1"
    assert items[2].attributes["brand"] == "Acme"
    assert (summary.rows_in, summary.accepted, summary.rejected) == (3, 3, 0)


def test_detect_format():
    assert detect_format("x/Y.JSONL.GZ") is CatalogFormat.JSONL_GZ
    assert detect_format("s3://b/k/part-0.parquet") is CatalogFormat.PARQUET
    with pytest.raises(CatalogError, match="cannot tell the format"):
        detect_format("catalogue.xml")


def test_bad_rows_are_reported_and_counts_reconcile(tmp_path):
    path = tmp_path / "drop.jsonl"
    lines = [
        json.dumps({"item_id": "ok-1", "text": "fine"}),
        '{"item_id": "broken", "text": ',  # malformed JSON
        json.dumps({"item_id": "ok-1", "text": "again"}),  # duplicate
        json.dumps({"title": "no id"}),  # missing id
        json.dumps({"item_id": "x" * 300, "text": "t"}),  # too long
        json.dumps({"item_id": "tab\there", "text": "t"}),  # control characters
        json.dumps({"item_id": "empty"}),  # empty text
        json.dumps({"item_id": 12, "text": "t"}),  # wrong type
        "",  # blank lines are not rows
        json.dumps({"item_id": "ok-2", "title": "also fine"}),
    ]
    data = "\n".join(lines).encode() + b"\n" + b'{"item_id": "bytes", "text": "caf\xe9"}\n'
    path.write_bytes(data)
    rejected = []
    reader = CatalogReader(path, on_reject=rejected.append, batch_size=2)
    items = [i.item_id for batch in reader for i in batch]
    assert items == ["ok-1", "ok-2"]
    summary = reader.summary
    assert summary.rows_in == 10
    assert summary.accepted == 2
    assert summary.rejected == 8
    assert summary.reconciles
    got = {(errors[0].row, errors[0].field, errors[0].rule) for errors in rejected}
    assert got == {
        (2, "(row)", Rule.MALFORMED_JSON),
        (3, "item_id", Rule.DUPLICATE_ITEM_ID),
        (4, "item_id", Rule.MISSING_ITEM_ID),
        (5, "item_id", Rule.ITEM_ID_TOO_LONG),
        (6, "item_id", Rule.CONTROL_CHARACTERS),
        (7, "text", Rule.EMPTY_TEXT),
        (8, "item_id", Rule.WRONG_TYPE),
        (11, "text", Rule.UNDECODABLE_BYTES),
    }
    duplicate = next(e[0] for e in rejected if e[0].rule is Rule.DUPLICATE_ITEM_ID)
    assert "row 1" in duplicate.message
    assert summary.rejections_by_rule["malformed_json"] == 1


def test_strict_mode_fails_on_first_invalid_row(tmp_path):
    path = tmp_path / "drop.jsonl"
    path.write_text(json.dumps({"item_id": "a", "text": "t"}) + "\n" + json.dumps({"item_id": "a", "text": "t"}) + "\n")
    with pytest.raises(CatalogError, match=r"drop.jsonl:2: item_id: duplicate_item_id"):
        read_items(path, strict=True)


def test_csv_specific_problems(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_bytes(
        b"item_id,title,deleted,brand\n"
        b"a,Alpha,,Acme\n"
        b"b,Beta,false\n"  # too few fields
        b'c,"multi\nline title",true,\n'  # a tombstone spanning two lines
        b"d,caf\xe9,,\n"  # not UTF-8
        b"e,Echo,,X\n"
    )
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ["a", "c", "e"]
    assert items[0].attributes == {"brand": "Acme"}
    assert items[1].deleted is True
    assert [(e[0].row, e[0].rule) for e in rejected] == [(3, Rule.MALFORMED_ROW), (6, Rule.UNDECODABLE_BYTES)]
    assert rejected[1][0].field == "title"
    assert summary.reconciles


def test_csv_without_item_id_column_is_a_file_error(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_text("id,title\n1,x\n")
    with pytest.raises(CatalogError, match="no item_id column"):
        read_items(path)


def test_parquet_type_errors_and_row_numbers(tmp_path):
    path = tmp_path / "drop.parquet"
    pq.write_table(pa.table({"item_id": ["a", None, "c"], "title": ["x", "y", None]}), path)
    rejected = []
    items, _ = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ["a"]
    assert [(e[0].row, e[0].field, e[0].rule) for e in rejected] == [
        (2, "item_id", Rule.MISSING_ITEM_ID),
        (3, "text", Rule.EMPTY_TEXT),
    ]


def test_corrupt_files_fail_with_a_reason(tmp_path):
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(b"this is not gzip")
    with pytest.raises(CatalogError, match="gzip"):
        read_items(gz)
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"PAR1 nonsense")
    with pytest.raises(CatalogError, match="Parquet"):
        read_items(parquet)
    with pytest.raises(CatalogError, match="not found"):
        CatalogReader(tmp_path / "missing.jsonl")
    with pytest.raises(CatalogError, match="unknown catalogue format"):
        CatalogReader(gz, fmt="xml")


def test_large_file_is_streamed_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    row_count = 60_000
    with path.open("w") as handle:
        for i in range(row_count):
            handle.write(json.dumps({"item_id": f"item-{i:07d}", "title": f"Title {i}", "text": "word " * 40}) + "\n")
    file_size = path.stat().st_size
    reader = CatalogReader(path, batch_size=500)
    tracemalloc.start()
    seen = 0
    for batch in reader:
        assert len(batch) <= 500
        seen += len(batch)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == row_count
    # Only the item_ids are kept between batches: the peak stays well below the file's size.
    assert peak < file_size / 2, (peak, file_size)
