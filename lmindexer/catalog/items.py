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
import struct
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lmindexer.catalog.values import (
    INT64_MAX,
    INT64_MIN,
    BigInteger,
    decode_json,
    describe_json_error,
    jsonable,
    printable,
    type_name,
)

MAX_ITEM_ID_LENGTH = 256
# How deeply arrays and objects may nest in a row; the row itself is level 1. Search engines cap the depth of a
# document's objects (Elasticsearch's index.mapping.depth.limit defaults to 20; attributes sit one level below the
# document's root), and a parser must not recurse without bound on a hostile row.
MAX_NESTING_DEPTH = 16
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
    DUPLICATE_KEY = "duplicate_key"
    NON_FINITE_NUMBER = "non_finite_number"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    ROW_TOO_LARGE = "row_too_large"


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
    # Clip before escaping: a rejected row may be megabytes long, and escaping only ever lengthens the text.
    head = _RAW_EXCERPT_CHARS * 4
    if isinstance(value, bytes):
        text = value[:head].decode("utf-8", errors="backslashreplace")
    elif isinstance(value, str):
        text = printable(value[:head])
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            try:
                text = repr(value)
            except (ValueError, RecursionError):  # a huge int, or nesting too deep even for repr
                text = f"<{type_name(value)} that cannot be shown>"
        text = printable(text[:head])
    text = text.rstrip("\r\n")
    return text if len(text) <= _RAW_EXCERPT_CHARS else text[:_RAW_EXCERPT_CHARS] + "…"


# Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape); JSON "\ud800" escapes do too.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_FLOAT32 = struct.Struct("<f")
_MAX_KEY_CHARS = 100  # of one key in a field path; a key can be as long as the row


def _control_characters(value: str) -> list[str]:
    return sorted({f"U+{ord(ch):04X}" for ch in _CONTROL.findall(value)})


def parse_json(text: str) -> tuple[Any, tuple[Rule, str] | None]:
    """Parse one JSON text (a JSONL line, a CSV ``attributes`` cell) so that no input can crash the read.

    Returns ``(value, None)``, or ``(None, (rule, message))`` when the text is rejected: ``malformed_json`` for bad
    syntax, ``too_deeply_nested`` when it nests deeper than the parser can go. Repeated keys, huge integers and
    non-finite numbers (``NaN``, ``Infinity``, ``1e999``) do parse; the row rules reject them, naming the field.
    """
    try:
        return decode_json(text), None
    except json.JSONDecodeError as exc:
        return None, (Rule.MALFORMED_JSON, f"not valid JSON: {describe_json_error(text, exc)}")
    except RecursionError:
        return None, (
            Rule.TOO_DEEPLY_NESTED,
            f"arrays and objects nest too deeply to parse; at most {MAX_NESTING_DEPTH} levels are allowed",
        )


def _fits_float32(value: float) -> bool:
    try:
        _FLOAT32.pack(value)  # rounds like the engine's float parser; overflows exactly when it would
    except OverflowError:
        return False
    return True


# The rules found by walking every value of a row, in the order they are reported. The first two stop the check:
# undecodable text would make every other rule misreport, and values nested too deeply are unsafe to walk further.
_Path = tuple[str | int, ...]
_VALUE_RULES = (
    Rule.UNDECODABLE_BYTES,
    Rule.TOO_DEEPLY_NESTED,
    Rule.DUPLICATE_KEY,
    Rule.NON_FINITE_NUMBER,
    Rule.NUMBER_OUT_OF_RANGE,
)
_BLOCKING_RULES = (Rule.UNDECODABLE_BYTES, Rule.TOO_DEEPLY_NESTED)
_VALUE_MESSAGES = {
    Rule.UNDECODABLE_BYTES: "not valid UTF-8: {where} (undecodable bytes, or an escaped lone surrogate)",
    Rule.TOO_DEEPLY_NESTED: (
        "nested too deeply: {where} (at most " + str(MAX_NESTING_DEPTH) + " levels of arrays and objects; "
        "the row itself is level 1)"
    ),
    Rule.DUPLICATE_KEY: "repeated key: {where} (a row names each key once; which copy wins would depend on the reader)",
    Rule.NON_FINITE_NUMBER: "not a finite number: {where} (the search engine cannot index NaN or Infinity)",
    Rule.NUMBER_OUT_OF_RANGE: (
        "number out of range: {where} (integers must fit in a signed 64-bit long and fractional numbers in a "
        "32-bit float, as the search engine stores them)"
    ),
}


