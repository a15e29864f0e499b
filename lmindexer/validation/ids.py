"""Validate an ID table before it is published: one unique, in-range ID per item, and no staged item without one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmindexer.idtable import SID_SEPARATOR, IdTable, TableForCheck, format_sid
from lmindexer.storage.s3 import local_copy, write_bytes
from lmindexer.validation.common import ValidationFailed, dumps_document
from lmindexer.validation.gx import run_suite
from lmindexer.validation.suites import OUTPUT_SUITE, output_expectations

_EXAMPLES = 5


@dataclass
class OutputValidation:
    """The outcome of :func:`validate_ids`. ``failures`` lists each failed expectation with a few offending rows."""

    success: bool
    snapshot_version: str
    rows: int
    staged_items: int
    missing_items: int
    failures: list[dict[str, Any]]
    expectations: list[dict[str, Any]]
    rows_checked: int = 0  # the rows the suite ran on (all, or those from ``first_row`` on)
    result_uri: str | None = None
    document: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        if self.success:
            return f"ID table {self.snapshot_version}: {self.rows} rows, all {self.staged_items} staged items have IDs"
        parts = [f"{f['expectation']}({f['column']}): {f['unexpected_count']} rows" for f in self.failures]
        return f"ID table {self.snapshot_version} failed: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "snapshot_version": self.snapshot_version,
            "rows": self.rows,
            "staged_items": self.staged_items,
            "missing_items": self.missing_items,
            "failures": self.failures,
            "expectations": self.expectations,
            "rows_checked": self.rows_checked,
            "result_uri": self.result_uri,
        }


def staged_item_ids(staged_uri: str, *, live_only: bool = True, s3_client: Any = None) -> list[str]:
    """The item_ids of a staged file (``staged/<run>/items.parquet``); tombstones are left out unless asked for."""
    with local_copy(staged_uri, client=s3_client, suffix=".parquet") as path:
        table = pq.read_table(path, columns=["item_id", "deleted"])
    ids = table.column("item_id").to_pylist()
    if not live_only:
        return ids
    return [item_id for item_id, deleted in zip(ids, table.column("deleted").to_pylist(), strict=True) if not deleted]


def _frame(checked: IdTable, missing: list[str]) -> Any:
    """The suite's data frame: one row per ID row checked, then one empty row per staged item without an ID
    anywhere in the table (``missing``)."""
    lengths = pc.list_value_length(checked.table.column("codes")).to_numpy(zero_copy_only=False)
    build = _frame_column_wise if (lengths == checked.space.levels).all() else _frame_row_by_row
    return build(checked, missing)


def _frame_column_wise(table: IdTable, missing: list[str]) -> Any:
    """:func:`_frame` for rows that all have their L codes (every sound table): Arrow and numpy passes, so a
    million-row table costs seconds, not a Python loop per row."""
    import pandas as pd

    arrow = table.table
    pad = len(missing)
    codes = table.code_matrix()
    parts = [pc.cast(pa.array(codes[:, level]), pa.string()) for level in range(codes.shape[1])]
    expected_sids = pc.binary_join_element_wise(*parts, pc.cast(arrow.column("suffix"), pa.string()), SID_SEPARATOR)
    matches = pc.equal(expected_sids, arrow.column("sid")).to_numpy(zero_copy_only=False)

    def column(values: Any, dtype: str) -> Any:
        return pd.concat([pd.Series(values, dtype=dtype), pd.Series([None] * pad, dtype=dtype)], ignore_index=True)

    data: dict[str, Any] = {
        "item_id": pd.Series(arrow.column("item_id").to_pylist() + missing, dtype="object"),
        "sid": column(arrow.column("sid").to_pylist(), "object"),
        "suffix": column(arrow.column("suffix").to_numpy(), "Int64"),
        "snapshot_version": column(arrow.column("snapshot_version").to_pylist(), "object"),
        "levels": column(np.full(len(arrow), codes.shape[1]), "Int64"),
        "sid_matches_codes": column(matches.astype(object), "object"),
    }
    for level in range(codes.shape[1]):
        data[f"code_{level}"] = column(codes[:, level], "Int64")
    return pd.DataFrame(data)


def _frame_row_by_row(table: IdTable, missing: list[str]) -> Any:
    """:func:`_frame` for a table with malformed rows (codes of the wrong length)."""
    import pandas as pd

    levels = table.space.levels
    codes = [list(c) for c in table.table.column("codes").to_pylist()]
    suffixes = table.table.column("suffix").to_pylist()
    sids = table.table.column("sid").to_pylist()
    item_ids = table.item_ids
    pad = [None] * len(missing)
    data: dict[str, Any] = {
        "item_id": pd.Series(item_ids + missing, dtype="object"),
        "sid": pd.Series(sids + pad, dtype="object"),
        "suffix": pd.Series(suffixes + pad, dtype="Int64"),
        "snapshot_version": pd.Series(table.table.column("snapshot_version").to_pylist() + pad, dtype="object"),
        "levels": pd.Series([len(c) for c in codes] + pad, dtype="Int64"),
        "sid_matches_codes": pd.Series(
            [sid == format_sid(c, s) for sid, c, s in zip(sids, codes, suffixes, strict=True)] + pad, dtype="object"
        ),
    }
    for level in range(levels):
        data[f"code_{level}"] = pd.Series([c[level] if len(c) > level else None for c in codes] + pad, dtype="Int64")
    return pd.DataFrame(data)


def validate_ids(
    table: IdTable | TableForCheck,
    staged_item_ids: Iterable[str] | pa.Array | pa.ChunkedArray = (),
    *,
    run_id: str = "ids",
    result_uri: str | None = None,
    raise_on_failure: bool = False,
    s3_client: Any = None,
    first_row: int = 0,
    staged_rows: pa.Array | pa.ChunkedArray | None = None,
) -> OutputValidation:
    """Run the output suite on ``table``; ``staged_item_ids`` are the live items that must each have a row.

    ``first_row``: run the suite on the rows from that one on (the rows an incremental run added) and look the
    staged items up in the whole table. Only for a table read with :meth:`IdTable.read`, which verifies every
    row's structure (one row per item, one item per ID, codes in range, sids spelling their codes) on read: the
    earlier rows were checked by the suite when they were added and cannot have changed since (every write of the
    table keeps them byte for byte).

    ``table`` may also be what :func:`~lmindexer.idtable.read_for_check` read (the rows from its own first row on,
    and every row's item_id): the suite runs on those rows, as with ``first_row``.

    ``staged_rows``: each staged item's row in ``table`` (null: none), as ``pc.index_in(staged_item_ids,
    value_set=<the table's item_id column>)`` gives it, for a caller that has looked the items up already (check,
    for the quality metrics); the staged ids are then an Arrow column of distinct ids (a catalogue's item_id).

    With ``result_uri`` the GX result is stored there (local path or ``s3://``). With ``raise_on_failure`` a failed
    suite raises :class:`ValidationFailed` carrying the :class:`OutputValidation`, after the result is stored.
    """
    if isinstance(table, TableForCheck):
        if first_row:
            raise ValueError("a TableForCheck already starts at the first row to check")
        checked, rows, all_ids, space = table.recent, table.rows, table.item_ids, table.space
    else:
        start = min(first_row, len(table))
        checked = IdTable(table.table.slice(start), table.space) if start else table
        rows, all_ids, space = len(table), table.table.column("item_id"), table.space
    if staged_rows is not None:
        if not isinstance(staged_item_ids, pa.Array | pa.ChunkedArray) or len(staged_rows) != len(staged_item_ids):
            raise ValueError("staged_rows needs the staged ids as an Arrow column of the same length")
        staged = staged_item_ids
        absent = pc.filter(staged, pc.is_null(staged_rows))
    else:
        if isinstance(staged_item_ids, pa.Array | pa.ChunkedArray):  # a catalogue's column: no Python pass over it
            staged = pc.unique(staged_item_ids)
        else:
            staged = pa.array(list(dict.fromkeys(staged_item_ids)), pa.string())
        absent = pc.filter(staged, pc.invert(pc.is_in(staged, value_set=all_ids)))
    missing = len(absent)
    frame = _frame(checked, absent.to_pylist())
    outcome = run_suite(
        OUTPUT_SUITE,
        frame,
        output_expectations(space),
        index_columns=["item_id"],
        run_name=run_id,
        extra_meta={
            "run_id": run_id,
            "snapshot_version": space.snapshot_version,
            "codebook_sizes": list(space.codebook_sizes),
        },
    )
    failures = []
    for expectation in outcome.failed():
        details = expectation.to_dict()
        details["examples"] = expectation.unexpected_index[:_EXAMPLES]
        failures.append(details)
    result = OutputValidation(
        success=outcome.critical_success,
        snapshot_version=space.snapshot_version,
        rows=rows,
        staged_items=len(staged),
        missing_items=missing,
        failures=failures,
        expectations=[e.to_dict() for e in outcome.expectations],
        rows_checked=len(checked),
        result_uri=result_uri,
        document=outcome.document,
    )
    if result_uri:
        write_bytes(dumps_document(outcome.document), result_uri, client=s3_client)
    if raise_on_failure and not result.success:
        raise ValidationFailed(result.describe(), result)
    return result
