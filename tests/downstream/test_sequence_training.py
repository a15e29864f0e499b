"""Sequence training of a recommender: every next-item step of a window learnt in one pass (causal history)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_GENERATIVE
from testsupport.downstream_models import recall_of_held_out_next_items, teacher_forced_log_probability
from torch import nn

from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.model import HistoryEncoder
from lmindexer.errors import ConfigError
from lmindexer.indexers.lm.decoding import decode_blocks

SEQUENCE_OPTIONS = {
    **TINY_GENERATIVE,
    "task": "recommendation",
    "sequence_training": True,
    "history_window": 6,
    "epochs": 6,
    "batch_size": 16,
}


# The history's summary, and whether a history also reads its items' item-prior vectors.
VARIANTS = {
    "mean": {"history_summary": "mean"},
    "last-item": {"history_summary": "last-item"},
    "last-item-item-vectors": {"history_summary": "last-item", "history_item_vectors": True},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def untrained(movielens_small, request):
    snapshot, table, _ = movielens_small
    model = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, **VARIANTS[request.param]})
    model._start_item_vectors(None, progress=False)  # the item prior's vectors (random directions), as training does
    return model.network.eval(), model


def test_a_causal_history_gives_earlier_items_the_same_states_whatever_follows(untrained, movielens_small):
    _, model = untrained
    sequence = movielens_small[2][0]
    depth = model.vocabulary.depth
    history = model._history_batch([sequence[:6], sequence[:3]])
    assert history.item_mask[1].tolist() == [1, 1, 1, 0, 0, 0]  # left-aligned
    with torch.no_grad():
        memory, _ = model._encode_histories(history)
    assert torch.allclose(memory[0, : 3 * depth], memory[1, : 3 * depth], atol=1e-5)
    assert not torch.allclose(memory[0, 3 * depth :], memory[1, 3 * depth :], atol=1e-3)


def test_one_pass_over_a_window_gives_each_step_the_loss_of_its_history_alone(untrained, movielens_small):
    """The sequence loss of a window equals the mean of the one-example losses of its steps, each step decoded from
    the window cut after its history (the memory, the summary and the item prior all see only that history)."""
    network, model = untrained
    window = movielens_small[2][1][:7]
    targets = model._targets(window[1:]).unsqueeze(0)
    steps = torch.ones((1, 6), dtype=torch.bool)
    prior = model._prior()
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch([window[:-1]]))
        together = network.sequence_loss(memory, mask, targets, steps, prior)
        one_by_one = []
        for t in range(6):
            cut_memory, cut_memory_mask = model._encode_histories(model._history_batch([window[: t + 1]]))
            one_by_one.append(network.loss(cut_memory, cut_memory_mask, targets[:, t], prior))
        # Only the learnt steps count: the first three alone give their own mean.
        first_three = network.sequence_loss(memory, mask, targets, torch.tensor([[1, 1, 1, 0, 0, 0]]).bool(), prior)
    assert together.item() == pytest.approx(torch.stack(one_by_one).mean().item(), rel=1e-4)
    assert first_three.item() == pytest.approx(torch.stack(one_by_one[:3]).mean().item(), rel=1e-4)


@pytest.mark.parametrize("causal", [True, False], ids=["left-aligned", "right-aligned"])
def test_a_last_item_summary_reads_the_most_recent_items_states_alone(movielens_small, causal):
    """With ``history_summary="last-item"`` what the decoder starts from (and the item prior queries with) is the
    mean of the most recent item's states, wherever the window puts it; the default is the mean over the window."""
    snapshot, table, sequences = movielens_small
    options = {**SEQUENCE_OPTIONS, "sequence_training": causal, "history_summary": "last-item"}
    model = GenerativeModel.create(table, snapshot, options)
    network, depth = model.network.eval(), model.vocabulary.depth
    histories = [sequences[0][:6], sequences[1][:2], sequences[2][:4]]
    batch = model._history_batch(histories)
    item_mask = batch.item_mask
    with torch.no_grad():
        memory, mask = model._encode_histories(batch)
        last_item = network.source_summary(memory, mask)
        network.history_summary = "mean"
        mean = network.source_summary(memory, mask)
    for row, history in enumerate(histories):
        slot = len(history) - 1 if causal else item_mask.size(1) - 1
        assert item_mask[row, slot] == 1 and (item_mask[row, slot + 1 :] == 0).all()
        states = memory[row, slot * depth : (slot + 1) * depth]
        assert torch.allclose(last_item[row], F.normalize(states.mean(dim=0), dim=-1), atol=1e-5)
        window = memory[row][mask[row].bool()]
        assert torch.allclose(mean[row], F.normalize(window.mean(dim=0), dim=-1), atol=1e-5)
        assert not torch.allclose(last_item[row], mean[row], atol=1e-3)


