"""Behaviour every indexer method must have, checked on each baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmindexer.catalog import Item
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.idtable import IdTable
from lmindexer.indexers import available_methods, create_indexer, load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE, WEIGHTS_FILE
from lmindexer.methods import INDEXER_METHODS

METHODS = ["rq-kmeans", "hkmeans", "rqvae"]


def test_methods_are_registered():
    assert set(METHODS) <= set(available_methods())


@pytest.mark.parametrize("method", METHODS)
def test_codes_are_in_range_and_use_the_codebooks(fitted, wiki_items, method):
    codes = fitted[method].codes(wiki_items)
    assert codes.shape == (len(wiki_items), 3)
    assert codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    # real text spread over 12 topics must not collapse onto a handful of codes
    assert len(np.unique(codes[:, 0])) >= 6
    assert len(np.unique(codes, axis=0)) > len(wiki_items) // 4


@pytest.mark.parametrize("method", METHODS)
def test_last_level_preferences_rank_the_codebook_from_the_items_own_code(fitted, wiki_items, method):
    indexer = fitted[method]
    texts = indexer.texts(wiki_items)
    codes, preferences = indexer.codes_and_preferences(texts)
    np.testing.assert_array_equal(codes, indexer.codes_for_texts(texts))
    assert (preferences[:, 0] == codes[:, -1]).all()
    size = indexer.codebook_sizes[-1]
    for row in preferences:
        ranked = [int(c) for c in row if c >= 0]
        assert len(ranked) == len(set(ranked)) and all(0 <= c < size for c in ranked)
        if method != "hkmeans":  # a tree ranks the children of the item's node, which may be fewer than K
            assert sorted(ranked) == list(range(size))
    # and the ranking means something: an item's second choice is nearer than its last one, as assignment measures
    _, reversed_order = indexer.codes_and_preferences(texts[::-1])
    np.testing.assert_array_equal(reversed_order[::-1], preferences)  # a pure function of each text


@pytest.mark.parametrize("method", METHODS)
def test_a_balanced_last_level_collides_less_than_argmax(fitted, wiki_items, method, tmp_path):
    from lmindexer.jobs import assign_ids
    from lmindexer.metrics import collision_stats

    catalogue = tmp_path / "items.jsonl"
    catalogue.write_text("".join(json.dumps(item.to_dict()) + "\n" for item in wiki_items))
    rates = {}
    for policy in ("argmax", "balanced"):
        indexer = create_indexer(method, {**fitted[method].config.model_dump(), "last_level": policy})
        indexer.fit(wiki_items, progress=False)
        indexer.save(tmp_path / policy)
        assign_ids(tmp_path / policy, catalogue, tmp_path / f"{policy}.parquet", progress=False)
        table = IdTable.read(tmp_path / f"{policy}.parquet")
        assert table.space.last_level == policy
        rates[policy] = collision_stats(np.asarray(table.codes_list()))["collision_rate"]
    assert rates["balanced"] <= rates["argmax"]
    if method != "hkmeans":
        # a shared last codebook leaves many codes unused under each prefix; a tree already splits each node into
        # as many children as it has items (up to K), so only crowded nodes collide either way
        assert rates["balanced"] < rates["argmax"] / 2


@pytest.mark.parametrize("method", METHODS)
def test_save_load_assign_gives_identical_codes(fitted, wiki_items, tmp_path, method):
    indexer = fitted[method]
    version = indexer.save(tmp_path / "snap")
    assert version.startswith(f"{method}-")
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [SNAPSHOT_FILE, WEIGHTS_FILE]
    document = json.loads((tmp_path / "snap" / SNAPSHOT_FILE).read_text())
    assert document["method"] == method and document["version"] == version
    assert document["manifest"]["items"] == len(wiki_items)
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.version == version
    np.testing.assert_array_equal(loaded.codes(wiki_items), indexer.codes(wiki_items))


@pytest.mark.parametrize("method", METHODS)
def test_codes_do_not_depend_on_batch_or_order(fitted, wiki_items, method):
    indexer = fitted[method]
    whole = indexer.codes(wiki_items)
    reversed_codes = indexer.codes(wiki_items[::-1])[::-1]
    in_small_batches = np.concatenate([indexer.codes(wiki_items[i : i + 7]) for i in range(0, len(wiki_items), 7)])
    np.testing.assert_array_equal(whole, reversed_codes)
    np.testing.assert_array_equal(whole, in_small_batches)


@pytest.mark.parametrize("method", METHODS)
def test_new_items_get_codes_without_refitting(fitted, wiki_items, tmp_path, monkeypatch, method):
    fitted[method].save(tmp_path / "snap")
    indexer = load_snapshot(tmp_path / "snap")
    learned = {name: tensor.clone() for name, tensor in indexer.state_tensors().items()}

    def refit(*_args, **_kwargs):
        raise AssertionError("assigning codes fitted the indexer again")

    for name in ("fit", "fit_texts", "fit_embeddings"):
        monkeypatch.setattr(type(indexer), name, refit)
    new = [
        Item("new-1", title="Quantum chromodynamics", text="A theory of the strong force."),
        Item("new-2", title="Sourdough", text="Bread leavened by wild yeast and lactic acid bacteria."),
    ]
    assert indexer.codes(new).shape == (2, 3)
    after = indexer.state_tensors()
    assert after.keys() == learned.keys()
    for name, tensor in learned.items():
        assert torch.equal(after[name], tensor), f"{name} moved while assigning"
    # what the snapshot holds is byte for byte what it held before the new items came
    indexer.save(tmp_path / "after")
    assert (tmp_path / "after" / WEIGHTS_FILE).read_bytes() == (tmp_path / "snap" / WEIGHTS_FILE).read_bytes()
    np.testing.assert_array_equal(indexer.codes(wiki_items), fitted[method].codes(wiki_items))


def test_unfitted_indexer_and_too_small_catalogue(wiki_items):
    indexer = create_indexer("rq-kmeans", {"codebook_size": 8})
    with pytest.raises(SnapshotError, match="not fitted"):
        indexer.codes(wiki_items[:2])
    with pytest.raises(SnapshotError, match="not been fitted"):
        indexer.save("/tmp/never")
    with pytest.raises(ConfigError, match="at least 8 items"):
        indexer.fit(wiki_items[:5], progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"levels": 0}, "levels"),
        ({"levels": 2, "codebook_size": [8, 8, 8]}, "codebook_size: 3 values but levels is 2"),
        ({"codebook_size": 1}, "between 2 and"),
        ({"text_template": "{nope}"}, "unknown placeholder"),
        ({"colour": "red"}, "colour"),
        ({"kmeans_iterations": 0}, "kmeans_iterations"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        create_indexer("rq-kmeans", options)


def test_unknown_method():
    available = "hkmeans, lmindexer, rq-kmeans, rqvae"
    with pytest.raises(ConfigError, match=f"unknown indexer method 'nope'; available: {available}"):
        create_indexer("nope")


@pytest.mark.parametrize("method", INDEXER_METHODS)
def test_the_default_codebook_size_applies_to_every_level(method):
    for levels in (1, 2, 3):
        assert create_indexer(method, {"levels": levels}).codebook_sizes == (32,) * levels


def test_an_indexer_fitted_with_the_default_codebook_size_writes_every_level(wiki_items):
    indexer = create_indexer("rq-kmeans", {"levels": 2})
    indexer.fit(wiki_items, progress=False)
    codes = indexer.codes(wiki_items)
    assert codes.shape == (len(wiki_items), 2) and codes.max() < 32 and len(np.unique(codes[:, 1])) > 1


def test_per_level_codebook_sizes(wiki_items):
    indexer = create_indexer("rq-kmeans", {"levels": 2, "codebook_size": [4, 16]})
    indexer.fit(wiki_items, progress=False)
    codes = indexer.codes(wiki_items)
    assert codes[:, 0].max() < 4 and codes[:, 1].max() < 16
    assert len(np.unique(codes[:, 1])) > 4


def test_broken_snapshots_are_refused(fitted, tmp_path):
    with pytest.raises(SnapshotError, match="not found"):
        load_snapshot(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotError, match=r"no snapshot\.json"):
        load_snapshot(tmp_path / "empty")
    fitted["rq-kmeans"].save(tmp_path / "snap")
    document_path = tmp_path / "snap" / SNAPSHOT_FILE
    document = json.loads(document_path.read_text())
    document_path.write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(SnapshotError, match="format version 99"):
        load_snapshot(tmp_path / "snap")
    document_path.write_text(json.dumps(document))
    (tmp_path / "snap" / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(SnapshotError, match=r"file weights\.safetensors has 15 bytes, saved with"):
        load_snapshot(tmp_path / "snap")


def test_save_refuses_to_overwrite_a_non_snapshot(fitted, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    with pytest.raises(SnapshotError, match="refusing to overwrite"):
        fitted["hkmeans"].save(tmp_path / "precious")
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"


def test_snapshot_loads_from_s3(fitted, wiki_items, tmp_path, s3_bucket):
    from lmindexer.storage.s3 import upload_file

    fitted["rq-kmeans"].save(tmp_path / "snap")
    for path in (tmp_path / "snap").iterdir():
        upload_file(path, f"s3://{s3_bucket}/models/v1/{path.name}")
    loaded = load_snapshot(f"s3://{s3_bucket}/models/v1/")
    np.testing.assert_array_equal(loaded.codes(wiki_items[:20]), fitted["rq-kmeans"].codes(wiki_items[:20]))
