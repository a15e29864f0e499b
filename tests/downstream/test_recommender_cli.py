"""`lmindexer recommender train | evaluate` on real files: a model `serve --recommender` can load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from testsupport.cli import run_cli
from testsupport.downstream_models import TINY_GENERATIVE, snapshot_files
from testsupport.retriever_state import one_torch_thread

from lmindexer.downstream.generative import GenerativeModel

OPTIONS = {**TINY_GENERATIVE, "history_window": 8, "epochs": 1, "batch_size": 128}  # no task: the command sets it


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def files(movielens_subset_parts, tmp_path_factory):
    """The MovieLens subset as files: snapshot, ID table, catalogue, 120 users' last 6 views, an options file."""
    _, _, sequences, catalogue = movielens_subset_parts
    snapshot, ids = snapshot_files(catalogue.parent, "rq-kmeans")
    root = tmp_path_factory.mktemp("recommender-cli")
    histories = root / "histories.jsonl"
    histories.write_text(
        "".join(json.dumps({"user_id": f"u{n}", "items": s[-6:]}) + "\n" for n, s in enumerate(sequences[:120]))
    )
    options = root / "options.yaml"
    options.write_text(yaml.safe_dump(OPTIONS))
    train = ["--snapshot", str(snapshot), "--ids", str(ids), "--catalog", str(catalogue), "--histories", str(histories)]
    return root, train, str(histories), str(options)


@pytest.mark.parametrize("command", [["recommender"], ["recommender", "train"], ["recommender", "evaluate"]])
def test_help(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0 and "Usage" in out


def test_train_holding_out_the_last_items_then_evaluate_leave_last_out(capsys, files):
    root, train, histories, options = files
    out_dir = root / "model"
    code, out, err = run_cli(
        capsys, "recommender", "train", *train, "--out", str(out_dir), "--options", options, "--hold-out-last",
        "--json", str(root / "summary.json"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary == json.loads((root / "summary.json").read_text())
    assert summary["model_uri"] == str(out_dir) and summary["held_out_last"] is True
    assert (summary["users"], summary["training"]["examples"]) == (120, 120 * 4)
    assert not (root / "model.checkpoint").exists()  # removed once the model is saved
    model = GenerativeModel.load(out_dir)
    assert model.config.task == "recommendation" and model.prior is not None  # the item prior, by default
    first_user = json.loads(Path(histories).read_text().splitlines()[0])["items"]
    assert len(model.recommend([["x", *first_user]], k=5)[0]) == 5

    results = {}
    for flag in ("--exclude-seen", "--include-seen"):
        code, out, err = run_cli(capsys, "recommender", "evaluate", "--model", str(out_dir), "--histories", histories,
                             flag, "-q")  # fmt: skip
        assert code == 0, err
        results[flag] = json.loads(out)
    assert results["--exclude-seen"]["exclude_seen"] is True and results["--include-seen"]["exclude_seen"] is False
    for metrics in results.values():
        assert metrics["users"] == 120 and metrics["skipped_users"] == 0
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("recall@1", "recall@10", "ndcg@10", "mrr@10"))


def test_bad_inputs_fail_with_one_line(capsys, files):
    root, train, histories, _ = files
    retrieval = root / "retrieval.yaml"
    retrieval.write_text(yaml.safe_dump({**OPTIONS, "task": "retrieval"}))
    code, _, err = run_cli(
        capsys, "recommender", "train", *train, "--out", str(root / "never"), "--options", str(retrieval), "-q"
    )
    assert code == 2 and err.startswith("error: a recommender's options name task 'retrieval'")
    assert not (root / "never").exists()
    broken = root / "broken.jsonl"
    broken.write_text('{"user_id": "a", "items": ["1"]}\n{"user_id": "a", "items": ["2"]}\n')
    code, _, err = run_cli(capsys, "recommender", "evaluate", "--model", str(root / "none"), "--histories", str(broken))
    assert code == 2 and err.startswith(f"error: {broken} line 2: user 'a' already has a history on line 1")
    code, _, err = run_cli(capsys, "recommender", "evaluate", "--model", str(root / "none"), "--histories", histories)
    assert code == 2 and "error: not a generative model directory" in err


def test_train_with_a_preset_under_the_options_file(capsys, files):
    root, train, _, options = files
    out_dir = root / "preset-model"
    code, out, err = run_cli(capsys, "recommender", "train", *train, "--out", str(out_dir), "--preset", "sequence",
                             "--options", options, "-q")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["preset"] == "sequence"
    config = GenerativeModel.load(out_dir).config
    assert (config.sequence_training, config.history_item_vectors, config.dropout) == (True, True, 0.3)  # the preset
    assert (config.epochs, config.history_window) == (OPTIONS["epochs"], OPTIONS["history_window"])  # the file
    code, _, err = run_cli(capsys, "recommender", "train", *train, "--out", str(root / "never"), "--preset", "sasrec")
    assert code == 2 and err.startswith("error: unknown recommender preset 'sasrec'; presets: sequence")
    assert not (root / "never").exists()