def test_a_history_reads_its_items_vectors_only_with_history_item_vectors(movielens_small):
    """With ``history_item_vectors`` each history item's input adds its item-prior vector (the one the prior scores
    it with), so changing that vector changes what the history encoder reads; without the option it does not."""
    snapshot, table, sequences = movielens_small
    history = [sequences[0][:5]]
    changed = {}
    for on in (False, True):
        model = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, "history_item_vectors": on})
        model._start_item_vectors(None, progress=False)
        model.network.eval()
        with torch.no_grad():
            before, _ = model._encode_histories(model._history_batch(history))
            if on:  # the vector each slot reads is its own item's
                rows = model._history_batch(history).item_rows[0, :5].tolist()
                assert rows == model.prior.item_rows(model.trie, history[0])
            model.prior.set_vectors([history[0][1]], torch.randn(1, model.network.backbone.hidden_size))
            after, _ = model._encode_histories(model._history_batch(history))
        depth = model.vocabulary.depth
        # The first item's states (causal: they see no later item) never change; the second item's do, with the option.
        assert torch.allclose(before[0, :depth], after[0, :depth], atol=1e-6)
        changed[on] = not torch.allclose(before[0, depth : 2 * depth], after[0, depth : 2 * depth], atol=1e-4)
    assert changed == {False: False, True: True}


def test_a_history_item_indexed_later_reads_its_prefixs_centroid(movielens_small):
    """An item indexed after training has no learned vector: a history reads (as the prior scores) the centroid of the
    items under its nearest ancestor prefix that has some, and the model still recommends from that history."""
    snapshot, table, sequences = movielens_small
    model = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, "history_item_vectors": True})
    model._start_item_vectors(None, progress=False)
    history = sequences[0][:5]
    item_id = history[2]
    sid = table.sid_map()[item_id]
    model.remove(item_id)
    model.insert(item_id, sid)  # back under its ID, without a vector
    model.prior._vectors.pop(item_id)
    tokens = model.trie.tokens_of(item_id)
    for length in range(len(tokens) - 1, -1, -1):
        under = [i for i, t in model.trie if t[:length] == tokens[:length] and i in model.prior]
        if under:
            break
    centroid = F.normalize(F.normalize(model.prior.vectors(under), dim=-1).sum(dim=0), dim=0)
    row = model._history_batch([history]).item_rows[0, 2]
    assert torch.allclose(model.prior.item_matrix(model.trie, torch.device("cpu"))[row], centroid, atol=1e-6)
    ranked = model.recommend([history], k=model.config.beam_size)[0]
    assert len(ranked) == model.config.beam_size


def test_history_item_vectors_need_a_recommender_with_the_item_prior(movielens_small):
    snapshot, table, _ = movielens_small
    for options in ({"item_prior": False}, {"task": "retrieval"}):
        with pytest.raises(ConfigError, match="history_item_vectors reads the item prior's vectors"):
            GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, **options, "history_item_vectors": True})


def _window_loss(model: GenerativeModel, window: list[str], *, training: bool) -> float:
    """The sequence loss of one window with the network in training mode (dropouts active) or in eval mode."""
    network = model.network.train(training)
    targets = model._targets(window[1:]).unsqueeze(0)
    steps = torch.ones((1, len(window) - 1), dtype=torch.bool)
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch([window[:-1]]))
        return network.sequence_loss(memory, mask, targets, steps, model._prior()).item()


