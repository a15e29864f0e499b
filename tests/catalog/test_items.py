from __future__ import annotations

import pytest

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH, ROW_FIELD, RowChecker, Rule


@pytest.fixture
def checker() -> RowChecker:
    return RowChecker("drop.jsonl")


def rules(errors) -> list[tuple[str, Rule]]:
    return [(e.field, e.rule) for e in errors]


def test_valid_row_becomes_item(checker):
    item, errors = checker.check(
        {
            "item_id": "sku-1",
            "title": "Linen shirt",
            "text": "A light shirt.",
            "category": "Tops",
            "attributes": {"brand": "Acme", "price": 19.5},
            "updated_at": "2026-01-02T03:04:05+01:00",
            "colour": "blue",
        },
        row=7,
    )
    assert errors == []
    assert item.item_id == "sku-1"
    assert item.category == "Tops"
    # fields outside the contract are kept as attributes; explicit attributes win on a clash
    assert item.attributes == {"brand": "Acme", "price": 19.5, "colour": "blue"}
    assert item.updated_at == "2026-01-02T02:04:05+00:00"
    assert item.deleted is False


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"title": "x"}, [("item_id", Rule.MISSING_ITEM_ID)]),
        ({"item_id": "  ", "title": "x"}, [("item_id", Rule.MISSING_ITEM_ID)]),
        ({"item_id": 17, "title": "x"}, [("item_id", Rule.WRONG_TYPE)]),
        ({"item_id": "a" * (MAX_ITEM_ID_LENGTH + 1), "title": "x"}, [("item_id", Rule.ITEM_ID_TOO_LONG)]),
        ({"item_id": "a\x07b", "title": "x"}, [("item_id", Rule.CONTROL_CHARACTERS)]),
        ({"item_id": "a\nb", "title": "x"}, [("item_id", Rule.CONTROL_CHARACTERS)]),
        ({"item_id": "a"}, [("text", Rule.EMPTY_TEXT)]),
        ({"item_id": "a", "title": "  ", "text": ""}, [("text", Rule.EMPTY_TEXT)]),
        ({"item_id": "a", "title": ["x"]}, [("title", Rule.WRONG_TYPE)]),
        ({"item_id": "a", "text": "ok", "category": 3}, [("category", Rule.WRONG_TYPE)]),
        ({"item_id": "a", "text": "ok", "attributes": [1, 2]}, [("attributes", Rule.WRONG_TYPE)]),
        ({"item_id": "a", "text": "ok", "attributes": "{not json"}, [("attributes", Rule.WRONG_TYPE)]),
        ({"item_id": "a", "text": "ok", "deleted": "maybe"}, [("deleted", Rule.WRONG_TYPE)]),
        ({"item_id": "a", "text": "ok", "updated_at": "yesterday"}, [("updated_at", Rule.INVALID_TIMESTAMP)]),
        ({"item_id": "a", "text": "bad \udcff byte"}, [("text", Rule.UNDECODABLE_BYTES)]),
    ],
)
def test_each_rule_names_field_and_rule(checker, record, expected):
    item, errors = checker.check(record, row=3)
    assert item is None
    assert rules(errors) == expected
    error = errors[0]
    assert error.source == "drop.jsonl"
    assert error.row == 3
    assert error.message
    assert error.describe().startswith(f"drop.jsonl:3: {expected[0][0]}: {expected[0][1].value}: ")


def test_row_that_is_not_an_object(checker):
    item, errors = checker.check(["a", "b"], row=2)
    assert item is None
    assert rules(errors) == [(ROW_FIELD, Rule.WRONG_TYPE)]


def test_every_broken_rule_is_reported(checker):
    _, errors = checker.check({"item_id": 5, "title": 1, "deleted": "x"}, row=1)
    assert {(e.field, e.rule) for e in errors} == {
        ("item_id", Rule.WRONG_TYPE),
        ("title", Rule.WRONG_TYPE),
        ("deleted", Rule.WRONG_TYPE),
    }


def test_tombstone_needs_only_an_id(checker):
    item, errors = checker.check({"item_id": "gone", "deleted": "true"}, row=1)
    assert errors == []
    assert item.deleted is True


def test_epoch_timestamp_and_csv_style_values(checker):
    item, errors = checker.check({"item_id": "a", "text": "t", "updated_at": 0, "deleted": "0"}, row=1)
    assert errors == []
    assert item.updated_at == "1970-01-01T00:00:00+00:00"
    assert item.deleted is False


def test_raw_excerpt_is_bounded(checker):
    _, errors = checker.check({"item_id": "", "text": "x" * 5000}, row=1)
    assert len(errors[0].raw) <= 501
