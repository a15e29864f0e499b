from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from drop_catalogue import BROKEN, Catalogue, good_rows, write_catalogue

from lmindexer.catalog import read_items
from lmindexer.errors import CatalogError, ConfigError
from lmindexer.storage.s3 import StorageError, exists, open_binary, s3_client
from lmindexer.validation import DropValidation, ValidationFailed, validate_drop
from lmindexer.validation import drop as drop_module
from lmindexer.validation.suites import input_expectations


def _lines(location: str) -> list[dict]:
    with open_binary(location) as stream:
        return [json.loads(line) for line in stream.read().decode().splitlines()]


def _document(location: str) -> dict:
    with open_binary(location) as stream:
        return json.loads(stream.read())


def _flagged(result: DropValidation, document: dict) -> dict[tuple[str, str], set[int]]:
    """(expectation, column) -> source rows the stored GX result lists as unexpected."""
    flagged: dict[tuple[str, str], set[int]] = {}
    for entry in document["results"]:
        config = entry["expectation_config"]
        key = (config["type"], config["kwargs"]["column"])
        if config["type"] == "expect_column_values_to_match_regex":
            key = (config["type"], config["kwargs"]["regex"])
        rows = {i["source_row"] for i in entry["result"]["unexpected_index_list"]}
        flagged[key] = flagged.get(key, set()) | rows
    return flagged


def _line_of(catalogue: Catalogue, name: str) -> int:
    return next(line for line, bad in catalogue.broken_at.items() if bad.name == name)


def test_every_broken_row_is_quarantined_with_its_field_and_rule(catalogue, tmp_path):
    result = validate_drop(str(catalogue.path), "run-1", base_uri=str(tmp_path / "lake"), threshold=0.5)

    rejected = _lines(result.quarantine_uri)
    assert [r["row"] for r in rejected] == sorted(catalogue.broken_at)  # source order
    for record in rejected:
        expected = catalogue.broken_at[record["row"]]
        assert (record["field"], record["rule"]) == (expected.field, expected.rule), expected.name
        assert record["source"] == str(catalogue.path)
        assert record["message"]
        assert record["errors"][0] == {"field": record["field"], "rule": record["rule"], "message": record["message"]}
        assert record["raw"]
    by_name = {catalogue.broken_at[r["row"]].name: r for r in rejected}
    assert by_name["duplicate id"]["item_id"] == "SKU-0002"
    assert "SKU-M1" in by_name["malformed json"]["raw"]
    assert "\\xe9" in by_name["undecodable bytes"]["raw"]  # the raw bytes are shown, escaped

    # Counts reconcile, and every rule is counted.
    assert result.rows_in == catalogue.rows_in == result.staged + result.quarantined
    assert result.reconciles
    assert result.quarantined == len(BROKEN)
    assert sum(result.rejections_by_rule.values()) == len(BROKEN)
    assert result.rejections_by_rule["wrong_type"] == 4  # numeric id, list title, attributes, non-object row
    assert result.tombstones == 1
    assert result.success and result.suite_success and not result.drop_clean

    # Only valid rows are staged, in source order, and they read back as the same items.
    staged, summary = read_items(result.staged_uri)
    assert summary.rejected == 0
    assert [i.item_id for i in staged] == catalogue.good_ids
    originals, _ = read_items(catalogue.path)
    assert [i.to_dict() for i in staged] == [i.to_dict() for i in originals]
    assert staged[0].attributes == {"brand": "Northwind", "price": 19.5}
    assert staged[-1].deleted

    summary_document = _document(result.summary_uri)
    assert summary_document == result.to_dict()


