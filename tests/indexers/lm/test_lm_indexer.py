from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from testsupport.lm import TINY_LM

from lmindexer.catalog import read_items
from lmindexer.errors import ConfigError, SnapshotError
from lmindexer.indexers import available_methods, create_indexer, load_snapshot
from lmindexer.indexers.base import SNAPSHOT_FILE, WEIGHTS_FILE
from lmindexer.indexers.kmeans import fit_kmeans, nearest_centroid
from lmindexer.indexers.lm.backbone import TOKENIZER_DIR


def test_the_method_is_registered():
    assert "lmindexer" in available_methods()


def test_three_levels_of_codes_in_range(tiny_lm, wiki_items):
    codes = tiny_lm.codes(wiki_items)
    assert codes.shape == (len(wiki_items), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 8
    # real text in 12 topics spreads over the first codebook rather than collapsing
    assert len(np.unique(codes[:, 0])) >= 4


def test_every_phase_trains_and_reports_its_label_free_criterion(tiny_lm):
    phases = tiny_lm.manifest["training"]["phases"]
    assert [p["phase"] for p in phases] == ["encoder", "position 1", "position 2", "position 3"]
    for phase in phases:
        assert phase["steps"] > 0 and "loss_first" in phase and "loss_last" in phase
        criterion = phase["heldout_cross_entropy"]
        values = list(criterion.values())
        assert len(values) == 2 and all(np.isfinite(values))
        # the change is kept exactly when the held-out cross-entropy says it helped
        assert phase["kept"] == (values[1] < values[0])
    for phase in phases[1:]:
        assert phase["codes_used"] >= 2


@pytest.mark.parametrize("keep_learned", ["if_criterion_improves", "always"])
def test_a_change_the_criterion_turns_down_is_kept_only_when_told_to_keep_every_change(
    keep_learned, wiki_items, monkeypatch
):
    """The criterion says every trained writer made the codes worse: the default restores the k-means start (the
    writer back to its untrained state), ``always`` keeps the trained writer regardless."""
    import lmindexer.indexers.lm.training as training

    verdicts = iter([1.0, 2.0] * 3)  # (initial, trained) per position: training always looks worse
    monkeypatch.setattr(training, "heldout_cross_entropy", lambda codes, items: next(verdicts))
    options = {**TINY_LM, "train_layers": 0, "encoder_epochs": 0, "keep_learned": keep_learned}
    indexer = create_indexer("lmindexer", options)
    indexer.fit(wiki_items, progress=False)
    keep = keep_learned == "always"
    assert [p["kept"] for p in indexer.manifest["training"]["phases"]] == [keep] * 3
    # An untrained writer has a zero query and a zero correction: it writes the summary itself.
    writers = indexer.model.writers
    trained = [bool(writer.query.abs().sum() + writer.correction.weight.abs().sum() > 0) for writer in writers]
    assert trained == [keep] * 3


def test_earlier_codes_never_move_while_later_positions_train(tiny_lm):
    # decoded again with the final model, every item has the codes each position gave it when it was trained
    assert tiny_lm.manifest["training"]["earlier_codes_changed"] == [0.0, 0.0, 0.0]


def test_position_one_starts_as_k_means_on_the_encoders_summary(wiki_items):
    # No training at all: position 1 is exactly k-means over the frozen encoder's mean-pooled states.
    indexer = create_indexer("lmindexer", {**TINY_LM, "train_layers": 0, "encoder_epochs": 0, "writer_epochs": 0})
    indexer.fit(wiki_items, progress=False)
    model = indexer.model
    batch = model.encoder.tokenize(indexer.texts(wiki_items), indexer.config.max_length)
    from lmindexer.indexers.lm.encoder import mean_pool

    summaries = mean_pool(model.encoder.full(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    points = summaries.detach().double().numpy()
    centroids = fit_kmeans(points - points.mean(axis=0), 8, seed=0, iterations=indexer.config.kmeans_iterations)
    expected = nearest_centroid(points - points.mean(axis=0), centroids)
    agreement = float((indexer.codes(wiki_items)[:, 0] == expected).mean())
    assert agreement > 0.98, agreement


def test_save_load_assign_reproduces_every_code(tiny_lm, wiki_items, tmp_path):
    version = tiny_lm.save(tmp_path / "snap")
    names = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert names == sorted([SNAPSHOT_FILE, WEIGHTS_FILE, TOKENIZER_DIR])
    # nothing in a snapshot is executable or pickled: JSON, text and safetensors only
    for path in (tmp_path / "snap").rglob("*"):
        assert path.is_dir() or path.suffix in {".json", ".safetensors", ".txt"}, path
    document = json.loads((tmp_path / "snap" / SNAPSHOT_FILE).read_text())
    assert document["metadata"]["encoder_config"]["model_type"] == "bert"
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.version == version
    np.testing.assert_array_equal(loaded.codes(wiki_items), tiny_lm.codes(wiki_items))
    codes, preferences = loaded.codes_and_preferences(loaded.texts(wiki_items))
    assert (preferences[:, 0] == codes[:, -1]).all()
    assert all(sorted(row) == list(range(8)) for row in preferences.tolist())


def test_codes_do_not_depend_on_batch_or_order(tiny_lm, wiki_items):
    whole = tiny_lm.codes(wiki_items)
    texts = tiny_lm.texts(wiki_items)
    order = np.random.default_rng(1).permutation(len(texts))
    shuffled = tiny_lm.codes_for_texts([texts[i] for i in order])
    np.testing.assert_array_equal(shuffled, whole[order])
    one_by_one = np.concatenate([tiny_lm.codes_for_texts([t]) for t in texts[:40]])
    np.testing.assert_array_equal(one_by_one, whole[:40])


def test_a_snapshot_without_its_encoder_configuration_is_refused(tiny_lm, tmp_path, as_written_before_digests):
    # Written before content digests, so only the version's hash of files and config guards it: metadata is not
    # covered by that hash and must still be checked on its own.
    tiny_lm.save(tmp_path / "snap")
    document = as_written_before_digests(tmp_path / "snap")
    del document["metadata"]["encoder_config"]
    (tmp_path / "snap" / SNAPSHOT_FILE).write_text(json.dumps(document))
    with pytest.raises(SnapshotError, match="encoder's configuration"):
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
        (lambda d: _edit_document(d, lambda doc: doc["metadata"]["encoder_config"].update(layer_norm_eps=0.1)),
         r"metadata\.encoder_config was edited$"),
        (lambda d: _edit_document(d, lambda doc: doc["config"].update(text_template="{text}")),
         r"config\.text_template was edited$"),
    ],
    ids=["changed-tokenizer", "extra-asset", "missing-asset", "encoder-config", "text-template"],
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


@pytest.fixture(scope="module")
def warm_retrain(tiny_lm, wiki_items, wiki_dir, tmp_path_factory):
    """The tiny LMIndexer saved and loaded as the previous snapshot, the catalogue grown by 80 items, and a warm
    retrain on it (encoder kept as it was): (previous, grown items, retrained)."""
    directory = tmp_path_factory.mktemp("warm") / "previous"
    tiny_lm.save(directory)
    previous = load_snapshot(directory)
    everything, _ = read_items(wiki_dir / "items.jsonl")
    known = {item.item_id for item in wiki_items}
    grown = wiki_items + [item for item in everything if item.item_id not in known][:80]
    retrained = create_indexer("lmindexer", {**TINY_LM, "encoder_epochs": 0, "train_layers": 0})
    retrained.warm_start(previous)
    decoded_by_retrained = []
    decode = type(retrained)._decode

    def counting_decode(self, texts, **kwargs):
        if self is retrained:
            decoded_by_retrained.append(len(texts))
        return decode(self, texts, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(retrained), "_decode", counting_decode)
        retrained.fit(grown, progress=False)
    retrained.decoded_while_fitting = decoded_by_retrained
    return previous, grown, retrained


def test_a_warm_retrain_starts_from_the_previous_encoder(warm_retrain):
    previous, _, retrained = warm_retrain
    warm = retrained.manifest["warm_start"]
    assert warm["previous_version"] == previous.version
    # the retrain keeps the previous encoder: the same summaries, so position 1 is k-means on the same space
    before = previous.model.encoder.model.state_dict()
    after = retrained.model.encoder.model.state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert 0.0 <= warm["first_code_agreement"] <= 1.0


def test_a_warm_retrain_reports_its_agreement_without_encoding_the_catalogue_again(warm_retrain):
    # The previous snapshot encodes the catalogue once (its codes are what the new ones are numbered after); the
    # retrained model's codes are the ones training assigned, so the new model decodes nothing while fitting.
    _, _, retrained = warm_retrain
    assert retrained.decoded_while_fitting == []
    assert "code_agreement" in retrained.manifest["warm_start"]


def test_a_warm_retrain_numbers_every_position_as_the_previous_snapshot_did(warm_retrain, tmp_path):
    previous, grown, retrained = warm_retrain
    old, new = previous.codes(grown), retrained.codes(grown)
    positions = [p for p in retrained.manifest["training"]["phases"] if "prefix_agreement" in p]
    assert len(positions) == TINY_LM["levels"]
    size = TINY_LM["codebook_size"]
    for level, phase in enumerate(positions):
        agreement = phase["prefix_agreement"]
        same_prefix = (new[:, :level] == old[:, :level]).all(axis=1)
        kept = int((same_prefix & (new[:, level] == old[:, level])).sum())
        assert agreement["renumbered"] == round(kept / len(grown), 4)
        assert agreement["renumbered"] >= agreement["as_fitted"]
        # As many items keep their codes up to here as any numbering of this position's codes could keep: the best
        # one-to-one matching of the overlap, over the items whose earlier codes are the previous snapshot's.
        overlap = np.zeros((size, size), dtype=np.int64)
        np.add.at(overlap, (new[same_prefix, level], old[same_prefix, level]), 1)
        rows, columns = linear_sum_assignment(overlap, maximize=True)
        assert kept == overlap[rows, columns].sum(), f"position {level + 1}"
    # k-means numbers its clusters arbitrarily: renumbered, more items keep their first code.
    assert positions[0]["prefix_agreement"]["renumbered"] > positions[0]["prefix_agreement"]["as_fitted"]
    warm = retrained.manifest["warm_start"]
    assert warm["first_code_agreement"] == round(float((old[:, 0] == new[:, 0]).mean()), 4)
    assert warm["code_agreement"] == round(float((old == new).all(axis=1).mean()), 4)
    # Only the numbers changed: what the saved model writes is what training assigned (no drift at any position).
    assert retrained.manifest["training"]["earlier_codes_changed"] == [0.0, 0.0, 0.0]
    retrained.save(tmp_path / "retrained")
    assert np.array_equal(load_snapshot(tmp_path / "retrained").codes(grown), new)


def test_a_warm_start_needs_the_same_architecture(tiny_lm, fitted):
    with pytest.raises(ConfigError, match="must match"):
        create_indexer("lmindexer", {**TINY_LM, "codebook_size": 16}).warm_start(tiny_lm)
    with pytest.raises(ConfigError, match="needs a fitted lmindexer snapshot"):
        create_indexer("lmindexer", TINY_LM).warm_start(fitted["rq-kmeans"])
    with pytest.raises(ConfigError, match="does not support warm retraining"):
        create_indexer("rq-kmeans", {"levels": 3, "codebook_size": 8}).warm_start(fitted["rq-kmeans"])


def test_a_trained_encoder_changes_only_its_top_layers(wiki_items):
    indexer = create_indexer("lmindexer", {**TINY_LM, "levels": 2, "writer_epochs": 0})
    untrained = create_indexer("lmindexer", TINY_LM)._new_model().encoder.model.state_dict()
    indexer.fit(wiki_items[:160], progress=False)
    trained = indexer.model.encoder.model.state_dict()
    changed = {k for k in trained if not np.array_equal(trained[k].numpy(), untrained[k].numpy())}
    phase = indexer.manifest["training"]["phases"][0]
    if phase["kept"]:
        assert changed and all(k.startswith("encoder.layer.1.") for k in changed)  # tiny-random has 2 layers
    else:
        assert not changed  # not kept: the untrained weights are restored exactly


def test_a_local_t5_encoder_indexes_and_reproduces(wiki_items, tmp_path_factory, tmp_path):
    from test_lm_backbone import _tiny_t5

    directory = _tiny_t5(tmp_path_factory.mktemp("t5-fit"))
    options = {**TINY_LM, "backbone": str(directory), "levels": 2, "train_layers": -1, "encoder_epochs": 1}
    indexer = create_indexer("lmindexer", options)
    indexer.fit(wiki_items[:96], progress=False)
    indexer.save(tmp_path / "snap")
    loaded = load_snapshot(tmp_path / "snap")
    assert loaded.model.encoder.model.config.model_type == "t5"
    np.testing.assert_array_equal(loaded.codes(wiki_items[:50]), indexer.codes(wiki_items[:50]))
    # a T5 encoder runs whole: all of it trains, or none (its one layer here is all of it)
    assert not loaded.model.encoder.splittable and loaded.model.encoder.split_at(1) == 0


def test_bf16_assign_runs_the_encoder_in_bf16_and_writes_nearly_the_same_codes(tiny_lm, wiki_items, monkeypatch):
    """The encoder's states really change under bf16 (not only a recorded flag) while the codes they lead to stay
    those of float32 for nearly every item; the code writers always compare in float32/float64."""
    model = tiny_lm.model
    captured: list[torch.Tensor] = []
    token_states = model.token_states

    def spy(*args, **kwargs):
        states = token_states(*args, **kwargs)
        if not captured or torch.is_autocast_enabled("cpu") or tiny_lm.config.inference_precision == "fp32":
            captured.append(states.detach().float().clone())  # not the float32 re-run of items near a boundary
        return states

    monkeypatch.setattr(model, "token_states", spy)
    texts = tiny_lm.texts(wiki_items)
    codes = {}
    states = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setattr(tiny_lm, "config", tiny_lm.config.model_copy(update={"inference_precision": precision}))
        captured.clear()
        codes[precision] = tiny_lm.codes_for_texts(texts)
        states[precision] = torch.cat([s.flatten() for s in captured])
    assert not torch.equal(states["fp32"], states["bf16"])
    assert torch.nn.functional.cosine_similarity(states["fp32"], states["bf16"], dim=0) > 0.999
    assert (codes["fp32"] == codes["bf16"]).all(axis=1).mean() >= 0.9


def test_the_bf16_recheck_recomputes_the_items_near_a_code_boundary_in_fp32(tiny_lm, wiki_items):
    """States moved further than bf16 moves them: some codes change; the recheck runs exactly the items within the
    error bound of a code boundary again in float32 (they get the exact codes) and leaves the others alone."""
    from lmindexer.precision import BF16_RELATIVE_ERROR

    model = tiny_lm.model.eval()
    batch = model.encoder.tokenize(tiny_lm.texts(wiki_items[:96]), tiny_lm.config.max_length)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        exact = model.token_states(ids, mask).float()
        truth = model.greedy_codes(exact, mask)
        noise = torch.randn(exact.shape, generator=torch.Generator().manual_seed(0))
        moved = exact + 0.2 * exact.norm(dim=-1, keepdim=True) * noise / exact.size(-1) ** 0.5
        guessed = model.greedy_codes(moved, mask)
        assert (guessed != truth).any(dim=1).any(), "the moved states must change some codes"
        doubtful = torch.as_tensor(model.relative_radii(moved, mask, guessed) < BF16_RELATIVE_ERROR)
        assert 0 < int(doubtful.sum()) < len(doubtful)
        tiny_lm.last_recheck = {"items": 0, "recomputed_in_fp32": 0}
        _, written = tiny_lm._recheck_in_fp32(ids, mask, moved, guessed)
    assert torch.equal(written[doubtful], truth[doubtful])
    assert torch.equal(written[~doubtful], guessed[~doubtful])
    assert tiny_lm.last_recheck["recomputed_in_fp32"] == int(doubtful.sum())
