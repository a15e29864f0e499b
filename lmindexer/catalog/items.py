"""The Item contract (one catalogue row) and the per-row rules that enforce it.

A row is checked field by field; every broken rule becomes one :class:`RowError` naming the source, the row, the field
and the rule, so a rejection report tells the catalogue owner exactly what to fix. Fields outside the contract are
kept under ``attributes`` (an explicit ``attributes`` object wins on a name clash).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_ITEM_ID_LENGTH = 256
CONTRACT_FIELDS = ("item_id", "title", "text", "category", "attributes", "updated_at", "deleted")
ROW_FIELD = "(row)"  # the field name used when a rule concerns the whole row
_RAW_EXCERPT_CHARS = 500
_TRUE_STRINGS = {"true", "1", "yes", "y", "t"}
_FALSE_STRINGS = {"false", "0", "no", "n", "f", ""}


class Rule(StrEnum):
    """Why a row was rejected. The values are stable: reports and quarantine files use them."""

    MISSING_ITEM_ID = "missing_item_id"
    DUPLICATE_ITEM_ID = "duplicate_item_id"
    ITEM_ID_TOO_LONG = "item_id_too_long"
    CONTROL_CHARACTERS = "control_characters"
    EMPTY_TEXT = "empty_text"
    WRONG_TYPE = "wrong_type"
    INVALID_TIMESTAMP = "invalid_timestamp"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_ROW = "malformed_row"
    UNDECODABLE_BYTES = "undecodable_bytes"


@dataclass(frozen=True, slots=True)
class RowError:
    """One broken rule on one row. ``row`` is the line number in JSONL/CSV files and the 1-based row in Parquet."""

    source: str
    row: int
    field: str
    rule: Rule
    message: str
    item_id: str | None = None
    raw: str | None = None

    def describe(self) -> str:
        return f"{self.source}:{self.row}: {self.field}: {self.rule.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "row": self.row,
            "field": self.field,
            "rule": self.rule.value,
            "message": self.message,
            "item_id": self.item_id,
            "raw": self.raw,
        }


@dataclass(frozen=True, slots=True)
class Item:
    """A validated catalogue item. ``deleted`` marks a tombstone (only ``item_id`` is required then)."""

    item_id: str
    title: str | None = None
    text: str | None = None
    category: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    updated_at: str | None = None
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "text": self.text,
            "category": self.category,
            "attributes": dict(self.attributes),
            "updated_at": self.updated_at,
            "deleted": self.deleted,
        }

    def field_value(self, name: str) -> Any:
        """A contract field, or an attribute of that name (labels such as ``class`` live in attributes)."""
        if name in CONTRACT_FIELDS:
            return getattr(self, name)
        return self.attributes.get(name)


def raw_excerpt(value: Any) -> str:
    """A bounded, printable rendering of a rejected row for reports and quarantine files."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="backslashreplace")
    elif isinstance(value, str):
        text = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = repr(value)
        text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
    text = text.rstrip("\r\n")
    return text if len(text) <= _RAW_EXCERPT_CHARS else text[:_RAW_EXCERPT_CHARS] + "…"


# Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape); JSON "\ud800" escapes do too.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def _has_lone_surrogate(value: str) -> bool:
    return _LONE_SURROGATE.search(value) is not None


def _control_characters(value: str) -> list[str]:
    return sorted({f"U+{ord(ch):04X}" for ch in _CONTROL.findall(value)})


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), type(value).__name__
    )


