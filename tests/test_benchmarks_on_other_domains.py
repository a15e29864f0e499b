"""The benchmarks run unchanged on a data set from another domain: a directory of the built-in sets' files.

Each test runs a benchmark script as a user would (a subprocess, tiny settings) on real item texts (a sample of
wiki-topics under other names and another label field) and reads back the result file it writes.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lmindexer.downstream.generative import GenerativeModel

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 48
USERS = 24


def run_benchmark(script: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *arguments],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def run_downstream(dataset_dir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """benchmarks/downstream.py on one ID kind at tiny settings, its work and results under ``tmp_path``."""
    tiny = ["--methods", "rq-kmeans", "--epochs", "1", "--levels", "2", "--codebook-size", "4"]
    places = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    return run_benchmark("downstream.py", "--dataset", str(dataset_dir), *tiny, *extra, *places)


def recommend_on(dataset_dir: Path, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    """benchmarks/downstream.py's recommenders alone (no peers, no prior variant) on an interaction log: the name of
    the one result file it writes and that file's document."""
    run = run_downstream(dataset_dir, tmp_path, "--no-peers", "--no-prior-variant", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    (written,) = (tmp_path / "out").glob("*.json")
    return written.name, json.loads(written.read_text())


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def books(wiki_sample_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Real item texts whose label lives in a field the built-in sets do not have (``genre``)."""
    rows = [json.loads(line) for line in wiki_sample_path.read_text().splitlines()[:ITEMS]]
    return [{**{k: v for k, v in row.items() if k != "category"}, "genre": row["category"]} for row in rows]


@pytest.fixture(scope="module")
def catalogue_dir(books: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("domains") / "books"
    directory.mkdir()
    write_lines(directory / "items.jsonl", books)
    return directory


@pytest.fixture(scope="module")
def interaction_log_dir(books: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogue with a leave-last-out interaction log, built so that a popularity ranking shows which items a
    run read: every user's validation item is the same one (also among half the users' training items, so it is the
    most popular training item), and so is every test item (in nobody's training items: a run that read it in place
    of the validation item would find it the most popular item). One more user's training items are not in the
    catalogue."""
    directory = tmp_path_factory.mktemp("domains") / "book-loans"
    directory.mkdir()
    write_lines(directory / "items.jsonl", books)
    generator = random.Random(7)
    ids = [row["item_id"] for row in books]
    others = [item for item in ids if item not in (the_validation_item(books), the_test_item(books))]
    sequences = []
    for user in range(USERS):
        train = generator.sample(others, 6) + ([the_validation_item(books)] if user % 2 else [])
        sequences.append({"user_id": f"u{user}", "train": train, "valid": the_validation_item(books),
                          "test": the_test_item(books)})  # fmt: skip
    # A user whose training items the catalogue lacks: at the validation step there is nothing to recommend from.
    sequences.append({"user_id": "lost", "train": ["no-such-item-1", "no-such-item-2"],
                      "valid": the_validation_item(books), "test": the_test_item(books)})  # fmt: skip
    write_lines(directory / "sequences.jsonl", sequences)
    return directory


def the_validation_item(books: list[dict]) -> str:
    return books[0]["item_id"]


def the_test_item(books: list[dict]) -> str:
    return books[1]["item_id"]


@pytest.fixture(scope="module")
def search_log_dir(books: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalogue with search queries: each item's title finds it, half of them held out."""
    directory = tmp_path_factory.mktemp("domains") / "book-search"
    directory.mkdir()
    write_lines(directory / "items.jsonl", books)
    pairs = [{"query": row["title"], "item_id": row["item_id"]} for row in books]
    write_lines(directory / "queries-train.jsonl", pairs[::2])
    write_lines(directory / "queries-test.jsonl", pairs[1::2])
    return directory


def test_id_quality_scores_a_catalogue_directory_against_the_label_it_names(catalogue_dir: Path, tmp_path: Path):
    common = ["--methods", "rq-kmeans", "--seeds", "0", "--levels", "2", "--codebook-size", "4", "--out", str(tmp_path)]
    run = run_benchmark("id_quality.py", "--dataset", str(catalogue_dir), "--label", "genre", *common)
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((tmp_path / "id_quality-books.json").read_text())
    assert (document["dataset"], document["built_in"], document["label"]) == ("books", False, "genre")
    assert document["items"] == ITEMS
    ami = document["summaries"][0]["policies"]["argmax"]["ami"][0]["mean"]
    assert 0 < ami <= 1  # scored against the genres: 4 codes over 12 topics group some of them


def test_id_quality_writes_a_run_over_other_seeds_to_files_of_its_own(catalogue_dir: Path, tmp_path: Path):
    """Seeds other than the reference 0 1 2 never overwrite the reference figures: they name themselves."""
    common = ["--methods", "rq-kmeans", "--levels", "2", "--codebook-size", "4", "--label", "genre"]
    run = run_benchmark(
        "id_quality.py", "--dataset", str(catalogue_dir), "--seeds", "1", "2", *common, "--out", str(tmp_path)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "id_quality-books-seeds-1-2.json",
        "id_quality-books-seeds-1-2.md",
        "id_quality-books-seeds-1-2.png",
    ]
    document = json.loads((tmp_path / "id_quality-books-seeds-1-2.json").read_text())
    assert document["seeds"] == [1, 2]
    assert [seed_run["seed"] for seed_run in document["runs"]["rq-kmeans"]] == [1, 2]


def test_id_quality_passes_an_lmindexer_option_to_the_method_and_names_its_files_after_it(
    catalogue_dir: Path, tmp_path: Path
):
    tiny = ["--methods", "lmindexer", "--levels", "2", "--codebook-size", "4", "--label", "genre", "--seeds", "0"]
    options = ["--lm-option", "backbone=tiny-random", "--lm-option", "keep_learned=always"]
    run = run_benchmark("id_quality.py", "--dataset", str(catalogue_dir), *tiny, *options, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    stem = "id_quality-books-backbone-tiny-random-keep-learned-always"
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    document = json.loads((tmp_path / f"{stem}.json").read_text())
    assert document["lm_options"] == {"backbone": "tiny-random", "keep_learned": "always"}
    (lm_run,) = document["runs"]["lmindexer"]
    # The option reached the method: the fit ran with it and kept every trained writer.
    assert (lm_run["config"]["backbone"], lm_run["config"]["keep_learned"]) == ("tiny-random", "always")
    assert [phase["kept"] for phase in lm_run["phases"]] == [True, True]


def test_id_quality_names_files_after_options_whatever_characters_their_values_hold(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from id_quality import options_suffix

    assert options_suffix({"keep_learned": "always", "learning_rate": 0.0005}) == (
        "-keep-learned-always-learning-rate-0p0005"
    )
    assert options_suffix({"max_length": 128}) == "-max-length-128"  # --lm-max-length's name, as before
    # A path or an address as a value never puts a separator into the file name.
    assert options_suffix({"backbone": "s3://models/encoder/"}) == "-backbone-s3-models-encoder"


def test_id_quality_refuses_an_lmindexer_option_the_method_does_not_have(catalogue_dir: Path, tmp_path: Path):
    run = run_benchmark(
        "id_quality.py", "--dataset", str(catalogue_dir), "--label", "genre", "--methods", "lmindexer",
        "--lm-option", "keep_learned=never", "--out", str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 2
    assert "keep_learned" in run.stderr
    assert not list(tmp_path.iterdir())


def test_id_quality_refuses_a_catalogue_whose_items_lack_the_label(catalogue_dir: Path, tmp_path: Path):
    run = run_benchmark(
        "id_quality.py", "--dataset", str(catalogue_dir), "--methods", "rq-kmeans", "--out", str(tmp_path)
    )
    assert run.returncode == 2
    assert "no item of books has a 'category' field" in run.stderr
    assert not list(tmp_path.iterdir())


def test_downstream_recommends_on_an_interaction_log_directory(interaction_log_dir: Path, tmp_path: Path):
    name, document = recommend_on(interaction_log_dir, tmp_path)
    # Named after the directory (its one epoch, a budget of its own, adds -steps-20-epochs-1).
    assert name == "downstream-book-loans-steps-20-epochs-1.json"
    assert (document["dataset"], document["built_in"], document["task"]) == ("book-loans", False, "recommendation")
    rows = {row["name"]: row for row in document["results"]}
    assert "popularity" in rows and any(name.startswith("generative") for name in rows)
    # Every user's test item, scored: the lost user too, whose validation item is catalogued.
    assert {row["metrics"]["queries"] for row in rows.values()} == {USERS + 1}
    assert document["users"] == {"users": USERS + 1, "scored": USERS + 1, "without_catalogued_history": 0}
    assert (tmp_path / "work" / "ids-rq-kmeans.parquet").is_file()


def test_downstream_trains_the_recommender_at_the_batch_size_given_in_files_of_its_own(
    interaction_log_dir: Path, tmp_path: Path
):
    """--batch-size reaches the training: one optimiser step per batch of that many examples, in a file and a model
    directory of their own."""
    name, document = recommend_on(interaction_log_dir, tmp_path, "--batch-size", "4")
    assert name == "downstream-book-loans-steps-20-epochs-1-batch-4.json"
    generative = next(row for row in document["results"] if row["name"].startswith("generative"))
    assert generative["examples"] > 4
    assert generative["steps"] == math.ceil(generative["examples"] / 4)  # one epoch
    assert document["generative_options"]["batch_size"] == 4
    assert [path.name for path in (tmp_path / "work").glob("model-*")] == ["model-rq-kmeans-batch-4"]


def test_downstream_trains_the_recommender_at_the_weight_decay_given_in_files_of_its_own(
    interaction_log_dir: Path, tmp_path: Path
):
    """--weight-decay reaches the trained model's options (what its optimiser is built from), in a file and a model
    directory of their own."""
    name, document = recommend_on(interaction_log_dir, tmp_path, "--weight-decay", "0.1")
    assert name == "downstream-book-loans-steps-20-epochs-1-weight-decay-0p1.json"
    assert document["generative_options"]["weight_decay"] == 0.1
    (model_dir,) = (tmp_path / "work").glob("model-*")
    assert model_dir.name == "model-rq-kmeans-weight-decay-0p1"
    assert GenerativeModel.load(model_dir).config.weight_decay == 0.1


def test_downstream_searches_a_query_log_directory_scoring_similar_items_against_its_label(
    search_log_dir: Path, tmp_path: Path
):
    run = run_downstream(search_log_dir, tmp_path, "--label", "genre", "--no-snapshot-variant")
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((tmp_path / "out" / "downstream-book-search.json").read_text())
    assert (document["dataset"], document["built_in"], document["task"]) == ("book-search", False, "retrieval")
    rows = {row["name"]: row for row in document["results"]}
    assert {"BM25", "dense MiniLM"} <= set(rows)
    assert {row["metrics"]["queries"] for row in rows.values()} == {ITEMS // 2}
    similar = document["similar_items_precision@10"]
    assert similar["label"] == "genre" and 0 < similar["dense MiniLM"] <= 1


@pytest.fixture(scope="module")
def validation_split_run(interaction_log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """benchmarks/downstream.py at the validation split on the interaction log: its work and results directory."""
    directory = tmp_path_factory.mktemp("validation-split")
    run = run_downstream(interaction_log_dir, directory, "--no-peers", "--no-prior-variant", "--split", "valid")
    assert run.returncode == 0, run.stderr[-3000:]
    return directory


def test_downstream_at_the_validation_split_trains_before_the_validation_item_and_scores_it(
    validation_split_run: Path,
):
    """Every model trains on the items before each user's validation item and is scored on it, in files of their
    own. Popularity shows what was read (see ``interaction_log_dir``): it ranks the validation item first, which it
    would not if the scored item were the test item, or if the test item had been read in its place."""
    (written,) = (validation_split_run / "out").glob("*.json")
    assert written.name == "downstream-book-loans-steps-20-epochs-1-valid.json"
    document = json.loads(written.read_text())
    assert document["split"] == "valid"
    popularity = next(row for row in document["results"] if row["name"] == "popularity")
    assert popularity["metrics"]["recall@1"] == 1.0
    assert popularity["metrics"]["queries"] == USERS
    assert document["users"] == {"users": USERS + 1, "scored": USERS, "without_catalogued_history": 1}
    assert [path.name for path in (validation_split_run / "work").glob("model-*")] == ["model-rq-kmeans-valid"]


def test_recommender_parts_at_the_validation_split_ranks_the_validation_item_every_way(
    interaction_log_dir: Path, validation_split_run: Path, tmp_path: Path
):
    """The saved validation-split model re-scored at the same step: the users downstream.py scored (the lost user,
    with no catalogued item before the validation item, left out), the whole model's figures as downstream.py
    measured them, and the item prior and both fusions with it under both protocols, in a file of its own."""
    model = validation_split_run / "work" / "model-rq-kmeans-valid"
    run = run_benchmark("recommender_parts.py", "--dataset", str(interaction_log_dir), "--split", "valid",
                        "--beams", "--model", f"tiny={model}", "--out", str(tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    document = json.loads((tmp_path / "recommender_parts-book-loans-valid.json").read_text())
    assert document["split"] == "valid"
    assert document["users"] == {"users": USERS + 1, "scored": USERS, "without_catalogued_history": 1}
    (row,) = document["results"]
    ways = {key.rpartition(", ")[0] for key in row["metrics"]}
    beam = row["options"]["beam_size"]
    assert ways == {
        f"whole model, beam {beam} (as trained)",
        "item prior alone",
        "whole model and item prior, score fusion",
        "whole model and item prior, reciprocal rank fusion",
    }
    (downstream,) = (validation_split_run / "out").glob("*.json")
    generative = next(r for r in json.loads(downstream.read_text())["results"] if r["name"].startswith("generative"))
    for protocol, key in (("full ranking", "metrics"), ("history left out", "metrics_exclude_seen")):
        measured = row["metrics"][f"whole model, beam {beam} (as trained), {protocol}"]
        assert measured == {metric: round(generative[key][metric], 4) for metric in ("ndcg@10", "recall@10")}


def test_downstream_refuses_the_validation_split_for_retrieval(search_log_dir: Path):
    run = run_benchmark("downstream.py", "--dataset", str(search_log_dir), "--split", "valid")
    assert run.returncode == 2
    assert "--split valid scores an interaction log's validation step" in run.stderr


@pytest.mark.parametrize(
    ("script", "extra"),
    [("downstream.py", []), ("memorisation.py", ["--sasrec-seeds", "0"]), ("recommender_parts.py", ["--model", "m=."])],
)
def test_a_benchmark_refuses_a_directory_without_the_files_its_task_reads(catalogue_dir: Path, script, extra):
    run = run_benchmark(script, "--dataset", str(catalogue_dir), *extra)
    assert run.returncode == 2
    assert "sequences.jsonl" in run.stderr
