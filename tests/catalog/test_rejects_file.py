"""The --rejects file of the CLI: one valid UTF-8 JSON line per broken rule, whatever text the row carried."""

from __future__ import annotations

import json

from lmindexer.cli import main


def test_rejects_file_keeps_a_lone_surrogate_item_id_as_a_json_escape(capsys, tmp_path):
    catalogue = tmp_path / "drop.jsonl"
    catalogue.write_bytes(
        b'{"item_id": "ok", "title": "fine"}\n'
        b'{"item_id": "bad\\ud800", "title": "escaped lone surrogate"}\n'
        b'{"item_id": "caf\xe9", "title": "latin-1 byte"}\n'
        b'{"item_id": "key", "title": "t", "attributes": {"k\\udc80": 1}}\n'
    )
    rejects = tmp_path / "rejects.jsonl"
    try:
        code = main(["validate", "--catalog", str(catalogue), "--rejects", str(rejects)])
    except SystemExit as exc:  # click ends a successful command this way
        code = exc.code
    err = capsys.readouterr().err
    assert code == 0
    assert "4 rows in, 1 accepted, 3 rejected" in err
    lines = rejects.read_bytes().decode("utf-8").splitlines()  # strict UTF-8: no raw surrogates were written
    records = [json.loads(line) for line in lines]
    assert [(r["row"], r["field"], r["rule"]) for r in records] == [
        (2, "item_id", "undecodable_bytes"),
        (3, "item_id", "undecodable_bytes"),
        (4, "attributes.k\\x80", "undecodable_bytes"),  # a field name is shown printable
    ]
    # The id itself survives exactly, as the JSON escape of the same code point.
    assert records[0]["item_id"] == "bad\ud800"
    assert records[1]["item_id"] == "caf\udce9"