def test_the_input_suite_flags_each_contract_rule(catalogue, tmp_path):
    result = validate_drop(str(catalogue.path), "run-1", base_uri=str(tmp_path), threshold=0.5)
    document = _document(result.result_uri)
    assert document["success"] is False  # the drop is not clean ...
    assert document["statistics"]["evaluated_expectations"] == len(input_expectations(0.5))
    flagged = _flagged(result, document)

    def rows(*names: str) -> set[int]:
        return {_line_of(catalogue, n) for n in names}

    first_copy = catalogue.good_lines["SKU-0002"]
    assert flagged[("expect_column_values_to_be_in_set", "row_kind")] == rows("malformed json", "not an object")
    assert flagged[("expect_column_values_to_not_be_null", "item_id")] == rows(
        "missing id", "malformed json", "not an object"
    )
    assert flagged[("expect_column_values_to_be_in_set", "item_id_type")] == rows("numeric id")
    assert flagged[("expect_column_values_to_match_regex", r"\S")] == rows("blank id")
    assert flagged[("expect_column_value_lengths_to_be_between", "item_id")] == rows("too long id")
    assert flagged[("expect_column_values_to_match_regex", r"\A[^\x00-\x1f\x7f-\x9f]*\Z")] == rows("control characters")
    assert flagged[("expect_column_values_to_be_unique", "item_id")] == rows("duplicate id") | {first_copy}
    assert flagged[("expect_column_values_to_be_in_set", "has_text")] == rows("empty text")
    assert flagged[("expect_column_values_to_be_in_set", "title_type")] == rows("list title")
    assert flagged[("expect_column_values_to_be_in_set", "text_type")] == set()
    assert flagged[("expect_column_values_to_be_in_set", "row_accepted")] == set(catalogue.broken_at)

    # ... but the gate, the only critical expectation, passed: 13 of 54 rows is under 50 %.
    gate = document["results"][-1]
    assert gate["expectation_config"]["severity"] == "critical"
    assert gate["expectation_config"]["kwargs"]["mostly"] == 0.5
    assert gate["success"] is True
    assert all(r["expectation_config"]["severity"] == "warning" for r in document["results"][:-1])
    assert document["meta"]["run_id"]["run_name"] == "run-1"
    assert document["meta"]["lmindexer"] == {"source": str(catalogue.path), "run_id": "run-1", "threshold": 0.5}
    assert "validation_time" not in document["meta"]

    # Every row GX flagged is quarantined; only the staged first copy of a duplicated id is not.
    quarantined = {r["row"] for r in _lines(result.quarantine_uri)}
    everything = set().union(*flagged.values())
    assert everything - quarantined == {first_copy}


def test_too_many_bad_rows_fail_the_run_after_the_evidence_is_written(catalogue, tmp_path):
    base = str(tmp_path / "lake")
    passed = validate_drop(str(catalogue.path), "run-7", base_uri=base, threshold=0.5)
    assert exists(passed.staged_uri)

    with pytest.raises(ValidationFailed) as failure:
        validate_drop(str(catalogue.path), "run-7", base_uri=base)  # default threshold: 5 %
    result = failure.value.summary
    assert isinstance(result, DropValidation)
    assert not result.success and not result.suite_success
    assert result.invalid_share == pytest.approx(len(BROKEN) / catalogue.rows_in)
    assert result.threshold == 0.05
    assert result.staged_uri is None
    message = str(failure.value)
    assert f"{len(BROKEN)} of {catalogue.rows_in} rows" in message
    assert "missing_item_id 2" in message and result.quarantine_uri in message

    # The evidence is kept; the staged file of the earlier, passing attempt is gone.
    assert len(_lines(result.quarantine_uri)) == len(BROKEN)
    document = _document(result.result_uri)
    assert document["results"][-1]["success"] is False
    assert _document(result.summary_uri)["success"] is False
    assert not exists(passed.staged_uri)


def test_a_few_bad_rows_under_the_threshold_pass(tmp_path):
    catalogue = write_catalogue(tmp_path / "drop.jsonl", good=40, broken=[BROKEN[0]])  # 1 of 42 rows: 2.4 %
    result = validate_drop(str(catalogue.path), "run-1", base_uri=str(tmp_path / "lake"))
    assert result.success and result.suite_success
    assert (result.staged, result.quarantined) == (41, 1)
    assert result.rejections_by_rule == {"missing_item_id": 1}

    clean = write_catalogue(tmp_path / "clean.jsonl", good=10, broken=[])
    result = validate_drop(str(clean.path), "run-2", base_uri=str(tmp_path / "lake"), threshold=0.0)
    assert result.success and result.drop_clean
    assert _lines(result.quarantine_uri) == []
    assert _document(result.result_uri)["success"] is True


def test_rerunning_a_run_rewrites_identical_bytes(catalogue, tmp_path):
    base = tmp_path / "lake"

    def snapshot() -> dict[str, str]:
        return {
            str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*"))
            if p.is_file()
        }

    first = validate_drop(
        str(catalogue.path), "scheduled__2024-05-01T00:00:00+00:00", base_uri=str(base), threshold=0.5
    )
    before = snapshot()
    assert set(before) == {
        "quarantine/scheduled__2024-05-01T00:00:00+00:00/rejected.jsonl",
        "quarantine/scheduled__2024-05-01T00:00:00+00:00/validation.json",
        "quarantine/scheduled__2024-05-01T00:00:00+00:00/summary.json",
        "staged/scheduled__2024-05-01T00:00:00+00:00/items.parquet",
    }
    second = validate_drop(
        str(catalogue.path), "scheduled__2024-05-01T00:00:00+00:00", base_uri=str(base), threshold=0.5
    )
    assert snapshot() == before
    assert first == second