def test_a_dropout_of_zero_turns_off_every_dropout_of_the_decoder_and_the_history_encoder(movielens_small, tmp_path):
    """``dropout`` sets every dropout the decoder and the history encoder train with (attention included): at 0 a
    training-mode pass is the eval-mode pass, where the default's dropouts make it differ; a saved model keeps it."""
    snapshot, table, sequences = movielens_small
    window = sequences[2][:7]
    for dropout, deterministic in ((None, False), (0.0, True)):
        model = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, "dropout": dropout})
        model._start_item_vectors(None, progress=False)
        torch.manual_seed(0)
        trained_mode = [_window_loss(model, window, training=True) for _ in range(3)]
        evaluated = _window_loss(model, window, training=False)
        assert (trained_mode == pytest.approx([evaluated] * 3, rel=1e-5)) is deterministic, dropout
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    assert loaded.config.dropout == 0.0
    assert _window_loss(loaded, window, training=True) == pytest.approx(evaluated, rel=1e-5)


def test_dropout_sets_the_probability_of_every_dropout_in_the_decoder_and_the_history_encoder(movielens_small):
    snapshot, table, _ = movielens_small
    network = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, "dropout": 0.2}).network
    probabilities = [
        module.p if isinstance(module, nn.Dropout) else module.dropout
        for part in (network.backbone.decoder_module, network.history)
        for module in part.modules()
        if isinstance(module, (nn.Dropout, nn.MultiheadAttention))
    ]
    assert len(probabilities) > 8 and set(probabilities) == {0.2}


def _history_states(encoder: HistoryEncoder, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(vectors, mask)[0]


def test_history_input_dropout_drops_out_what_the_history_encoder_reads(movielens_small, tmp_path):
    """With ``history_input_dropout`` the history encoder drops out its inputs at its dropout, before its first layer
    (SASRec's emb_dropout): with its layers' own dropouts idle, two training-mode passes differ, and the inputs that
    reach the first layer are zero or scaled by 1 / (1 - p); off, they reach it whole."""
    snapshot, table, _ = movielens_small
    torch.manual_seed(0)
    vectors, mask = torch.randn(2, 6, 3, 32), torch.ones(2, 6, dtype=torch.long)
    for on in (False, True):
        encoder = HistoryEncoder(32, 2, 1, 6, 3, dropout=0.5, causal=True, input_dropout=on).train()
        encoder.layers.eval()  # only the input dropout, where there is one, is left to vary
        first, second = _history_states(encoder, vectors, mask), _history_states(encoder, vectors, mask)
        assert torch.equal(first, second) is not on, on
        reached = []
        hook = encoder.layers.layers[0].register_forward_pre_hook(lambda _, args: reached.append(args[0]))
        _history_states(encoder, vectors, mask)
        hook.remove()
        items, tokens = encoder.item_position(torch.arange(6)), encoder.token_position(torch.arange(3))
        whole = (vectors + items[None, :, None] + tokens[None, None]).reshape(2, 18, 32)
        kept = reached[0] != 0
        assert torch.allclose(reached[0][kept], (whole * (2.0 if on else 1.0))[kept], atol=1e-5), on
        assert (kept.float().mean().item() < 0.7) is on, on
    options = {**SEQUENCE_OPTIONS, "dropout": 0.3, "history_input_dropout": True}
    model = GenerativeModel.create(table, snapshot, options)
    assert isinstance(model.network.history.input_dropout, nn.Dropout) and model.network.history.input_dropout.p == 0.3
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    assert loaded.config.history_input_dropout and loaded.network.history.input_dropout.p == 0.3
    off = GenerativeModel.create(table, snapshot, SEQUENCE_OPTIONS).network.history
    assert not any(isinstance(module, nn.Dropout) for module in off.input_dropout.modules())


def test_history_input_dropout_needs_a_recommender(movielens_small):
    snapshot, table, _ = movielens_small
    with pytest.raises(ConfigError, match="history_input_dropout drops out a history's inputs"):
        GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "history_input_dropout": True})


