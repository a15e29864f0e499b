"""Validate one catalogue drop: quarantine bad rows with their reasons, stage the good ones, keep the evidence.

Two independent checks look at every row. The row rules of :mod:`lmindexer.catalog.items` (through
:class:`~lmindexer.catalog.readers.CatalogReader`) decide row by row and name the field and rule of each rejection;
the Great Expectations input suite looks at the same raw rows as one batch and gives the suite-level verdict and a
stored result. Any row GX flags must have been rejected by the row rules as well; if one was not (the two
definitions of the contract drifted apart), it is quarantined too, under the rule ``failed_expectation``, rather
than staged: the pipeline fails closed.

Outputs, under ``base_uri`` (``s3://bucket`` or a local directory):

- ``quarantine/<run>/rejected.jsonl``: one line per rejected row (source, row, item_id, field, rule, message, every
  broken rule, raw excerpt), in source order;
- ``quarantine/<run>/validation.json``: the GX validation result;
- ``quarantine/<run>/summary.json``: the counts (:class:`DropValidation`);
- ``staged/<run>/items.parquet``: the accepted items, in source order, only when the run passes.

Counts reconcile exactly: rows in = staged + quarantined. Everything is written before the threshold is enforced,
so a failed run leaves its evidence behind; a rerun with the same run id rewrites the same bytes.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmindexer.catalog.items import BigInteger, Item, RowError, raw_excerpt
from lmindexer.catalog.readers import CatalogReader, ReadSummary
from lmindexer.catalog.schema import STAGED_SCHEMA, STRING_FIELDS, item_columns
from lmindexer.errors import ConfigError
from lmindexer.storage.s3 import remove, upload_file, write_bytes
from lmindexer.validation.common import (
    DEFAULT_QUARANTINE_PREFIX,
    DEFAULT_STAGED_PREFIX,
    RunLayout,
    ValidationFailed,
    dumps_document,
    dumps_line,
)
from lmindexer.validation.gx import WARNING, SuiteOutcome, run_suite
from lmindexer.validation.suites import INPUT_SUITE, OBJECT_ROW, STRING, input_expectations

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.05
FAILED_EXPECTATION = "failed_expectation"
SOURCE_ROW = "source_row"
_STAGED_METADATA_KEY = b"lmindexer.staged"
_TRUE_STRINGS = {"true", "1", "yes", "y", "t"}  # the tombstone spellings the row rules accept

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # undecodable input bytes and "\ud800"-style escapes


@dataclass
class DropValidation:
    """The outcome of :func:`validate_drop`; ``rows_in == staged + quarantined`` always holds."""

    source: str
    run_id: str
    rows_in: int
    staged: int
    quarantined: int
    tombstones: int
    rejections_by_rule: dict[str, int]
    invalid_share: float
    threshold: float
    success: bool
    suite_success: bool
    drop_clean: bool
    staged_uri: str | None
    quarantine_uri: str
    result_uri: str
    summary_uri: str
    expectations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.staged + self.quarantined

    def counts(self) -> dict[str, Any]:
        """The small part worth recording in the processing state."""
        return {
            "rows_in": self.rows_in,
            "staged": self.staged,
            "quarantined": self.quarantined,
            "tombstones": self.tombstones,
            "rejections_by_rule": dict(self.rejections_by_rule),
            "success": self.success,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "run_id": self.run_id,
            "rows_in": self.rows_in,
            "staged": self.staged,
            "quarantined": self.quarantined,
            "tombstones": self.tombstones,
            "rejections_by_rule": dict(self.rejections_by_rule),
            "invalid_share": self.invalid_share,
            "threshold": self.threshold,
            "success": self.success,
            "suite_success": self.suite_success,
            "drop_clean": self.drop_clean,
            "staged_uri": self.staged_uri,
            "quarantine_uri": self.quarantine_uri,
            "result_uri": self.result_uri,
            "summary_uri": self.summary_uri,
            "expectations": self.expectations,
        }


# -- the contract frame: what GX sees of each raw row ------------------------------------------------------------


def _kind(value: Any) -> str | None:
    """A JSON-ish type name; ``None`` for a missing value, so "null" is left to the not-null expectations."""
    if value is None:
        return None
    if isinstance(value, str):
        return STRING
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | BigInteger):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _as_text(value: Any) -> str | None:
    # Uniqueness and regex checks need hashable text; a non-string id is still shown (as JSON) and flagged by type.
    if value is None:
        return None
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value):
            # pandas and GX hand strings to Arrow, which cannot encode a lone surrogate; the row rules reject
            # such an id anyway, so the suite sees it escaped.
            return raw_excerpt(value)
        # Compared in NFC, as the row rules compare ids, so both spellings of a duplicated id are listed.
        return unicodedata.normalize("NFC", value)
    return raw_excerpt(value)  # bounded, and safe for any value the parser let through (deep, huge, non-finite)


def _non_blank(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_tombstone(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS


class _ContractFrame:
    """Columns of the frame the input suite runs on, one entry per source row, built while the drop streams by.

    Only what the expectations need is kept (the item_id and type names, not the texts), so the frame stays small
    next to the drop itself.
    """

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {
            SOURCE_ROW: [],
            "row_kind": [],
            "item_id": [],
            "item_id_type": [],
            "title_type": [],
            "text_type": [],
            "category_type": [],
            "has_text": [],
        }

    def add(self, row: int, record: Any, parse_errors: Sequence[RowError]) -> None:
        c = self.columns
        c[SOURCE_ROW].append(row)
        if parse_errors or not isinstance(record, Mapping):
            c["row_kind"].append("malformed" if parse_errors else "not_an_object")
            for name in ("item_id", "item_id_type", "title_type", "text_type", "category_type", "has_text"):
                c[name].append(None)
            return
        c["row_kind"].append(OBJECT_ROW)
        item_id = record.get("item_id")
        c["item_id"].append(_as_text(item_id))
        c["item_id_type"].append(_kind(item_id))
        for name in STRING_FIELDS[1:]:
            c[f"{name}_type"].append(_kind(record.get(name)))
        c["has_text"].append(
            _is_tombstone(record.get("deleted")) or _non_blank(record.get("title")) or _non_blank(record.get("text"))
        )

    def rows(self) -> list[int]:
        return self.columns[SOURCE_ROW]

    def to_pandas(self, rejected: set[int]) -> Any:
        import pandas as pd

        data: dict[str, Any] = {
            # object dtype on purpose: pandas 3 would infer its string dtype and turn None into NaN.
            name: pd.Series(values, dtype="object")
            for name, values in self.columns.items()
            if name != SOURCE_ROW
        }
        data[SOURCE_ROW] = pd.Series(self.columns[SOURCE_ROW], dtype="int64")
        data["row_accepted"] = pd.Series([row not in rejected for row in self.columns[SOURCE_ROW]], dtype="bool")
        return pd.DataFrame(data)


class _TeeReader(CatalogReader):
    """A catalogue reader that also hands every parsed row (valid or not) to ``on_row`` before checking it.

    The suite must see the rows as they arrived, before the row rules normalise or drop them, and parsing them a
    second time would mean a second read of the drop and a second parser to keep in step; so this hooks the
    reader's own row stream. The CSV and Parquet tests pin that the row numbers line up.
    """

    def __init__(self, location: str, *, on_row: Callable[[int, Any, Sequence[RowError]], None], **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self._on_row = on_row

    def _parsed_rows(self) -> Iterator[Any]:
        for row, record, raw, errors in super()._parsed_rows():
            self._on_row(row, record, errors)
            yield row, record, raw, errors


# -- outputs -----------------------------------------------------------------------------------------------------


def _staged_batch(items: Sequence[Item]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(item_columns(items, staged=True), schema=STAGED_SCHEMA)


def _quarantine_record(source: str, errors: Sequence[RowError]) -> dict[str, Any]:
    first = errors[0]
    return {
        "source": source,
        "row": first.row,
        "item_id": first.item_id,
        "field": first.field,
        "rule": first.rule.value,
        "message": first.message,
        "errors": [{"field": e.field, "rule": e.rule.value, "message": e.message} for e in errors],
        "raw": first.raw,
    }


def _unexplained_rows(outcome: SuiteOutcome, rejected: set[int]) -> dict[int, list[tuple[str, str]]]:
    """Rows a warning expectation flagged that the row rules accepted: row -> [(column, expectation)].

    Uniqueness is the one expected difference: GX lists every copy of a duplicated id, while the row rules stage
    the first valid copy and quarantine the rest (the reader guarantees the staged ids are unique).
    """
    found: dict[int, list[tuple[str, str]]] = {}
    for expectation in outcome.failed(WARNING):
        if expectation.type == "expect_column_values_to_be_unique":
            continue
        for row in expectation.unexpected_values(SOURCE_ROW):
            if row is not None and int(row) not in rejected:
                found.setdefault(int(row), []).append((expectation.column or "(row)", expectation.type))
    return found


def _write_outputs(
    layout: RunLayout,
    *,
    rejected_path: Path,
    staged_path: Path,
    document: dict[str, Any],
    result: DropValidation,
    client: Any,
) -> None:
    upload_file(rejected_path, layout.rejected_rows, client=client)
    write_bytes(dumps_document(document), layout.validation_result, client=client)
    if result.success:
        upload_file(staged_path, layout.staged_items, client=client)
    else:
        # A staged file left by an earlier attempt of this run must not be picked up after a failure.
        remove(layout.staged_items, client=client)
    # The summary goes last: once it is there, everything it points to is complete.
    write_bytes(dumps_document(result.to_dict()), layout.summary, client=client)


def validate_drop(
    source_uri: str,
    run_id: str,
    *,
    base_uri: str,
    threshold: float = DEFAULT_THRESHOLD,
    s3_client: Any = None,
    staged_prefix: str = DEFAULT_STAGED_PREFIX,
    quarantine_prefix: str = DEFAULT_QUARANTINE_PREFIX,
    batch_size: int = 4096,
) -> DropValidation:
    """Validate the catalogue at ``source_uri`` (local path or ``s3://``) for run ``run_id``.

    Raises :class:`ValidationFailed` (carrying the :class:`DropValidation`) when more than ``threshold`` of the rows
    are rejected, after the quarantine, the GX result and the summary are written. File-level problems (missing
    object, unknown format, unreadable Parquet) raise :class:`~lmindexer.errors.CatalogError` and write nothing.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"the invalid-row threshold is a share between 0 and 1, got {threshold}")
    layout = RunLayout(base_uri, run_id, staged_prefix, quarantine_prefix)

    with tempfile.TemporaryDirectory(prefix="lmindexer-validate-") as tmp:
        rejected_path = Path(tmp) / "rejected.jsonl"
        staged_path = Path(tmp) / "items.parquet"
        metadata = {_STAGED_METADATA_KEY: json.dumps({"source": source_uri, "run_id": run_id}).encode()}
        rows = _stage_rows(source_uri, rejected_path, staged_path, metadata, s3_client=s3_client, batch_size=batch_size)
        by_rule = Counter(rows.summary.rejections_by_rule)
        extra_meta = {"source": source_uri, "run_id": run_id, "threshold": threshold}
        outcome = _input_suite(rows, threshold, run_id, extra_meta)
        unexplained = _unexplained_rows(outcome, rows.rejected)
        if unexplained:
            _quarantine_unexplained(source_uri, unexplained, rows.staged, staged_path, rejected_path, metadata)
            rows.rejected.update(unexplained)
            rows.staged = [row for row in rows.staged if row not in unexplained]
            by_rule[FAILED_EXPECTATION] += len(unexplained)
            # Again, on the rows now left: the stored result and the gate count the rows actually quarantined.
            outcome = _input_suite(rows, threshold, run_id, extra_meta)

        rows_in, quarantined, staged = rows.summary.rows_in, len(rows.rejected), len(rows.staged)
        if rows_in != staged + quarantined:
            raise AssertionError(f"counts do not reconcile: {rows_in} rows in, {staged} staged, {quarantined} out")
        share = quarantined / rows_in if rows_in else 0.0
        success = share <= threshold
        result = DropValidation(
            source=source_uri,
            run_id=run_id,
            rows_in=rows_in,
            staged=staged,
            quarantined=quarantined,
            tombstones=_tombstones(staged_path) if staged else 0,
            rejections_by_rule=dict(sorted(by_rule.items())),
            invalid_share=share,
            threshold=threshold,
            success=success,
            suite_success=outcome.critical_success,
            drop_clean=outcome.success and quarantined == 0,
            staged_uri=layout.staged_items if success else None,
            quarantine_uri=layout.rejected_rows,
            result_uri=layout.validation_result,
            summary_uri=layout.summary,
            expectations=[e.to_dict() for e in outcome.expectations],
        )
        _warn_if_gates_disagree(result)
        _write_outputs(
            layout,
            rejected_path=rejected_path,
            staged_path=staged_path,
            document=outcome.document,
            result=result,
            client=s3_client,
        )

    if not success:
        raise _over_threshold(result)
    return result


