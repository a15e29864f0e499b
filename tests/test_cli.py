from __future__ import annotations

import json

import pytest

from lmindexer.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # click exits on its own for --help and usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["fit"], ["assign"], ["evaluate"], ["validate"], ["datasets", "fetch"]])
def test_help_on_every_command(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0
    assert "Usage" in out


def test_fit_assign_evaluate_round_trip(capsys, wiki_sample_path, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("codebook_size: 8\nlevels: 2\n")
    code, out, err = run(
        capsys,
        "fit",
        "--method",
        "rq-kmeans",
        "--catalog",
        str(wiki_sample_path),
        "--out",
        str(tmp_path / "snap"),
        "--config",
        str(config),
        "--quiet",
    )
    assert code == 0, err
    assert "fitted rq-kmeans on 320 items" in out
    code, out, err = run(
        capsys,
        "assign",
        "--snapshot",
        str(tmp_path / "snap"),
        "--catalog",
        str(wiki_sample_path),
        "--ids",
        str(tmp_path / "ids.parquet"),
        "--json",
        str(tmp_path / "assign.json"),
        "--quiet",
    )
    assert code == 0, err
    assert "320 new IDs" in out
    assert json.loads((tmp_path / "assign.json").read_text())["rows_after"] == 320
    code, out, err = run(
        capsys,
        "evaluate",
        "--ids",
        str(tmp_path / "ids.parquet"),
        "--catalog",
        str(wiki_sample_path),
        "--label",
        "category",
        "--report",
        str(tmp_path / "report"),
        "--json",
        str(tmp_path / "q.json"),
    )
    assert code == 0, err
    assert "collision rate" in out
    assert (tmp_path / "report" / "label_heatmap.png").exists()
    assert json.loads((tmp_path / "q.json").read_text())["items"] == 320


def test_validate_writes_rejects(capsys, tmp_path):
    catalogue = tmp_path / "c.jsonl"
    catalogue.write_text('{"item_id": "a", "text": "x"}\n{"item_id": "a", "text": "y"}\nnot json\n')
    code, _, err = run(capsys, "validate", "--catalog", str(catalogue), "--rejects", str(tmp_path / "rej.jsonl"))
    assert code == 0
    assert "3 rows in, 1 accepted, 2 rejected" in err
    rejects = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"], r["rule"]) for r in rejects] == [
        (2, "item_id", "duplicate_item_id"),
        (3, "(row)", "malformed_json"),
    ]
    code, _, err = run(capsys, "validate", "--catalog", str(catalogue), "--strict")
    assert code == 2
    assert (
        err.strip() == "error: invalid row (strict mode): c.jsonl:2: item_id: duplicate_item_id: "
        "item_id 'a' already appeared at row 1"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "--catalog", "missing.jsonl", "--out", "x"], "error: catalogue not found: missing.jsonl"),
        (["fit", "--catalog", "{catalogue}", "--out", "x", "--method", "nope"], "error: unknown indexer method 'nope'"),
        (["assign", "--snapshot", "nowhere", "--catalog", "{catalogue}", "--ids", "i.parquet"], "error: snapshot not"),
        (["evaluate", "--ids", "none.parquet"], "error: ID table not found"),
        (["datasets", "fetch", "nope"], "error: unknown data set 'nope'"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, wiki_sample_path, args, message):
    args = [a.replace("{catalogue}", str(wiki_sample_path)) for a in args]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "fit", "--bogus")
    assert code == 2
    assert "No such option" in err


def test_methods_lists_options(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    assert "rqvae" in out and "commitment_weight" in out