def _jsonable(value: Any) -> Any:
    """Attributes must survive JSON (search documents, reports); convert what Parquet/NumPy hand us."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


def _normalise_timestamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    elif isinstance(value, int | float):
        stamp = dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    elif isinstance(value, str):
        stamp = dt.datetime.fromisoformat(value.strip())
    else:
        raise ValueError(f"expected an ISO-8601 string or epoch seconds, got {_type_name(value)}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).isoformat()


class RowChecker:
    """Applies the Item contract to raw records of one source."""

    def __init__(self, source: str) -> None:
        self.source = source

    def _error(self, row: int, field_name: str, rule: Rule, message: str, item_id: Any, raw: Any) -> RowError:
        return RowError(
            source=self.source,
            row=row,
            field=field_name,
            rule=rule,
            message=message,
            item_id=item_id if isinstance(item_id, str) and item_id else None,
            raw=raw_excerpt(raw),
        )

    def row_error(self, row: int, rule: Rule, message: str, raw: Any, field_name: str = ROW_FIELD) -> RowError:
        return self._error(row, field_name, rule, message, None, raw)

    def check(self, record: Any, row: int, raw: Any = None) -> tuple[Item | None, list[RowError]]:
        """Validate one parsed record. Returns the item, or ``None`` and every rule it breaks."""
        raw = record if raw is None else raw
        if not isinstance(record, Mapping):
            return None, [
                self.row_error(row, Rule.WRONG_TYPE, f"a row must be an object, got {_type_name(record)}", raw)
            ]
        errors: list[RowError] = []
        item_id = record.get("item_id")

        def fail(field_name: str, rule: Rule, message: str) -> None:
            errors.append(self._error(row, field_name, rule, message, item_id, raw))

        # Undecodable bytes first: every other rule would misreport such a value.
        for key, value in record.items():
            if isinstance(value, str) and _has_lone_surrogate(value):
                fail(str(key), Rule.UNDECODABLE_BYTES, "value contains bytes that are not valid UTF-8")
        if errors:
            return None, errors

        if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
            fail("item_id", Rule.MISSING_ITEM_ID, "item_id is required and must be a non-empty string")
        elif not isinstance(item_id, str):
            fail("item_id", Rule.WRONG_TYPE, f"item_id must be a string, got {_type_name(item_id)}")
        else:
            if len(item_id) > MAX_ITEM_ID_LENGTH:
                fail(
                    "item_id",
                    Rule.ITEM_ID_TOO_LONG,
                    f"item_id has {len(item_id)} characters; at most {MAX_ITEM_ID_LENGTH} are allowed",
                )
            controls = _control_characters(item_id)
            if controls:
                fail("item_id", Rule.CONTROL_CHARACTERS, f"item_id contains control characters {', '.join(controls)}")

        strings: dict[str, str | None] = {}
        for name in ("title", "text", "category"):
            value = record.get(name)
            if value is None or isinstance(value, str):
                strings[name] = value
            else:
                fail(name, Rule.WRONG_TYPE, f"{name} must be a string, got {_type_name(value)}")

        deleted = record.get("deleted")
        is_deleted = False
        if isinstance(deleted, bool):
            is_deleted = deleted
        elif deleted is None:
            is_deleted = False
        elif isinstance(deleted, str) and deleted.strip().lower() in _TRUE_STRINGS | _FALSE_STRINGS:
            is_deleted = deleted.strip().lower() in _TRUE_STRINGS
        elif isinstance(deleted, int) and deleted in (0, 1):
            is_deleted = bool(deleted)
        else:
            fail("deleted", Rule.WRONG_TYPE, f"deleted must be a boolean, got {deleted!r:.40}")

        attributes: dict[str, Any] = {}
        explicit = record.get("attributes")
        if isinstance(explicit, str) and explicit.strip():
            try:
                explicit = json.loads(explicit)
            except json.JSONDecodeError:
                fail("attributes", Rule.WRONG_TYPE, "attributes must be a JSON object; the text is not valid JSON")
                explicit = None
        if explicit is not None and explicit != "":
            if isinstance(explicit, Mapping):
                attributes.update(_jsonable(explicit))
            elif isinstance(explicit, list | tuple) and all(
                isinstance(p, tuple | list) and len(p) == 2 for p in explicit
            ):
                attributes.update({str(k): _jsonable(v) for k, v in explicit})  # Parquet map columns
            elif not any(e.field == "attributes" for e in errors):
                fail("attributes", Rule.WRONG_TYPE, f"attributes must be an object, got {_type_name(explicit)}")
        for key, value in record.items():
            if key not in CONTRACT_FIELDS and value is not None:
                attributes.setdefault(str(key), _jsonable(value))

        updated_at = record.get("updated_at")
        normalised_updated_at = None
        if updated_at is not None and updated_at != "":
            try:
                normalised_updated_at = _normalise_timestamp(updated_at)
            except (ValueError, OverflowError, OSError) as exc:
                fail("updated_at", Rule.INVALID_TIMESTAMP, f"updated_at is not a valid timestamp ({exc})")

        if not is_deleted and "title" in strings and "text" in strings:
            title, text = strings["title"], strings["text"]
            if not (title and title.strip()) and not (text and text.strip()):
                fail("text", Rule.EMPTY_TEXT, "title and text are both empty; at least one must have content")

        if errors:
            return None, errors
        return (
            Item(
                item_id=item_id,
                title=strings.get("title") or None,
                text=strings.get("text") or None,
                category=strings.get("category") or None,
                attributes=attributes,
                updated_at=normalised_updated_at,
                deleted=is_deleted,
            ),
            [],
        )