def test_every_step_of_every_sequence_is_learnt_exactly_once(untrained):
    _, model = untrained
    window = model.config.history_window
    items = sorted(item_id for item_id, _ in model.trie)
    sequences = [items[:1], items[:2], items[:6], items[:7], items[:20], items[30:43]]

    def learnt(sequence):
        """(how many items before it its history holds, the step's index) of each step learnt from ``sequence``."""
        steps = []
        for items_of_window, count in model._training_windows([sequence]):
            assert 2 <= len(items_of_window) <= window + 1 and 1 <= count <= len(items_of_window) - 1
            offset = sequence.index(items_of_window[0])
            assert sequence[offset : offset + len(items_of_window)] == items_of_window  # consecutive items
            steps += [(t, offset + t) for t in range(len(items_of_window) - count, len(items_of_window))]
        return steps

    for sequence in sequences:
        steps = learnt(sequence)
        assert sorted(step for _, step in steps) == list(range(1, len(sequence)))  # each step once
        assert all(1 <= history <= min(step, window) for history, step in steps)
    model.config, kept = model.config.model_copy(update={"examples_per_history": 2}), model.config
    try:
        for sequence in sequences:
            assert sorted(step for _, step in learnt(sequence)) == list(range(max(1, len(sequence) - 2), len(sequence)))
    finally:
        model.config = kept


@pytest.fixture(scope="module", params=list(VARIANTS))
def sequence_recommender(movielens_small, request):
    snapshot, table, sequences = movielens_small
    model = GenerativeModel.create(table, snapshot, {**SEQUENCE_OPTIONS, **VARIANTS[request.param]})
    stats = model.fit_recommendation([s[:-1] for s in sequences])
    return model, stats


def test_a_sequence_trained_recommender_learns_next_items_from_real_histories(sequence_recommender, movielens_small):
    _, table, sequences = movielens_small
    model, stats = sequence_recommender
    train = [s[:-1] for s in sequences]
    assert stats["examples"] == sum(len(s) - 1 for s in train)
    assert stats["windows"] < stats["examples"] / 3  # several steps per pass
    assert stats["epoch_loss"][-1] < stats["epoch_loss"][0]
    recall, chance = recall_of_held_out_next_items(model, table, sequences)
    assert recall > 2 * chance  # far above picking 10 of the catalogue at random


def test_a_sequence_trained_recommender_reloads_as_it_was_trained(sequence_recommender, movielens_small, tmp_path):
    model, _ = sequence_recommender
    histories = [s[:-1] for s in movielens_small[2][:20]]
    loaded = GenerativeModel.load(model.save(tmp_path / "model"))
    assert loaded.config.sequence_training and loaded.network.history.causal
    assert loaded.network.history_summary == model.config.history_summary
    assert loaded.config.history_item_vectors == model.config.history_item_vectors
    assert loaded.recommend(histories, k=10) == model.recommend(histories, k=10)


def test_a_sequence_trained_recommender_decodes_exactly(sequence_recommender, movielens_small, monkeypatch):
    """Beam search's scores are the teacher-forced log-probabilities recomputed from scratch, with either summary."""
    model, _ = sequence_recommender
    monkeypatch.setattr(model, "precision", "fp32")
    histories = [s[:-1] for s in movielens_small[2][:6]]
    found = model.recommend(histories, k=model.config.beam_size)
    with torch.no_grad():
        memory, mask = model._encode_histories(model._history_batch(histories))
        for source, ranked in enumerate(found):
            for item_id, score in ranked[:3] + ranked[-2:]:
                exact = teacher_forced_log_probability(model, memory, mask, source, model.trie.tokens_of(item_id))
                assert score == pytest.approx(exact, abs=1e-4)


def test_decoding_blocks_needs_a_bert_style_decoder():
    with pytest.raises(ValueError, match="BERT-style decoder"):
        decode_blocks(nn.Linear(2, 2), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 2), torch.ones(1, 1, 1))