def _scan_values(value: Any, path: _Path, level: int, found: dict[Rule, list[_Path]]) -> None:
    """Collect, by rule, the paths of every value the contract rejects wherever it sits in the row.

    Iterative on purpose: a row can nest as deeply as the parser allowed, far beyond what recursion would survive.
    ``level`` is the nesting level of ``value`` (the row itself is level 1).
    """
    stack: list[tuple[_Path, Any, int]] = [(path, value, level)]
    while stack:
        path, value, level = stack.pop()
        rule: Rule | None = None
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                rule = Rule.UNDECODABLE_BYTES
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                rule = Rule.NUMBER_OUT_OF_RANGE
        elif isinstance(value, float):
            if not math.isfinite(value):
                rule = Rule.NON_FINITE_NUMBER
            elif not _fits_float32(value):
                rule = Rule.NUMBER_OUT_OF_RANGE
        elif isinstance(value, BigInteger):
            rule = Rule.NUMBER_OUT_OF_RANGE
        elif isinstance(value, Mapping | list | tuple):
            if level > MAX_NESTING_DEPTH:
                rule = Rule.TOO_DEEPLY_NESTED
            elif isinstance(value, Mapping):
                for key in getattr(value, "duplicates", ()):
                    found.setdefault(Rule.DUPLICATE_KEY, []).append((*path, key))
                children = []
                for key, child in value.items():
                    name = str(key)
                    if _LONE_SURROGATE.search(name):
                        found.setdefault(Rule.UNDECODABLE_BYTES, []).append((*path, name))
                    children.append(((*path, name), child, level + 1))
                stack.extend(reversed(children))
            else:
                stack.extend(((*path, index), child, level + 1) for index, child in reversed(list(enumerate(value))))
        if rule is not None:
            found.setdefault(rule, []).append(path)


def _render_path(path: _Path) -> str:
    """``("attributes", "sizes", 2)`` -> ``attributes.sizes[2]``, printable and bounded."""
    parts: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
            continue
        name = segment if len(segment) <= _MAX_KEY_CHARS else segment[:_MAX_KEY_CHARS] + "…"
        parts.append(("." if parts else "") + printable(name))
    return "".join(parts) or ROW_FIELD


