"""The dense index serve's dense and hybrid search use: built from real catalogue text with the packaged encoder,
persisted as a verified artifact, and ranking exactly as the benchmarks' dense baseline does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testsupport.cli import run_cli

from lmindexer.catalog.items import Item
from lmindexer.downstream.baselines import DenseRetriever
from lmindexer.downstream.dense import DOCUMENT, WEIGHTS, DenseIndex, parse_dense_config
from lmindexer.embeddings import TextEncoder
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.text import TextTemplate


@pytest.fixture(scope="module")
def sample(wiki_items) -> list[Item]:
    return wiki_items[:60]


@pytest.fixture(scope="module")
def index(sample) -> DenseIndex:
    return DenseIndex.build(sample)


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory) -> Path:
    return index.save(tmp_path_factory.mktemp("dense") / "index")


def test_the_index_ranks_exactly_as_the_benchmarks_dense_baseline(index, sample):
    """The served dense leg is the dense baseline benchmarks/downstream.py measures: the same encoder, text and
    exact inner-product search give the same ranking."""
    config = index.config
    encoder = TextEncoder(config.encoder, max_length=config.max_length)
    texts = [TextTemplate(config.text_template).render(item) for item in sample]
    baseline = DenseRetriever(encoder).index([item.item_id for item in sample], texts)
    queries = [item.title for item in sample[:10]] + ["history of science", "a river in europe"]
    found = index.search(queries, k=10)
    assert [[item_id for item_id, _ in ranked] for ranked in found] == baseline.search(queries, 10)
    for ranked in found:
        scores = [score for _, score in ranked]
        assert len(ranked) == 10 and scores == sorted(scores, reverse=True)
        assert all(-1.0 - 1e-5 <= score <= 1.0 + 1e-5 for score in scores)


def test_an_items_own_text_finds_it_first(index, sample):
    template = TextTemplate(index.config.text_template)
    found = index.search([template.render(item) for item in sample], k=1)
    assert [ranked[0][0] for ranked in found] == [item.item_id for item in sample]
    assert all(ranked[0][1] == pytest.approx(1.0, abs=1e-4) for ranked in found)


def test_tombstones_are_left_out_and_the_last_version_of_an_item_wins(sample):
    first, second, third = sample[:3]
    renamed = Item(item_id=first.item_id, title="Volcanic eruptions", text="Lava, magma and ash clouds.")
    deleted = Item(item_id=second.item_id, deleted=True)
    index = DenseIndex.build([first, second, third, renamed, deleted])
    assert index.item_ids == sorted([first.item_id, third.item_id])
    assert index.search(["Volcanic eruptions. Lava, magma and ash clouds."], k=1)[0][0][0] == first.item_id
    with pytest.raises(ConfigError, match="at least one live item"):
        DenseIndex.build([deleted])


def test_a_saved_index_loads_verified_and_answers_the_same(index, saved, sample):
    loaded = DenseIndex.load(saved)
    assert loaded.item_ids == index.item_ids and loaded.built_at == index.built_at
    assert loaded.config == index.config
    queries = [item.title for item in sample[:5]]
    for ours, theirs in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-6)
    assert sorted(p.name for p in saved.iterdir()) == sorted([DOCUMENT, WEIGHTS])


@pytest.mark.parametrize("damage", ["weights", "item_ids", "config"])
def test_an_edited_index_is_refused_naming_what_changed(saved, tmp_path, damage):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in saved.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    document = json.loads((copy / DOCUMENT).read_text())
    if damage == "weights":
        data = bytearray((copy / WEIGHTS).read_bytes())
        data[-8:] = bytes(8)
        (copy / WEIGHTS).write_bytes(bytes(data))
        expected = f"file {WEIGHTS} changed"
    elif damage == "item_ids":
        document["item_ids"] = list(reversed(document["item_ids"]))
        expected = "item_ids was edited"
    else:
        document["config"]["max_length"] = 128
        expected = "config.max_length was edited"
    (copy / DOCUMENT).write_text(json.dumps(document))
    with pytest.raises(SnapshotError, match=expected):
        DenseIndex.load(copy)


def test_an_index_built_by_other_encoder_weights_is_refused(sample, tmp_path, monkeypatch):
    index = DenseIndex.build(sample[:5])
    monkeypatch.setattr(index.encoder, "fingerprint", "0123456789abcdef")
    directory = index.save(tmp_path / "other")
    with pytest.raises(SnapshotError, match="would not be comparable; build the index again"):
        DenseIndex.load(directory)


def test_options_are_validated_once_with_clear_messages():
    with pytest.raises(ConfigError, match="max_length"):
        parse_dense_config({"max_length": 2})
    with pytest.raises(ConfigError, match="encoder_name"):
        parse_dense_config({"encoder_name": "x"})
    with pytest.raises(ConfigError, match="placeholder"):
        parse_dense_config({"text_template": "no fields"})


def test_dense_build_writes_an_index_serve_can_load(wiki_sample_path, tmp_path, capsys):
    out = tmp_path / "dense"
    code, printed, _ = run_cli(capsys, "dense", "build", "--catalog", str(wiki_sample_path), "--out", str(out), "-q")
    assert code == 0
    summary = json.loads(printed)
    loaded = DenseIndex.load(out)
    assert summary["items"] == len(loaded) > 100 and summary["out"] == str(out)
    # A catalogue version the pipeline wrote (a manifest over parts) is read as its live items: one deleted, one added.
    from lmindexer.catalog import Item
    from lmindexer.catalog.store import merge_into_version, read_catalog, write_catalog

    first = read_catalog(wiki_sample_path)
    gone = next(iter(first))
    write_catalog(first.values(), tmp_path / "catalog" / "r0" / "items.parquet")
    drop = [Item(gone, deleted=True), Item("added", text="A new item")]
    version, _ = merge_into_version(str(tmp_path / "catalog" / "r0" / "items.parquet"), [drop],
                                    str(tmp_path / "catalog" / "r1"), max_parts=16)  # fmt: skip
    code, printed, _ = run_cli(capsys, "dense", "build", "--catalog", version.uri, "--out", str(tmp_path / "v"), "-q")
    assert code == 0
    assert set(DenseIndex.load(tmp_path / "v").item_ids) == (set(first) - {gone}) | {"added"}
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"max_length": 3}))
    code, _, err = run_cli(capsys, "dense", "build", "--catalog", str(wiki_sample_path), "--out", str(out), "--options",
                       str(options))  # fmt: skip
    assert code == 2 and err.startswith("error: invalid dense index options: max_length")
