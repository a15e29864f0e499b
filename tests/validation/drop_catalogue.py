"""A small product catalogue that looks like a real drop, with one broken row of every class."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_BRANDS = ["Northwind", "Alpenglow", "Keel & Co", "Marlowe", "Tessera"]
_PRODUCTS = [
    ("Trail running shoe", "shoes", "Lightweight shoe with a rock plate and a 6 mm drop for technical trails."),
    ("Merino base layer", "apparel", "Long-sleeve 200 g/m² merino top that stays warm when wet."),
    ("Insulated bottle 750 ml", "kitchen", "Double-wall steel bottle; keeps drinks cold for 24 hours."),
    ("Down sleeping bag", "camping", "Comfort rated to -5 °C, 800-fill responsibly sourced down."),
    ("Headlamp 400 lm", "electronics", "USB-C rechargeable headlamp with red light and lock mode."),
    ("Rain shell jacket", "apparel", "Three-layer waterproof shell with pit zips and a helmet hood."),
    ("Camp stove", "camping", "Compact canister stove that boils a litre in three minutes."),
    ("Trekking poles", "accessories", "Carbon poles with cork grips and flick locks, 110-135 cm."),
]


def good_rows(count: int = 40) -> list[dict]:
    rows = []
    for n in range(count):
        title, category, text = _PRODUCTS[n % len(_PRODUCTS)]
        rows.append(
            {
                "item_id": f"SKU-{n:04d}",
                "title": f"{_BRANDS[n % len(_BRANDS)]} {title}",
                "text": text,
                "category": category,
                "attributes": {"brand": _BRANDS[n % len(_BRANDS)], "price": round(19.5 + 7 * n, 2)},
                "updated_at": f"2024-05-{1 + n % 28:02d}T08:00:00Z",
            }
        )
    return rows


@dataclass(frozen=True)
class BrokenRow:
    name: str
    line: bytes
    field: str
    rule: str


def _json(row: object) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode()


BROKEN = [
    BrokenRow("missing id", _json({"title": "Keel & Co Camp stove"}), "item_id", "missing_item_id"),
    BrokenRow("blank id", _json({"item_id": "   ", "title": "Camp stove"}), "item_id", "missing_item_id"),
    BrokenRow(
        "duplicate id", _json({"item_id": "SKU-0002", "title": "Re-listed bottle"}), "item_id", "duplicate_item_id"
    ),
    BrokenRow(
        "too long id", _json({"item_id": "SKU-" + "9" * 300, "title": "Headlamp"}), "item_id", "item_id_too_long"
    ),
    BrokenRow(
        "control characters", _json({"item_id": "SKU-12\t34", "title": "Poles"}), "item_id", "control_characters"
    ),
    BrokenRow("empty text", _json({"item_id": "SKU-E1", "title": "", "text": "   "}), "text", "empty_text"),
    BrokenRow("numeric id", _json({"item_id": 12345, "title": "Rain shell"}), "item_id", "wrong_type"),
    BrokenRow(
        "list title",
        _json({"item_id": "SKU-L1", "title": ["Rain", "shell"], "text": "Three-layer shell."}),
        "title",
        "wrong_type",
    ),
    BrokenRow(
        "bad timestamp",
        _json({"item_id": "SKU-T1", "title": "Base layer", "updated_at": "last tuesday"}),
        "updated_at",
        "invalid_timestamp",
    ),
    BrokenRow(
        "attributes not an object",
        _json({"item_id": "SKU-A1", "title": "Stove", "attributes": [1, 2]}),
        "attributes",
        "wrong_type",
    ),
    BrokenRow("malformed json", b'{"item_id": "SKU-M1", "title": "Sleeping bag"', "(row)", "malformed_json"),
    BrokenRow("not an object", b'["SKU-N1", "Sleeping bag"]', "(row)", "wrong_type"),
    BrokenRow("undecodable bytes", b'{"item_id": "SKU-U1", "title": "Caf\xe9 press"}', "title", "undecodable_bytes"),
]


@dataclass(frozen=True)
class Catalogue:
    path: Path
    rows_in: int
    good_ids: list[str]  # in source order
    good_lines: dict[str, int]  # item_id -> line number
    broken_at: dict[int, BrokenRow]  # line number -> the broken row written there
    tombstones: int


def write_catalogue(path: Path, *, good: int = 40, broken: list[BrokenRow] | None = None) -> Catalogue:
    """Good rows with the broken ones spread between them (every third line), plus one tombstone, as JSONL."""
    broken = BROKEN if broken is None else broken
    rows = good_rows(good)
    lines: list[bytes] = []
    broken_at: dict[int, BrokenRow] = {}
    good_ids: list[str] = []
    pending = list(broken)
    good_lines: dict[str, int] = {}
    for n, row in enumerate(rows):
        lines.append(_json(row))
        good_ids.append(row["item_id"])
        good_lines[row["item_id"]] = len(lines)
        if n % 3 == 2 and pending:
            bad = pending.pop(0)
            lines.append(bad.line)
            broken_at[len(lines)] = bad
    for extra in pending:
        lines.append(extra.line)
        broken_at[len(lines)] = extra
    lines.append(_json({"item_id": "SKU-GONE", "deleted": True}))
    good_ids.append("SKU-GONE")
    good_lines["SKU-GONE"] = len(lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return Catalogue(path, len(lines), good_ids, good_lines, broken_at, tombstones=1)