def _where(paths: list[_Path]) -> str:
    shown = ", ".join(_render_path(p) for p in paths[:3])
    return shown if len(paths) <= 3 else f"{shown} and {len(paths) - 3} more"


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
        raise ValueError(f"expected an ISO-8601 string or epoch seconds, got {type_name(value)}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).isoformat()


# Records one broken rule of the row being checked: (field, rule, message).
_Fail = Callable[[str, Rule, str], None]


def _check_values(record: Mapping[str, Any], fail: _Fail) -> tuple[Any, dict[Rule, list[_Path]]]:
    """The rules on every value of the row, at any depth (keys included), which run before the field rules: what
    the search engine or a UTF-8 writer cannot take must be rejected here, with its field, or it fails a later step
    for the whole drop.

    Returns the explicit ``attributes`` (parsed, when a CSV cell holds the object as JSON text; ``None`` when that
    text is not JSON) and the paths of the rejected values, by rule.
    """
    found: dict[Rule, list[_Path]] = {}
    _scan_values(record, (), 1, found)
    explicit = record.get("attributes")
    blocked = any(rule in found for rule in _BLOCKING_RULES)
    if isinstance(explicit, str) and explicit.strip() and not blocked:
        explicit, problem = parse_json(explicit)  # a CSV cell holding the attributes object as JSON text
        if problem is None:
            _scan_values(explicit, ("attributes",), 2, found)
        elif problem[0] is Rule.TOO_DEEPLY_NESTED:
            fail("attributes", problem[0], problem[1])
        else:
            fail("attributes", Rule.WRONG_TYPE, "attributes must be a JSON object; the text is not valid JSON")
    for rule in _VALUE_RULES:
        paths = found.get(rule)
        if paths:
            fail(_render_path(paths[0]), rule, _VALUE_MESSAGES[rule].format(where=_where(paths)))
    return explicit, found


def _check_item_id(item_id: Any, flagged: set[str], fail: _Fail) -> str | None:
    """The item_id in its one spelling, or ``None`` when it is missing, not a string, or rejected for its value."""
    if "item_id" in flagged:
        return None
    if item_id is None or (isinstance(item_id, str) and not item_id.strip()):
        fail("item_id", Rule.MISSING_ITEM_ID, "item_id is required and must be a non-empty string")
        return None
    if not isinstance(item_id, str):
        fail("item_id", Rule.WRONG_TYPE, f"item_id must be a string, got {type_name(item_id)}")
        return None
    # One spelling per id: "café" typed precomposed (NFC) or decomposed (NFD) is the same item.
    normalised_id = unicodedata.normalize("NFC", item_id)
    if len(normalised_id) > MAX_ITEM_ID_LENGTH:
        fail(
            "item_id",
            Rule.ITEM_ID_TOO_LONG,
            f"item_id has {len(normalised_id)} characters; at most {MAX_ITEM_ID_LENGTH} are allowed",
        )
    controls = _control_characters(normalised_id)
    if controls:
        fail("item_id", Rule.CONTROL_CHARACTERS, f"item_id contains control characters {', '.join(controls)}")
    return normalised_id


def _check_text_fields(record: Mapping[str, Any], flagged: set[str], fail: _Fail) -> dict[str, str | None]:
    """``title``, ``text`` and ``category`` by name, each a string or ``None``; a field that is rejected is left out."""
    strings: dict[str, str | None] = {}
    for name in ("title", "text", "category"):
        value = record.get(name)
        if name in flagged:
            continue
        if value is None or isinstance(value, str):
            strings[name] = value
        else:
            fail(name, Rule.WRONG_TYPE, f"{name} must be a string, got {type_name(value)}")
    return strings


def _check_deleted(deleted: Any, flagged: set[str], fail: _Fail) -> bool:
    """Whether the row is a tombstone. Besides booleans, ``deleted`` may be 0/1 or a yes/no word, as CSV spells it."""
    if "deleted" in flagged or deleted is None:
        return False
    if isinstance(deleted, bool):
        return deleted
    if isinstance(deleted, str) and deleted.strip().lower() in _TRUE_STRINGS | _FALSE_STRINGS:
        return deleted.strip().lower() in _TRUE_STRINGS
    if isinstance(deleted, int) and deleted in (0, 1):
        return bool(deleted)
    fail("deleted", Rule.WRONG_TYPE, f"deleted must be a boolean, got {deleted!r:.40}")
    return False


def _collect_attributes(
    record: Mapping[str, Any], explicit: Any, explicit_rejected: bool, fail: _Fail
) -> dict[str, Any]:
    """The explicit ``attributes`` object, then every other non-null field outside the contract (the explicit
    object wins on a name clash). ``explicit_rejected`` says a value rule already rejected the ``attributes``
    field, so it is not reported again for its type."""
    attributes: dict[str, Any] = {}
    if explicit is not None and explicit != "":
        if isinstance(explicit, Mapping):
            attributes.update(jsonable(explicit))
        elif isinstance(explicit, list | tuple) and all(isinstance(p, tuple | list) and len(p) == 2 for p in explicit):
            attributes.update({str(k): jsonable(v) for k, v in explicit})  # Parquet map columns
        elif not explicit_rejected:
            fail("attributes", Rule.WRONG_TYPE, f"attributes must be an object, got {type_name(explicit)}")
    for key, value in record.items():
        if key not in CONTRACT_FIELDS and value is not None:
            attributes.setdefault(str(key), jsonable(value))
    return attributes


def _check_updated_at(updated_at: Any, flagged: set[str], fail: _Fail) -> str | None:
    """``updated_at`` as an ISO-8601 UTC timestamp, or ``None`` when it is absent or rejected."""
    if updated_at is None or updated_at == "" or "updated_at" in flagged:
        return None
    try:
        return _normalise_timestamp(updated_at)
    except (ValueError, OverflowError, OSError) as exc:
        fail("updated_at", Rule.INVALID_TIMESTAMP, f"updated_at is not a valid timestamp ({exc})")
        return None


def _check_has_content(strings: Mapping[str, str | None], fail: _Fail) -> None:
    """A live item needs something to index: its title or its text must have content. Not judged when either field
    was rejected for its type (one reason per field)."""
    if "title" not in strings or "text" not in strings:
        return
    title, text = strings["title"], strings["text"]
    if not (title and title.strip()) and not (text and text.strip()):
        fail("text", Rule.EMPTY_TEXT, "title and text are both empty; at least one must have content")


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
        """Validate one parsed record. Returns the item, or ``None`` and every rule it breaks.

        The rule groups run in a fixed order, which is the order the errors are reported in.
        """
        raw = record if raw is None else raw
        if not isinstance(record, Mapping):
            return None, [
                self.row_error(row, Rule.WRONG_TYPE, f"a row must be an object, got {type_name(record)}", raw)
            ]
        errors: list[RowError] = []
        item_id = record.get("item_id")

        def fail(field_name: str, rule: Rule, message: str) -> None:
            errors.append(self._error(row, field_name, rule, message, item_id, raw))

        explicit_attributes, found = _check_values(record, fail)
        if any(e.rule in _BLOCKING_RULES for e in errors):
            return None, errors
        # A field already rejected for its value is not judged again by its own rule (one reason per field).
        flagged = {str(path[0]) for paths in found.values() for path in paths}
        normalised_id = _check_item_id(item_id, flagged, fail)
        strings = _check_text_fields(record, flagged, fail)
        is_deleted = _check_deleted(record.get("deleted"), flagged, fail)
        explicit_rejected = any(e.field == "attributes" for e in errors)
        attributes = _collect_attributes(record, explicit_attributes, explicit_rejected, fail)
        updated_at = _check_updated_at(record.get("updated_at"), flagged, fail)
        if not is_deleted:
            _check_has_content(strings, fail)

        if errors or normalised_id is None:
            return None, errors
        item = Item(
            item_id=normalised_id,
            title=strings.get("title") or None,
            text=strings.get("text") or None,
            category=strings.get("category") or None,
            attributes=attributes,
            updated_at=updated_at,
            deleted=is_deleted,
        )
        return item, []
