from __future__ import annotations

import json

import numpy as np
import pytest
from testsupport.lm import TINY_LM

from lmindexer.catalog import read_items
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers import available_methods, create_indexer, load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE, WEIGHTS_FILE
from lmindexer.indexers.lm.backbone import TOKENIZER_DIR


def test_the_method_is_registered():
    assert "lmindexer" in available_methods()


def test_three_levels_of_codes_in_range(tiny_lm, wiki_items):
    codes = tiny_lm.codes(wiki_items)
    assert codes.shape == (len(wiki_items), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    # real text in 12 topics spreads over the first codebook rather than collapsing
    assert len(np.unique(codes[:, 0])) >= 4


def test_losses_go_down(tiny_lm):
    stages = tiny_lm.manifest["training"]["stages"]
    assert [s["stage"] for s in stages] == [
        f"position {p} {kind}" for p in (1, 2, 3) for kind in ("no-code", "quantised")
    ]
    first = stages[0]
    assert first["loss_last"] < first["loss_first"]
    assert first["reconstruction_last"] < first["reconstruction_first"]
    assert stages[-1]["reconstruction_last"] < stages[0]["reconstruction_first"]
    for stage in stages[1::2]:
        assert stage["assignment"]["codes_used"] >= 2


def test_save_load_assign_reproduces_every_code(tiny_lm, wiki_items, tmp_path):
    version = tiny_lm.save(tmp_path / "snap")
    names = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert names == sorted([SNAPSHOT_FILE, WEIGHTS_FILE, TOKENIZER_DIR])
    # nothing in a snapshot is executable or pickled: JSON, text and safetensors only
    for path in (tmp_path / "snap").rglob("*"):
        assert path.is_dir() or path.suffix in {".json", ".safetensors", ".txt"}, path
    document = json.loads((tmp_path / "snap" / SNAPSHOT_FILE).read_text())
    assert document["metadata"]["backbone_config"]["model_type"] == "encoder-decoder"
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.version == version
    np.testing.assert_array_equal(loaded.codes(wiki_items), tiny_lm.codes(wiki_items))


def test_codes_do_not_depend_on_batch_or_order(tiny_lm, wiki_items):
    whole = tiny_lm.codes(wiki_items)
    texts = tiny_lm.texts(wiki_items)
    order = np.random.default_rng(1).permutation(len(texts))
    shuffled = tiny_lm.codes_for_texts([texts[i] for i in order])
    np.testing.assert_array_equal(shuffled, whole[order])
    one_by_one = np.concatenate([tiny_lm.codes_for_texts([t]) for t in texts[:40]])
    np.testing.assert_array_equal(one_by_one, whole[:40])


def test_a_snapshot_without_its_backbone_configuration_is_refused(tiny_lm, tmp_path, as_written_before_digests):
    # Written before content digests, so only the version's hash of files and config guards it: metadata is not
    # covered by that hash and must still be checked on its own.
    tiny_lm.save(tmp_path / "snap")
    document = as_written_before_digests(tmp_path / "snap")
    del document["metadata"]["backbone_config"]
    (tmp_path / "snap" / SNAPSHOT_FILE).write_text(json.dumps(document))
    with pytest.raises(SnapshotError, match="backbone configuration"):
        load_snapshot(tmp_path / "snap")


def _append_a_newline(path):
    path.write_bytes(path.read_bytes() + b"\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _append_a_newline(d / TOKENIZER_DIR / "tokenizer.json"),
         r"file tokenizer/tokenizer\.json has \d+ bytes, saved with \d+$"),
        (lambda d: (d / TOKENIZER_DIR / "added_tokens.json").write_text("{}"),
         r"unexpected file tokenizer/added_tokens\.json$"),
        (lambda d: (d / TOKENIZER_DIR / "tokenizer.json").unlink(), r"file tokenizer/tokenizer\.json is missing$"),
        (lambda d: _edit_document(d, lambda doc: doc["metadata"]["backbone_config"].update(layer_norm_eps=0.1)),
         r"metadata\.backbone_config was edited$"),
        (lambda d: _edit_document(d, lambda doc: doc["config"].update(text_template="{text}")),
         r"config\.text_template was edited$"),
    ],
    ids=["changed-tokenizer", "extra-asset", "missing-asset", "backbone-config", "text-template"],
)  # fmt: skip
def test_a_changed_asset_or_document_is_refused(tiny_lm, tmp_path, damage, message):
    tiny_lm.save(tmp_path / "snap")
    damage(tmp_path / "snap")
    with pytest.raises(SnapshotError, match=rf"snapshot .*snap does not match what was saved: {message}"):
        load_snapshot(tmp_path / "snap")