def test_s3_source_and_base_uri(catalogue, s3_bucket):
    client = s3_client()
    client.put_object(
        Bucket=s3_bucket, Key="incoming/2024-05-01/drop.jsonl.gz", Body=gzip.compress(catalogue.path.read_bytes())
    )
    source = f"s3://{s3_bucket}/incoming/2024-05-01/drop.jsonl.gz"
    result = validate_drop(source, "run-1/drop.jsonl.gz", base_uri=f"s3://{s3_bucket}", threshold=0.5, s3_client=client)
    assert result.staged_uri == f"s3://{s3_bucket}/staged/run-1/drop.jsonl.gz/items.parquet"
    assert result.quarantine_uri == f"s3://{s3_bucket}/quarantine/run-1/drop.jsonl.gz/rejected.jsonl"
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="quarantine/")["Contents"])
    assert keys == [
        "quarantine/run-1/drop.jsonl.gz/rejected.jsonl",
        "quarantine/run-1/drop.jsonl.gz/summary.json",
        "quarantine/run-1/drop.jsonl.gz/validation.json",
    ]
    assert [r["row"] for r in _lines(result.quarantine_uri)] == sorted(catalogue.broken_at)
    assert _lines(result.quarantine_uri)[0]["source"] == source
    staged, _ = read_items(result.staged_uri)
    assert [i.item_id for i in staged] == catalogue.good_ids
    assert _document(result.result_uri)["meta"]["lmindexer"]["source"] == source

    with pytest.raises(ValidationFailed):
        validate_drop(source, "run-2", base_uri=f"s3://{s3_bucket}/lake", s3_client=client)
    assert exists(f"s3://{s3_bucket}/lake/quarantine/run-2/validation.json")
    assert not exists(f"s3://{s3_bucket}/lake/staged/run-2/items.parquet")


