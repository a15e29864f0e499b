"""Raw row values as the catalogue reads them, before any rule of :mod:`lmindexer.catalog.items` judges them.

The JSON decoder here never fails on what a row holds: integer literals too long for Python arrive as
:class:`BigInteger` and objects that repeat a key as :class:`DuplicateKeys`, so the row rules can reject them naming
the field instead of the whole read failing. The rest names a value's JSON type for messages and makes values
JSON-safe and printable for search documents, reports and quarantine files.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

# The search engine stores integers as signed 64-bit longs and maps fractional attribute values dynamically as
# 32-bit floats: a number outside those ranges fails the whole publish, so the contract rejects it up front.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_LONGEST_INT64 = len(str(INT64_MIN))


class BigInteger:
    """A JSON integer literal too long for a signed 64-bit integer, kept as its text.

    Python refuses to turn integer strings of more than 4,300 digits into ints (a guard against quadratic-time
    conversion), so the parser hands such literals over as this instead of failing the whole read; the row rules
    reject them as ``number_out_of_range``.
    """

    __slots__ = ("digits",)

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        shown = self.digits if len(self.digits) <= 24 else self.digits[:20] + "…"
        return f"{shown} ({len(self.digits.lstrip('-'))} digits)"

    __str__ = __repr__


class DuplicateKeys(dict[str, Any]):
    """A parsed JSON object that named some keys more than once (``duplicates``); like :mod:`json`, the last value
    is kept, but the row rules reject the row instead of guessing which copy was meant."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: tuple[str, ...]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    duplicates: dict[str, None] = {}  # ordered, each repeated key once
    for key, _ in pairs:
        if key in seen:
            duplicates[key] = None
        seen.add(key)
    return DuplicateKeys(pairs, tuple(duplicates))


def _json_integer(text: str) -> int | BigInteger:
    # A literal longer than "-9223372036854775808" is out of the 64-bit range whatever its digits (JSON allows no
    # leading zeros), so it is never converted.
    return int(text) if len(text) <= _LONGEST_INT64 else BigInteger(text)


_DECODER = json.JSONDecoder(object_pairs_hook=_json_object, parse_int=_json_integer)


def decode_json(text: str) -> Any:
    """``text`` parsed, repeated keys and huge integers kept for the row rules to judge. Raises
    :class:`json.JSONDecodeError` on bad syntax and :class:`RecursionError` when it nests too deeply to parse."""
    return _DECODER.decode(text)


def describe_json_error(text: str, exc: json.JSONDecodeError) -> str:
    """Where and why ``text`` is not JSON, in words: "Expecting value at the end of the text", "Invalid control
    character at column 9"."""
    # Some of Python's messages end in "at" ("Invalid control character at"), which the position completes.
    problem = exc.msg.removesuffix(" at")
    if exc.pos >= len(text.rstrip(" \t\r\n")):
        # Cut short: the decoder stopped past the last character (for a JSONL line read with its line break, on
        # the line after it, where "column 1" would point at nothing).
        return f"{problem} at the end of the text"
    if exc.lineno == 1:
        return f"{problem} at column {exc.colno}"
    return f"{problem} at line {exc.lineno}, column {exc.colno}"


def type_name(value: Any) -> str:
    """The JSON name of ``value``'s type ("string", "object", ...), as messages to catalogue owners say it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | BigInteger):
        return "integer"
    for kind, name in ((float, "number"), (str, "string"), (Mapping, "object"), (list, "array")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def printable(text: str) -> str:
    """``text`` safe to write as UTF-8: undecodable input bytes (kept as surrogate escapes) are shown as ``\\xNN``,
    any other lone surrogate as ``\\uXXXX``."""
    try:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def jsonable(value: Any) -> Any:
    """Attributes must survive JSON (search documents, reports); convert what Parquet/NumPy hand us."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return jsonable(value.tolist())
    return str(value)
