"""The expectation suites, in code so they are versioned, reviewed and tested with the library.

INPUT (``lmindexer.catalogue_rows``) runs on one frame row per source row of a drop (see
:func:`lmindexer.validation.drop.contract_frame`). Each Item-contract rule GX can state on raw values is one
expectation of severity *warning*: it lists the rows that break it, and those rows are quarantined. The one
*critical* expectation is the gate: at least ``1 - threshold`` of the rows must be accepted. So GX's verdict on the
drop ("no critical expectation failed") is the run's verdict, while its ``success`` flag says whether the drop was
entirely clean.

OUTPUT (``lmindexer.id_table``) runs on one row per ID-table row plus one per staged item that has no row; every
expectation is critical, since a duplicate or out-of-range ID must never be published.
"""

from __future__ import annotations

from typing import Any

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH, Rule
from lmindexer.catalog.schema import STRING_FIELDS
from lmindexer.idtable import IdSpace
from lmindexer.validation.gx import CRITICAL, WARNING, load

INPUT_SUITE = "lmindexer.catalogue_rows"
OUTPUT_SUITE = "lmindexer.id_table"

# C0, DEL and C1: exactly Unicode category Cc, which the row rules reject. \A and \Z because "$" would also match
# before a trailing newline and let "id\n" through.
NO_CONTROL_CHARACTERS = r"\A[^\x00-\x1f\x7f-\x9f]*\Z"
NOT_BLANK = r"\S"
STRING = "string"
OBJECT_ROW = "object"


def _meta(*rules: Rule, note: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"row_rules": [r.value for r in rules]}
    if note:
        meta["note"] = note
    return meta


def input_expectations(threshold: float) -> list[Any]:
    """The Item contract on raw rows, and the invalid-share gate."""
    gxe = load().expectations

    expectations: list[Any] = [
        gxe.ExpectColumnValuesToBeInSet(
            column="row_kind",
            value_set=[OBJECT_ROW],
            severity=WARNING,
            meta=_meta(Rule.MALFORMED_JSON, Rule.MALFORMED_ROW, Rule.WRONG_TYPE, note="each row is one object"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", severity=WARNING, meta=_meta(Rule.MISSING_ITEM_ID)),
        gxe.ExpectColumnValuesToBeInSet(
            column="item_id_type", value_set=[STRING], severity=WARNING, meta=_meta(Rule.WRONG_TYPE)
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="item_id", regex=NOT_BLANK, severity=WARNING, meta=_meta(Rule.MISSING_ITEM_ID, note="not blank")
        ),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="item_id",
            min_value=1,
            max_value=MAX_ITEM_ID_LENGTH,
            severity=WARNING,
            meta=_meta(Rule.MISSING_ITEM_ID, Rule.ITEM_ID_TOO_LONG),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="item_id", regex=NO_CONTROL_CHARACTERS, severity=WARNING, meta=_meta(Rule.CONTROL_CHARACTERS)
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="item_id",
            severity=WARNING,
            meta=_meta(
                Rule.DUPLICATE_ITEM_ID,
                note="GX lists every copy; the row rules keep the first valid one and quarantine the rest",
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="has_text",
            value_set=[True],
            severity=WARNING,
            meta=_meta(Rule.EMPTY_TEXT, note="title or text non-blank, unless the row is a tombstone"),
        ),
    ]
    for name in STRING_FIELDS[1:]:  # item_id has its own expectations above
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=f"{name}_type", value_set=[STRING], severity=WARNING, meta=_meta(Rule.WRONG_TYPE)
            )
        )
    expectations.append(
        gxe.ExpectColumnValuesToBeInSet(
            column="row_accepted",
            value_set=[True],
            mostly=max(0.0, min(1.0, 1.0 - threshold)),
            severity=CRITICAL,
            meta={"note": f"at most {threshold:.2%} of the rows may be quarantined", "threshold": threshold},
        )
    )
    return expectations


def output_expectations(space: IdSpace) -> list[Any]:
    """One unique, well-formed ID per item, inside the ID space of ``space``, and no staged item without one."""
    gxe = load().expectations

    expectations: list[Any] = [
        gxe.ExpectColumnValuesToNotBeNull(
            column="sid", severity=CRITICAL, meta={"note": "every staged live item has an ID (no item lost)"}
        ),
        gxe.ExpectColumnValuesToBeUnique(column="sid", severity=CRITICAL),
        gxe.ExpectColumnValuesToBeUnique(column="item_id", severity=CRITICAL),
        gxe.ExpectColumnValuesToBeBetween(
            column="levels",
            min_value=space.levels,
            max_value=space.levels,
            severity=CRITICAL,
            meta={"note": "one code per codebook level"},
        ),
    ]
    for level, size in enumerate(space.codebook_sizes):
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=f"code_{level}",
                min_value=0,
                max_value=size - 1,
                severity=CRITICAL,
                meta={"note": f"level {level} codebook has {size} codes"},
            )
        )
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column="suffix", min_value=0, severity=CRITICAL),
        gxe.ExpectColumnValuesToBeInSet(
            column="snapshot_version", value_set=[space.snapshot_version], severity=CRITICAL
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="sid_matches_codes",
            value_set=[True],
            severity=CRITICAL,
            meta={"note": "sid is the codes and suffix joined by '-'"},
        ),
    ]
    return expectations