def _warn_if_gates_disagree(result: DropValidation) -> None:
    """The share threshold decides whether a drop passes; the input suite's own gate is reported beside it, and a
    disagreement between the two is worth a look at the suite or the threshold."""
    if result.success != result.suite_success:
        log.warning(
            "%s: the threshold (%s) and the input suite's gate disagree on %d of %d rows; the threshold decides",
            result.source,
            "pass" if result.success else "fail",
            result.quarantined,
            result.rows_in,
        )


def _over_threshold(result: DropValidation) -> ValidationFailed:
    rules = ", ".join(f"{rule} {count}" for rule, count in result.rejections_by_rule.items())
    return ValidationFailed(
        f"{result.source}: {result.quarantined} of {result.rows_in} rows ({result.invalid_share:.1%}) were rejected, "
        f"more than the {result.threshold:.1%} allowed ({rules}); rejected rows and reasons are in "
        f"{result.quarantine_uri}",
        result,
    )


@dataclass
class _StagedRows:
    """What reading a drop produced: the read's counts, the contract frame of every row, the rejected source rows,
    and the source row of each staged item in file order."""

    summary: ReadSummary
    frame: _ContractFrame
    rejected: set[int]
    staged: list[int]


def _stage_rows(
    source_uri: str,
    rejected_path: Path,
    staged_path: Path,
    metadata: dict[bytes | str, bytes],
    *,
    s3_client: Any,
    batch_size: int,
) -> _StagedRows:
    """Read the drop once: rows that break a row rule to ``rejected_path``, the others to ``staged_path``."""
    frame = _ContractFrame()
    rejected: set[int] = set()
    staged_rows: list[int] = []
    pending: list[int] = []  # rows parsed since the last batch was handed out
    with (
        rejected_path.open("w", encoding="utf-8") as rejects,
        pq.ParquetWriter(staged_path, STAGED_SCHEMA.with_metadata(metadata), compression="zstd") as writer,
    ):

        def on_row(row: int, record: Any, errors: Sequence[RowError]) -> None:
            frame.add(row, record, errors)
            pending.append(row)

        def on_reject(errors: Sequence[RowError]) -> None:
            rejected.add(errors[0].row)
            _write_line(rejects, _quarantine_record(source_uri, errors))

        reader = _TeeReader(source_uri, on_row=on_row, on_reject=on_reject, s3_client=s3_client, batch_size=batch_size)
        for batch in reader:
            # The reader checks rows one at a time and hands out a batch right after its last item, so the
            # rows parsed since the previous batch are exactly this batch's items plus rejected rows.
            accepted = [row for row in pending if row not in rejected]
            if len(accepted) != len(batch):
                raise AssertionError(f"row bookkeeping lost track: {len(accepted)} rows for {len(batch)} items")
            staged_rows.extend(accepted)
            pending.clear()
            writer.write_batch(_staged_batch(batch))
    return _StagedRows(reader.summary, frame, rejected, staged_rows)


