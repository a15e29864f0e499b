from __future__ import annotations

import pytest

from lmindexer.catalog.items import (
    MAX_ITEM_ID_LENGTH,
    MAX_NESTING_DEPTH,
    ROW_FIELD,
    BigInteger,
    RowChecker,
    Rule,
    parse_json,
    raw_excerpt,
)


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


# -- values anywhere in a row: what a UTF-8 writer or the search engine cannot take --------------------------------


def nested(depth: int) -> object:
    """``depth`` objects, each inside the one before."""
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # A lone surrogate (an undecodable byte or a JSON "\ud800" escape) anywhere, values and keys alike.
        ({"item_id": "a", "text": "t", "attributes": {"brand": "x\ud800"}}, ("attributes.brand", "undecodable_bytes")),
        ({"item_id": "a", "text": "t", "attributes": {"k\udce9": "x"}}, ("attributes.k\\xe9", "undecodable_bytes")),
        ({"item_id": "a", "text": "t", "tags": ["ok", "bad\udcff"]}, ("tags[1]", "undecodable_bytes")),
        ({"item_id": "a\udce9", "text": "t"}, ("item_id", "undecodable_bytes")),
        # Numbers the search engine cannot index.
        ({"item_id": "a", "text": "t", "price": float("inf")}, ("price", "non_finite_number")),
        ({"item_id": "a", "text": "t", "attributes": {"p": float("nan")}}, ("attributes.p", "non_finite_number")),
        (
            {"item_id": "a", "text": "t", "attributes": {"p": [1, float("-inf")]}},
            ("attributes.p[1]", "non_finite_number"),
        ),
        ({"item_id": "a", "text": "t", "stock": 2**63}, ("stock", "number_out_of_range")),
        ({"item_id": "a", "text": "t", "attributes": {"n": -(2**63) - 1}}, ("attributes.n", "number_out_of_range")),
        ({"item_id": "a", "text": "t", "attributes": {"w": 1e39}}, ("attributes.w", "number_out_of_range")),
        ({"item_id": "a", "text": "t", "updated_at": float("nan")}, ("updated_at", "non_finite_number")),
        # Deeper than MAX_NESTING_DEPTH: the row is level 1, attributes level 2.
        (
            {"item_id": "a", "text": "t", "attributes": nested(MAX_NESTING_DEPTH)},
            ("attributes" + ".k" * (MAX_NESTING_DEPTH - 1), "too_deeply_nested"),
        ),
        # A CSV cell holding the attributes as JSON text is held to the same rules.
        ({"item_id": "a", "text": "t", "attributes": '{"p": NaN}'}, ("attributes.p", "non_finite_number")),
        ({"item_id": "a", "text": "t", "attributes": '{"p": 1, "p": 2}'}, ("attributes.p", "duplicate_key")),
        (
            {"item_id": "a", "text": "t", "attributes": '{"n": ' + "9" * 5000 + "}"},
            ("attributes.n", "number_out_of_range"),
        ),
        ({"item_id": "a", "text": "t", "attributes": "[" * 5000 + "]" * 5000}, ("attributes", "too_deeply_nested")),
    ],
)
def test_values_the_contract_cannot_carry_are_rejected_with_their_path(checker, record, expected):
    item, errors = checker.check(record, row=4)
    assert item is None
    assert (errors[0].field, errors[0].rule.value) == expected
    assert errors[0].message


@pytest.mark.parametrize(
    "attributes",
    [
        {"max": 2**63 - 1, "min": -(2**63)},  # the signed 64-bit range is fine
        {"w": 3.4e38, "tiny": 1e-300, "neg": -3.4e38},  # inside the 32-bit float range (tiny values round to 0)
        nested(MAX_NESTING_DEPTH - 1),  # the deepest allowed: attributes is level 2, its innermost object 16
        {"name": "caf\u00e9 \U0001f600"},  # astral characters are proper pairs, not lone surrogates
    ],
)
def test_values_at_the_edges_of_the_contract_are_kept(checker, attributes):
    item, errors = checker.check({"item_id": "a", "text": "t", "attributes": attributes}, row=1)
    assert errors == []
    assert item.attributes == attributes


def test_every_offending_path_is_named_once_per_rule(checker):
    _, errors = checker.check(
        {"item_id": "a", "text": "t", "a": float("nan"), "attributes": {"b": [float("inf")], "c": 2**64}}, row=1
    )
    assert [(e.field, e.rule.value) for e in errors] == [
        ("a", "non_finite_number"),
        ("attributes.c", "number_out_of_range"),
    ]
    assert "a, attributes.b[0]" in errors[0].message


def test_parse_json_keeps_what_the_row_rules_must_judge():
    value, problem = parse_json('{"a": 1, "a": 2, "b": Infinity, "c": ' + "1" * 5000 + "}")
    assert problem is None
    assert value["a"] == 2 and value.duplicates == ("a",)
    assert value["b"] == float("inf")
    assert isinstance(value["c"], BigInteger)
    _, problem = parse_json("[" * 100_000 + "]" * 100_000)
    assert problem[0] is Rule.TOO_DEEPLY_NESTED
    _, problem = parse_json('{"a": ')
    assert problem[0] is Rule.MALFORMED_JSON


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": "x\ty"}', "not valid JSON: Invalid control character at column 9"),
        ('{"a": "xy', "not valid JSON: Unterminated string starting at column 7"),
        ('{"a": 1 "b": 2}', "not valid JSON: Expecting ',' delimiter at column 9"),
        # A JSONL line cut short, read with its line break.
        ('{"item_id": "x0", "title": \n', "not valid JSON: Expecting value at the end of the text"),
        ('{"a": 1,\n "b" 2}', "not valid JSON: Expecting ':' delimiter at line 2, column 6"),
    ],
)
def test_malformed_json_messages_read_as_one_sentence(text, message):
    _, problem = parse_json(text)
    assert problem == (Rule.MALFORMED_JSON, message)


def test_item_id_is_normalised_to_nfc(checker):
    item, errors = checker.check({"item_id": "cafe\u0301", "text": "t"}, row=1)
    assert errors == []
    assert item.item_id == "caf\u00e9"


def test_raw_excerpt_of_any_value_is_printable_utf8():
    for value in ("x\ud800y", "x\udce9", b"x\xe9", {"k\ud800": 2**20000}, nested(5000), "z" * 10**6):
        excerpt = raw_excerpt(value)
        assert excerpt
        excerpt.encode("utf-8")  # no lone surrogates left
        assert len(excerpt) <= 501