def _edit_document(directory, edit):
    document = json.loads((directory / SNAPSHOT_FILE).read_text())
    edit(document)
    (directory / SNAPSHOT_FILE).write_text(json.dumps(document))


def test_a_warm_retrain_keeps_codes_on_a_grown_catalogue(tiny_lm, wiki_items, wiki_dir, tmp_path):
    tiny_lm.save(tmp_path / "previous")
    previous = load_snapshot(tmp_path / "previous")
    everything, _ = read_items(wiki_dir / "items.jsonl")
    known = {item.item_id for item in wiki_items}
    grown = wiki_items + [item for item in everything if item.item_id not in known][:80]
    retrained = create_indexer("lmindexer", {**TINY_LM, "warm_steps": 10})
    retrained.warm_start(previous)
    retrained.fit(grown, progress=False)
    warm = retrained.manifest["warm_start"]
    assert warm["previous_version"] == previous.version
    assert [s["stage"] for s in retrained.manifest["training"]["stages"]] == [
        f"position {p} quantised" for p in (1, 2, 3)
    ]
    before = previous.codes(wiki_items)
    after = retrained.codes(wiki_items)
    # The retrain starts from the previous codebooks and assignment: far more codes survive than chance would keep
    # (1 in 8 for one position, 1 in 512 for the whole tuple).
    assert float((before[:, 0] == after[:, 0]).mean()) > 0.5
    assert float((before == after).all(axis=1).mean()) > 0.1
    assert 0.1 < warm["code_stability"] <= 1.0


def test_a_warm_start_needs_the_same_architecture(tiny_lm, fitted):
    with pytest.raises(ConfigError, match="must match"):
        create_indexer("lmindexer", {**TINY_LM, "codebook_size": 16}).warm_start(tiny_lm)
    with pytest.raises(ConfigError, match="needs a fitted lmindexer snapshot"):
        create_indexer("lmindexer", TINY_LM).warm_start(fitted["rq-kmeans"])
    with pytest.raises(ConfigError, match="does not support warm retraining"):
        create_indexer("rq-kmeans", {"levels": 3, "codebook_size": 8}).warm_start(fitted["rq-kmeans"])


def test_a_fine_tuned_encoder_trains_on_live_encoder_states(wiki_items):
    indexer = create_indexer(
        "lmindexer",
        {**TINY_LM, "levels": 2, "train_encoder": True, "nocode_steps": 24, "quantised_steps": 4},
    )
    indexer.fit(wiki_items[:160], progress=False)
    training = indexer.manifest["training"]
    assert training["encoder_cache_seconds"] == 0
    assert training["stages"][0]["loss_last"] < training["stages"][0]["loss_first"]
    assert indexer.codes(wiki_items[:10]).shape == (10, 2)


def test_a_local_t5_backbone_trains_and_reproduces(wiki_items, tmp_path_factory, tmp_path):
    from test_lm_backbone import _tiny_t5

    directory = _tiny_t5(tmp_path_factory.mktemp("t5-fit"))
    options = {**TINY_LM, "backbone": str(directory), "levels": 2, "nocode_steps": 4, "quantised_steps": 4}
    indexer = create_indexer("lmindexer", options)
    indexer.fit(wiki_items[:96], progress=False)
    indexer.save(tmp_path / "snap")
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.model.backbone.model.config.model_type == "t5"
    np.testing.assert_array_equal(loaded.codes(wiki_items[:50]), indexer.codes(wiki_items[:50]))
