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
from lmindexer.catalog.readers import MAX_ROW_CHARS
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
    with pytest.raises(CatalogError, match="cannot tell the format") as refused:
        detect_format("catalogue.xml")
    # It says what to do, and names no option that does not exist.
    assert "rename the file" in str(refused.value) and ".jsonl" in str(refused.value)
    assert "pass a format" not in str(refused.value)


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


# -- poison rows: each one is a rejected row with its rule, never a failed read ------------------------------------


def _rules_by_row(rejected: list) -> dict[int, tuple[str, str]]:
    return {errors[0].row: (errors[0].field, errors[0].rule.value) for errors in rejected}


def test_poison_json_rows_are_rejected_and_the_read_goes_on(tmp_path):
    good = [json.dumps({"item_id": f"ok-{n}", "title": "fine"}).encode() for n in range(3)]
    poison = [
        b'{"item_id": "deep", "title": "t", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"item_id": "big", "title": "t", "a": ' + b"9" * 5000 + b"}",
        b'{"item_id": "inf", "title": "t", "price": Infinity}',
        b'{"item_id": "ninf", "title": "t", "attributes": {"price": -Infinity}}',
        b'{"item_id": "nan", "title": "t", "attributes": {"dims": [1, NaN]}}',
        b'{"item_id": "huge", "title": "t", "attributes": {"price": 1e999}}',
        b'{"item_id": "long", "title": "t", "attributes": {"stock": 9223372036854775808}}',
        b'{"item_id": "surrogate", "title": "t", "attributes": {"brand": "x\\ud800"}}',
        b'{"item_id": "key", "title": "t", "attributes": {"k\\udfff": 1}}',
        b'{"item_id": "dup", "title": "t", "title": "u"}',
    ]
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join([good[0], *poison, good[1], good[2]]) + b"\n")
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ["ok-0", "ok-1", "ok-2"]
    assert (summary.rows_in, summary.accepted, summary.rejected) == (13, 3, 10)
    assert _rules_by_row(rejected) == {
        2: ("(row)", "too_deeply_nested"),
        3: ("a", "number_out_of_range"),
        4: ("price", "non_finite_number"),
        5: ("attributes.price", "non_finite_number"),
        6: ("attributes.dims[1]", "non_finite_number"),
        7: ("attributes.price", "non_finite_number"),
        8: ("attributes.stock", "number_out_of_range"),
        9: ("attributes.brand", "undecodable_bytes"),
        10: ("attributes.k\\udfff", "undecodable_bytes"),
        11: ("title", "duplicate_key"),
    }
    assert all(errors[0].raw for errors in rejected)


def test_cr_only_and_mixed_line_endings_are_line_breaks(tmp_path):
    jsonl = tmp_path / "mac.jsonl"
    jsonl.write_bytes(
        b'{"item_id": "a", "title": "t"}\r{"item_id": "b", "title": "t"}\r\n\r{"item_id": "c", "title": "t"}'
    )
    items, summary = read_items(jsonl)
    assert [i.item_id for i in items] == ["a", "b", "c"]
    assert (summary.rows_in, summary.rejected) == (3, 0)

    csv_path = tmp_path / "mac.csv"
    csv_path.write_bytes(b'item_id,title\ra,Alpha\rb,"two\rlines"\rc,Gamma')
    rejected = []
    items, _ = read_items(csv_path, on_reject=rejected.append)
    assert [(i.item_id, i.title) for i in items] == [("a", "Alpha"), ("b", "two\rlines"), ("c", "Gamma")]
    assert rejected == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("name", ["drop.jsonl", "drop.csv", "drop.jsonl.gz"])
def test_utf16_and_utf32_files_are_refused_with_an_encoding_hint(tmp_path, encoding, name):
    text = '{"item_id": "a", "title": "t"}\n' if "jsonl" in name else "item_id,title\na,t\n"
    data = text.encode(encoding)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    family = "UTF-32" if "32" in encoding else "UTF-16"
    with pytest.raises(CatalogError, match=f"looks like {family} .*re-encode it as UTF-8") as failure:
        read_items(path)
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize(
    ("data", "ids"),
    [
        (b'item_id,title\na,"unbalanced\nb,Beta\nc,Gamma\n', ["b", "c"]),
        (b'item_id,title\nb,Beta\nc,Gamma\na,"unbalanced', ["b", "c"]),  # on the last line, without a line break
    ],
)
def test_a_csv_quote_that_never_closes_loses_no_valid_row(tmp_path, data, ids):
    path = tmp_path / "drop.csv"
    path.write_bytes(data)
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ids
    assert (summary.rows_in, summary.accepted, summary.rejected) == (3, 2, 1)
    error = rejected[0][0]
    assert (error.field, error.rule) == ("(row)", Rule.MALFORMED_ROW)
    assert "unbalanced quote" in error.message
    assert error.raw == 'a,"unbalanced'


