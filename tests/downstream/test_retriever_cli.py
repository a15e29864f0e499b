"""`lmindexer retriever train | evaluate | refresh` on real files."""

from __future__ import annotations

import json

import pytest
import yaml
from testsupport.cli import run_cli
from testsupport.retriever_state import (
    TINY_RETRIEVER,
    one_torch_thread,
    retriever_files,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def files(wiki_items, tmp_path_factory):
    """A snapshot directory, an ID table and a catalogue of 40 real items, with title queries and tiny options."""
    return retriever_files(tmp_path_factory.mktemp("retriever-cli"), wiki_items[:40], {**TINY_RETRIEVER, "epochs": 2})


@pytest.mark.parametrize("command", [["retriever"], ["retriever", "train"], ["retriever", "evaluate"]])
def test_help(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0 and "Usage" in out


def test_train_then_evaluate(capsys, files):
    out_dir = files.root / "model"
    code, out, err = run_cli(
        capsys, "retriever", "train", "--snapshot", files.snapshot, "--ids", files.ids, "--catalog", files.catalog,
        "--queries", files.queries, "--out", str(out_dir), "--options", files.options, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model_uri"] == str(out_dir) and (out_dir / "generative.json").is_file()
    assert (summary["items"], summary["train_pairs"], summary["training"]["epochs"]) == (40, 40, 2)
    code, out, err = run_cli(capsys, "retriever", "evaluate", "--model", str(out_dir), "--queries", files.queries, "-q")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["queries"] == 40 and metrics["skipped_queries"] == 0
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("recall@1", "recall@5", "recall@10", "ndcg@10", "mrr@10"))


def test_bad_inputs_fail_with_one_line(capsys, files):
    bad_options = files.root / "bad.yaml"
    bad_options.write_text("epochs: 0\n")
    code, _, err = run_cli(
        capsys, "retriever", "train", "--snapshot", files.snapshot, "--ids", files.ids, "--catalog", files.catalog,
        "--queries", files.queries, "--out", str(files.root / "never"), "--options", str(bad_options), "-q",
    )  # fmt: skip
    assert code == 2 and err.startswith("error: invalid generative model options: epochs")
    assert not (files.root / "never").exists()
    broken = files.root / "broken.jsonl"
    broken.write_text('{"query": "q", "item_id": "wiki-00000"}\nnot json\n')
    code, _, err = run_cli(
        capsys, "retriever", "evaluate", "--model", str(files.root / "none"), "--queries", str(broken)
    )
    assert code == 2 and err.startswith(f"error: {broken} line 2: not a JSON object")
    code, _, err = run_cli(
        capsys, "retriever", "evaluate", "--model", str(files.root / "none"), "--queries", files.queries
    )
    assert code == 2 and "error: not a generative model directory" in err


def test_refresh_with_nothing_published(capsys, files, tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"base_uri": str(tmp_path / "empty-store")}))
    retriever = tmp_path / "retriever.yaml"
    retriever.write_text(yaml.safe_dump({"train_queries": files.queries, "eval_queries": files.queries}))
    code, out, err = run_cli(
        capsys, "retriever", "refresh", "--config", str(pipeline), "--retriever-config", str(retriever),
        "--run-id", "cli-1", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "retriever run cli-1: none (the pipeline has published no semantic IDs yet)" in err
    assert json.loads(out)["action"] == "none"
    retriever.write_text(yaml.safe_dump({"train_queries": files.queries}))
    code, _, err = run_cli(
        capsys, "retriever", "refresh", "--config", str(pipeline), "--retriever-config", str(retriever)
    )
    assert code == 2 and "invalid retriever config: eval_queries: Field required" in err