def _write_format(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["item_id", "title", "text", "category"])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k) for k in writer.fieldnames})
    else:
        table = pa.Table.from_pylist(
            [{k: row.get(k) for k in ("item_id", "title", "text", "category")} for row in rows],
            schema=pa.schema([(k, pa.string()) for k in ("item_id", "title", "text", "category")]),
        )
        pq.write_table(table, path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_rows_line_up_with_the_suite(suffix, tmp_path):
    rows = good_rows(12)
    rows[4] = {"title": "no id here"}
    rows[7] = {"item_id": "SKU-0001", "title": "duplicate"}
    rows[9] = {"item_id": "SKU-0009", "title": "", "text": ""}
    path = tmp_path / f"drop{suffix}"
    _write_format(path, rows)
    result = validate_drop(str(path), "run-1", base_uri=str(tmp_path / "lake"), threshold=0.5)
    offset = 2 if suffix == ".csv" else 1  # CSV rows are reported by line (the header is line 1)
    rejected = _lines(result.quarantine_uri)
    assert [(r["row"], r["rule"]) for r in rejected] == [
        (4 + offset, "missing_item_id"),
        (7 + offset, "duplicate_item_id"),
        (9 + offset, "empty_text"),
    ]
    flagged = _flagged(result, _document(result.result_uri))
    assert flagged[("expect_column_values_to_not_be_null", "item_id")] == {4 + offset}
    assert flagged[("expect_column_values_to_be_unique", "item_id")] == {1 + offset, 7 + offset}
    assert flagged[("expect_column_values_to_be_in_set", "has_text")] == {9 + offset}
    assert (result.staged, result.quarantined) == (9, 3)


def test_rows_only_the_suite_rejects_are_quarantined_too(catalogue, tmp_path, monkeypatch):
    """If the suite and the row rules ever disagree, the row is quarantined, not staged (fail closed)."""

    def stricter(threshold: float) -> list:
        import great_expectations.expectations as gxe

        extra = gxe.ExpectColumnValuesToNotMatchRegex(column="item_id", regex=r"^SKU-000[57]$", severity="warning")
        return [extra, *input_expectations(threshold)]

    monkeypatch.setattr(drop_module, "input_expectations", stricter)
    result = validate_drop(str(catalogue.path), "run-1", base_uri=str(tmp_path), threshold=0.5)
    assert result.rejections_by_rule["failed_expectation"] == 2
    assert result.quarantined == len(BROKEN) + 2
    assert result.reconciles
    rejected = _lines(result.quarantine_uri)
    extra = [r for r in rejected if r["rule"] == "failed_expectation"]
    assert [r["item_id"] for r in extra] == ["SKU-0005", "SKU-0007"]
    assert extra[0]["field"] == "item_id"
    assert "expect_column_values_to_not_match_regex" in extra[0]["message"]
    assert "SKU-0005" in extra[0]["raw"]
    staged, _ = read_items(result.staged_uri)
    assert [i.item_id for i in staged] == [i for i in catalogue.good_ids if i not in ("SKU-0005", "SKU-0007")]
    gate = _document(result.result_uri)["results"][-1]
    assert gate["result"]["unexpected_count"] == result.quarantined  # the stored result counts them too


def test_bad_arguments_and_unreadable_sources(catalogue, tmp_path):
    base = str(tmp_path / "lake")
    with pytest.raises(ConfigError, match="run id"):
        validate_drop(str(catalogue.path), "../escape", base_uri=base)
    with pytest.raises(ConfigError, match="run id"):
        validate_drop(str(catalogue.path), "", base_uri=base)
    with pytest.raises(ConfigError, match="threshold"):
        validate_drop(str(catalogue.path), "run-1", base_uri=base, threshold=1.5)
    with pytest.raises(StorageError, match="no bucket"):
        validate_drop(str(catalogue.path), "run-1", base_uri="s3://")
    with pytest.raises(CatalogError, match="not found"):
        validate_drop(str(tmp_path / "missing.jsonl"), "run-1", base_uri=base)
    with pytest.raises(CatalogError, match="format"):
        validate_drop(str(catalogue.path.with_suffix(".txt")), "run-1", base_uri=base)
    assert not (tmp_path / "lake").exists()  # nothing written for a drop that could not be read

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = validate_drop(str(empty), "run-empty", base_uri=base)
    assert (result.rows_in, result.staged, result.quarantined, result.success) == (0, 0, 0, True)
    assert pq.read_table(result.staged_uri).num_rows == 0


# -- poison rows: each is quarantined with its field and rule, the run goes on ------------------------------------

POISON = [
    # (line, field, rule)
    (
        b'{"item_id": "SKU-P01", "title": "t", "attributes": {"brand": "Acme\\ud800"}}',
        "attributes.brand",
        "undecodable_bytes",
    ),
    (
        b'{"item_id": "SKU-P02", "title": "t", "attributes": {"br\\udfffand": "Acme"}}',
        "attributes.br\\udfffand",
        "undecodable_bytes",
    ),
    (b'{"item_id": "SKU-P03", "title": "t", "price": Infinity}', "price", "non_finite_number"),
    (b'{"item_id": "SKU-P04", "title": "t", "attributes": {"price": 1e999}}', "attributes.price", "non_finite_number"),
    (
        b'{"item_id": "SKU-P05", "title": "t", "attributes": {"dims": [1, NaN]}}',
        "attributes.dims[1]",
        "non_finite_number",
    ),
    (b'{"item_id": "SKU-P06", "title": "t", "updated_at": -Infinity}', "updated_at", "non_finite_number"),
    (
        b'{"item_id": "SKU-P07", "title": "t", "attributes": {"stock": 9223372036854775808}}',
        "attributes.stock",
        "number_out_of_range",
    ),
    (
        b'{"item_id": "SKU-P08", "title": "t", "attributes": {"ean": ' + b"9" * 5000 + b"}}",
        "attributes.ean",
        "number_out_of_range",
    ),
    (
        b'{"item_id": "SKU-P09", "title": "t", "attributes": {"weight": 1e39}}',
        "attributes.weight",
        "number_out_of_range",
    ),
    (
        b'{"item_id": "SKU-P10", "title": "t", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "(row)",
        "too_deeply_nested",
    ),
    (
        b'{"item_id": "SKU-P11", "title": "t", "attributes": ' + b'{"k": ' * 20 + b"1" + b"}" * 20 + b"}",
        "attributes" + ".k" * 15,
        "too_deeply_nested",
    ),
    (b'{"item_id": "SKU-P12\\ud800", "title": "escaped lone surrogate"}', "item_id", "undecodable_bytes"),
    (b'{"item_id": "SKU-P13\xff", "title": "a byte that is not UTF-8"}', "item_id", "undecodable_bytes"),
    (b'{"item_id": "SKU-P14", "title": "a", "title": "b"}', "title", "duplicate_key"),
    (json.dumps({"item_id": "SKU-cafe\u0301", "title": "NFD spelling"}).encode(), "item_id", "duplicate_item_id"),
    (json.dumps({"item_id": "SKU-P16", "title": "x" * 17_000_000}).encode(), "(row)", "row_too_large"),
]


def _strict_json_lines(location: str) -> list[dict]:
    with open_binary(location) as stream:
        return [json.loads(line) for line in stream.read().decode("utf-8").splitlines()]  # strict UTF-8


def test_a_poison_row_of_every_kind_is_quarantined_and_the_run_goes_on(tmp_path):
    good = good_rows(320)
    good.insert(5, {"item_id": "SKU-caf\u00e9", "title": "NFC spelling"})
    lines: list[bytes] = []
    expected: dict[int, tuple[str, str]] = {}
    pending = list(POISON)
    for n, row in enumerate(good):
        lines.append(json.dumps(row, ensure_ascii=n % 2 == 0).encode())
        if n > 5 and n % 7 == 0 and pending:
            line, field, rule = pending.pop(0)
            lines.append(line)
            expected[len(lines)] = (field, rule)
    assert not pending
    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = validate_drop(str(path), "run-poison", base_uri=str(tmp_path / "lake"))  # default threshold, 5 %

    assert result.success and result.reconciles
    assert (result.rows_in, result.staged, result.quarantined) == (len(lines), len(good), len(POISON))
    rejected = _strict_json_lines(result.quarantine_uri)
    assert {r["row"]: (r["field"], r["rule"]) for r in rejected} == expected
    assert all(r["raw"] and r["message"] for r in rejected)
    by_row = {r["row"]: r for r in rejected}
    assert by_row[min(k for k, v in expected.items() if v == ("item_id", "undecodable_bytes"))]["item_id"] == (
        "SKU-P12\ud800"
    )
    assert "failed_expectation" not in result.rejections_by_rule  # the suite agrees with the row rules
    _document(result.result_uri)
    assert json.loads(Path(result.summary_uri).read_bytes().decode("utf-8")) == result.to_dict()

    staged, summary = read_items(result.staged_uri)
    assert summary.rejected == 0
    assert [i.item_id for i in staged] == [r["item_id"] for r in good]
    assert staged[5].item_id == "SKU-caf\u00e9"


def test_csv_poison_rows_are_quarantined_and_every_valid_row_is_staged(tmp_path):
    good = [[f"SKU-{n:04d}", f"Title {n}", "plain text", ""] for n in range(120)]
    good[3][2] = 'two\nlines, with a comma and a "quote"'
    good[4][2] = "z" * 200_000  # over the csv module's default field limit
    good[5][3] = json.dumps({"brand": "Acme", "price": 19.5})
    records = []
    for values in good:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r").writerow(values)
        records.append(buffer.getvalue().encode())
    poison = [
        (b'SKU-Q1,"an unbalanced quote\r', "(row)", "malformed_row"),
        (b'SKU-Q2,Title,text,"{""p"": NaN}"\r', "attributes.p", "non_finite_number"),
        (b'SKU-Q3,Title,text,"{""p"": 1, ""p"": 2}"\r', "attributes.p", "duplicate_key"),
        (b"SKU-Q4,Caf\xe9,text,\r", "title", "undecodable_bytes"),
        (b'SKU-Q5,Title,text,"' + b"[" * 5000 + b"]" * 5000 + b'"\r', "attributes", "too_deeply_nested"),
    ]
    body = [b"item_id,title,text,attributes\r"]
    expected: dict[int, tuple[str, str]] = {}
    line = 1
    for n, record in enumerate(records):
        body.append(record)
        line += 1 + record.count(b"\n")  # the multi-line record (a \n inside quotes) takes two lines
        if n % 20 == 10 and poison:
            text, field, rule = poison.pop(0)
            body.append(text)
            line += 1
            expected[line] = (field, rule)
    path = tmp_path / "poison.csv"
    path.write_bytes(b"".join(body))

    result = validate_drop(str(path), "run-csv", base_uri=str(tmp_path / "lake"))

    assert result.success and result.reconciles
    assert (result.staged, result.quarantined) == (len(good), len(expected))
    rejected = _strict_json_lines(result.quarantine_uri)
    assert {r["row"]: (r["field"], r["rule"]) for r in rejected} == expected
    staged, _ = read_items(result.staged_uri)
    assert [i.item_id for i in staged] == [values[0] for values in good]
    assert staged[3].text == good[3][2] and staged[4].text == good[4][2]
    assert staged[5].attributes == {"brand": "Acme", "price": 19.5}