@pytest.mark.parametrize(
    ("second", "title"),
    [
        (b'b,"Beta, the second"\n', "Beta, the second"),  # the quote opened on line 2 closes here: 3 fields
        (b'b,"Beta"\n', "Beta"),  # ... closes here with 2 fields, but only through a stray quote
        (b'b,",Beta"\n', ",Beta"),  # ... closes cleanly here (a quote, then a comma), but leaves 3 fields
    ],
)
def test_a_stray_csv_quote_rejects_only_its_own_line(tmp_path, second, title):
    path = tmp_path / "drop.csv"
    path.write_bytes(b'item_id,title\na,"Alpha\n' + second + b"c,Gamma\n")
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [(i.item_id, i.title) for i in items] == [("b", title), ("c", "Gamma")]
    assert [(e[0].row, e[0].rule) for e in rejected] == [(2, Rule.MALFORMED_ROW)]
    assert "unbalanced quote" in rejected[0][0].message
    assert summary.reconciles


def test_a_quoted_field_may_span_lines_when_the_record_is_complete(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_bytes(b'item_id,title,text\na,"two\nlines","and ""quotes"", commas"\nb,Beta,\n')
    rejected = []
    items, _ = read_items(path, on_reject=rejected.append)
    assert [(i.item_id, i.title, i.text) for i in items] == [
        ("a", "two\nlines", 'and "quotes", commas'),
        ("b", "Beta", None),
    ]
    assert rejected == []


def _row_of_length(name: str, item_id: str, length: int) -> str:
    """A valid JSONL line or CSV record of exactly ``length`` characters."""
    if name.endswith(".csv"):
        prefix = f"{item_id},"
        return prefix + "x" * (length - len(prefix))
    empty = json.dumps({"item_id": item_id, "title": ""})
    return json.dumps({"item_id": item_id, "title": "x" * (length - len(empty))})


@pytest.mark.parametrize("name", ["drop.jsonl", "drop.csv"])
def test_rows_longer_than_the_limit_are_rejected_with_an_excerpt(tmp_path, name):
    header = ["item_id,title"] if name.endswith(".csv") else []
    rows = [
        _row_of_length(name, "at-limit", MAX_ROW_CHARS),
        _row_of_length(name, "one-over", MAX_ROW_CHARS + 1),
        _row_of_length(name, "far-over", MAX_ROW_CHARS + 5000),
        _row_of_length(name, "after", 40),
    ]
    path = tmp_path / name
    breaks = ["\n", "\r\n", "\r", "\n"]  # the limit counts the characters of the row, not of its line break
    path.write_text("".join(f"{line}\n" for line in header) + "".join(r + b for r, b in zip(rows, breaks)))
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ["at-limit", "after"]
    assert (summary.rows_in, summary.rejected) == (4, 2)
    first = len(header) + 1
    assert [(e[0].row, e[0].field, e[0].rule) for e in rejected] == [
        (first + 1, "(row)", Rule.ROW_TOO_LARGE),
        (first + 2, "(row)", Rule.ROW_TOO_LARGE),
    ]
    for errors, row in zip(rejected, rows[1:3]):
        assert errors[0].raw.startswith(row[:30]) and len(errors[0].raw) <= 501


def test_csv_fields_are_bounded_by_the_row_limit_not_the_csv_default(tmp_path):
    path = tmp_path / "drop.csv"
    text = "y" * 200_000  # over the csv module's default field limit of 131,072 characters
    path.write_text(f'item_id,text\na,"{text}"\n')
    items, summary = read_items(path)
    assert [i.text for i in items] == [text]
    assert summary.rejected == 0


def test_a_repeated_csv_column_is_a_file_error(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_text("item_id,title,brand,title\na,Alpha,Acme,Other\n")
    with pytest.raises(CatalogError, match=r"names column 'title' more than once \(columns 2, 4\)") as failure:
        read_items(path)
    assert "\n" not in str(failure.value)


def test_nfc_and_nfd_spellings_of_an_id_are_one_item(tmp_path):
    path = tmp_path / "drop.jsonl"
    path.write_text(
        json.dumps({"item_id": "caf\u00e9", "title": "first"})
        + "\n"
        + json.dumps({"item_id": "cafe\u0301", "title": "second"})
        + "\n"
    )
    rejected = []
    items, summary = read_items(path, on_reject=rejected.append)
    assert [(i.item_id, i.title) for i in items] == [("caf\u00e9", "first")]
    error = rejected[0][0]
    assert (error.row, error.rule) == (2, Rule.DUPLICATE_ITEM_ID)
    assert "NFC" in error.message
    assert summary.reconciles


def test_parquet_values_the_engine_cannot_index_are_rejected(tmp_path):
    path = tmp_path / "drop.parquet"
    table = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["x", "y", "z", "w"],
            "price": pa.array([1.5, float("inf"), float("nan"), 2.0]),
            "stock": pa.array([1, 2, 3, 2**64 - 1], type=pa.uint64()),
        }
    )
    pq.write_table(table, path)
    rejected = []
    items, _ = read_items(path, on_reject=rejected.append)
    assert [i.item_id for i in items] == ["a"]
    assert _rules_by_row(rejected) == {
        2: ("price", "non_finite_number"),
        3: ("price", "non_finite_number"),
        4: ("stock", "number_out_of_range"),
    }
