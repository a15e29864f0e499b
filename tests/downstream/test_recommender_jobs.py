"""Training and evaluating a recommender from files (lmindexer.downstream.recommender_jobs): histories read strictly,
every next item of the known items trained on, the last one held out on request, leave-last-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from testsupport.downstream_models import TINY_GENERATIVE, snapshot_files
from testsupport.retriever_state import one_torch_thread

from lmindexer.downstream.generative import RECOMMENDER_PRESETS, GenerativeConfig, GenerativeModel
from lmindexer.downstream.recommender_jobs import (
    evaluate_recommender,
    fit_recommender,
    read_histories,
    recommender_options,
)
from lmindexer.errors import ConfigError, RecommenderError

OPTIONS = {**TINY_GENERATIVE, "task": "recommendation", "history_window": 8, "epochs": 1, "batch_size": 128}
UNKNOWN = "no-such-movie"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# The three seeds of the recipe the "sequence" preset names (benchmarks/downstream.py on MovieLens-100k).
SEQUENCE_RECIPE = (
    "downstream-movielens-100k-sequence-training-steps-all-epochs-10-window-20"
    "-last-item-summary-item-vectors-dropout-0p3-input-dropout"
)
SEQUENCE_RESULTS = [RESULTS / f"{SEQUENCE_RECIPE}{seed}.json" for seed in ("", "-seed-1", "-seed-2")]
# Options added after those runs, each at the value that does what the runs did (the stored files lack them). None
# now: the runs store every option the library has.
LATER_OPTIONS: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def write_histories(path, users) -> str:
    path.write_text("".join(json.dumps({"user_id": user, "items": items}) + "\n" for user, items in users))
    return str(path)


@pytest.fixture(scope="module")
def files(movielens_subset_parts, tmp_path_factory):
    """The MovieLens subset's snapshot, ID table and catalogue as files, and 150 users' last 6 views as histories:
    one view replaced by an item the catalogue lacks, and one user who saw only such items."""
    _, table, sequences, catalogue = movielens_subset_parts
    snapshot, ids = snapshot_files(catalogue.parent, "rq-kmeans")
    users = [(f"u{n}", list(sequence[-6:])) for n, sequence in enumerate(sequences[:150])]
    users[0][1][2] = UNKNOWN
    users.append(("only-unknown", [UNKNOWN, UNKNOWN + "-2"]))
    root = tmp_path_factory.mktemp("recommender-jobs")
    histories = write_histories(root / "histories.jsonl", users)
    return SimpleNamespace(snapshot=str(snapshot), ids=str(ids), catalog=str(catalogue), histories=histories,
                           users=users, items=len(table), root=root)  # fmt: skip


def _unknown(item: str) -> bool:
    return item.startswith(UNKNOWN)


def _known(users):
    return [[item for item in items if not _unknown(item)] for _, items in users]


@pytest.fixture(scope="module")
def trained(files):
    return fit_recommender(files.snapshot, files.ids, files.catalog, files.histories, OPTIONS)


def test_histories_are_read_strictly_and_each_bad_line_is_named(tmp_path):
    good = '{"user_id": "a", "items": ["m1", "m2"]}\n'
    cases = {
        "not json": (good + "{nope\n", "line 2: not a JSON object"),
        "no items": (good + '{"user_id": "b"}\n', "line 2: needs a non-empty string 'user_id'"),
        "empty items": (good + '{"user_id": "b", "items": []}\n', "line 2: needs"),
        "an item not a string": (good + '{"user_id": "b", "items": ["m1", 7]}\n', "line 2: needs"),
        "a user twice": (good + "\n" + good, "line 3: user 'a' already has a history on line 1"),
        "nothing": ("\n\n", "holds no histories"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(text)
        with pytest.raises(RecommenderError, match=message):
            read_histories(path)
    # A data set's leave-last-out rows (lmindexer datasets fetch) read as train, valid, test.
    split = '{"user_id": "c", "train": ["m4", "m5"], "valid": "m6", "test": "m7"}\n'
    (tmp_path / "ok.jsonl").write_text(good + '{"user_id": "b", "items": ["m3"]}\n' + split)
    assert read_histories(tmp_path / "ok.jsonl") == [
        ("a", ["m1", "m2"]),
        ("b", ["m3"]),
        ("c", ["m4", "m5", "m6", "m7"]),
    ]
    (tmp_path / "bad-split.jsonl").write_text('{"user_id": "c", "train": "m4", "valid": "m6", "test": "m7"}\n')
    with pytest.raises(RecommenderError, match="line 1: needs"):
        read_histories(tmp_path / "bad-split.jsonl")


def test_a_recommender_trains_on_every_next_item_of_the_items_with_a_live_id(files, trained):
    model, summary = trained
    known = _known(files.users)
    assert model.config.task == "recommendation" and len(model.trie) == files.items
    # Every (prefix -> next item) of each history's known items: the unknown item is skipped, not a break.
    assert summary["training"]["examples"] == sum(len(k) - 1 for k in known if len(k) >= 2)
    assert (summary["users"], summary["users_skipped"], summary["history_items_unknown"]) == (150, 1, 3)
    # The item prior's vectors started from the items' texts, every one of them.
    assert summary["training"]["embedded_items"] == files.items
    assert summary["held_out_last"] is False and summary["items"] == files.items


def test_hold_out_last_keeps_each_historys_last_item_out_of_training(files):
    _, summary = fit_recommender(files.snapshot, files.ids, files.catalog, files.histories, OPTIONS, hold_out_last=True)
    known = _known(files.users)
    assert summary["training"]["examples"] == sum(len(k) - 2 for k in known if len(k) >= 3)
    assert summary["held_out_last"] is True


def test_evaluation_is_leave_last_out_over_the_users_the_model_can_score(files, trained):
    model, _ = trained
    users = [*files.users, ("last-unknown", [files.users[1][1][0], UNKNOWN])]
    eligible = [items for _, items in users if not _unknown(items[-1]) and not all(map(_unknown, items[:-1]))]
    for exclude_seen in (True, False):
        expected = model.evaluate_recommendation(
            [items[:-1] for items in eligible], [items[-1] for items in eligible], exclude_seen=exclude_seen
        )
        found = evaluate_recommender(model, users, exclude_seen=exclude_seen)
        scored = expected.pop("queries")
        assert found == {**expected, "users": scored, "skipped_users": 2, "exclude_seen": exclude_seen}
        assert scored == len(eligible) == len(users) - 2
    # Leaving the history out is the default, as in /recommend.
    assert evaluate_recommender(model, users)["exclude_seen"] is True


def test_options_for_another_task_fail_before_anything_is_loaded(files, tmp_path):
    with pytest.raises(ConfigError, match="a recommender's options name task 'retrieval'"):
        fit_recommender(tmp_path / "no-snapshot", files.ids, files.catalog, files.histories, {"task": "retrieval"})


def test_histories_without_two_known_items_or_a_retriever_are_refused(files, movielens_subset_parts, tmp_path):
    lone = write_histories(tmp_path / "lone.jsonl", [("a", [files.users[1][1][0], UNKNOWN])])
    with pytest.raises(RecommenderError, match=r"no history in .* has two items with a live ID"):
        fit_recommender(files.snapshot, files.ids, files.catalog, lone, OPTIONS)
    snapshot, table, _, _ = movielens_subset_parts
    retriever = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "dense_prior": False})
    with pytest.raises(ConfigError, match="a retriever, not a recommender"):
        evaluate_recommender(retriever, files.users)


@pytest.mark.parametrize("path", SEQUENCE_RESULTS, ids=("seed-0", "seed-1", "seed-2"))
def test_the_sequence_preset_is_exactly_the_recipe_whose_three_seeds_were_measured(path):
    """The preset's claim to be the measured recipe: over the library's defaults it gives the very options each
    stored seed trained with (a change to the preset or to a default it leaves alone breaks the claim)."""
    stored = json.loads(path.read_text())["generative_options"]
    options = {**recommender_options({}, "sequence"), "seed": stored["seed"]}
    dumped = GenerativeConfig(**options).model_dump(mode="json")
    assert {option: dumped.pop(option, None) for option in LATER_OPTIONS} == LATER_OPTIONS
    assert dumped == stored


def test_a_preset_trains_with_its_options_and_given_options_override_them(files):
    model, summary = fit_recommender(files.snapshot, files.ids, files.catalog, files.histories, OPTIONS,
                                     preset="sequence")  # fmt: skip
    preset = RECOMMENDER_PRESETS["sequence"]
    config = model.config
    trained = ("sequence_training", "history_summary", "history_item_vectors", "dropout", "history_input_dropout")
    assert {option: getattr(config, option) for option in trained} == {option: preset[option] for option in trained}
    # OPTIONS name these too, and win (the preset trains 10 epochs over a window of the default 20).
    assert (config.epochs, config.history_window) == (OPTIONS["epochs"], OPTIONS["history_window"]) == (1, 8)
    assert preset["epochs"] == 10 and "history_window" not in preset
    assert summary["preset"] == "sequence"
    # Trained as a sequence (windows, which only sequence training reports) over every next item of the known items.
    assert summary["training"]["windows"] >= 1
    assert summary["training"]["examples"] == sum(len(items) - 1 for items in _known(files.users) if len(items) >= 2)


def test_an_unknown_preset_fails_before_anything_is_loaded_naming_the_presets(files, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown recommender preset 'sasrec'; presets: sequence"):
        fit_recommender(tmp_path / "no-snapshot", files.ids, files.catalog, files.histories, preset="sasrec")