def _input_suite(rows: _StagedRows, threshold: float, run_id: str, extra_meta: dict[str, Any]) -> Any:
    """The GX input suite over every row of the drop, the rejected ones marked as such."""
    return run_suite(
        INPUT_SUITE,
        rows.frame.to_pandas(rows.rejected),
        input_expectations(threshold),
        index_columns=[SOURCE_ROW, "item_id"],
        run_name=run_id,
        extra_meta=extra_meta,
    )


def _tombstones(staged_path: Path) -> int:
    deleted = pq.read_table(staged_path, columns=["deleted"]).column("deleted")
    return int(pc.sum(deleted).as_py() or 0)


def _write_line(handle: IO[str], record: dict[str, Any]) -> None:
    handle.write(dumps_line(record) + "\n")


def _quarantine_unexplained(
    source: str,
    unexplained: Mapping[int, list[tuple[str, str]]],
    staged_rows: Sequence[int],
    staged_path: Path,
    rejected_path: Path,
    metadata: Mapping[bytes, bytes],
) -> None:
    """Move rows only the input suite rejected from the staged file to the quarantine file."""
    log.warning(
        "%s: %d rows passed the row rules but failed the input suite; quarantining them as %s",
        source,
        len(unexplained),
        FAILED_EXPECTATION,
    )
    table = pq.read_table(staged_path)
    keep = [row not in unexplained for row in staged_rows]
    moved = table.filter(pa.array([not k for k in keep]))
    moved_rows = [row for row in staged_rows if row in unexplained]
    with rejected_path.open("a", encoding="utf-8") as rejects:
        for row, values in zip(moved_rows, moved.to_pylist(), strict=True):
            failures = unexplained[row]
            errors = [
                {"field": column, "rule": FAILED_EXPECTATION, "message": f"{expectation} failed on this row"}
                for column, expectation in failures
            ]
            _write_line(
                rejects,
                {
                    "source": source,
                    "row": row,
                    "item_id": values.get("item_id"),
                    "field": errors[0]["field"],
                    "rule": FAILED_EXPECTATION,
                    "message": errors[0]["message"] + " although the row rules accepted it",
                    "errors": errors,
                    "raw": raw_excerpt(values),
                },
            )
    pq.write_table(
        table.filter(pa.array(keep)).replace_schema_metadata(dict(metadata)), staged_path, compression="zstd"
    )
