"""Label smoothing of the generative models' training loss (the label_smoothing option)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_GENERATIVE

from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.model import smoothed_cross_entropy
from lmindexer.errors import ConfigError

RECOMMENDER = {**TINY_GENERATIVE, "task": "recommendation", "history_window": 6, "epochs": 1, "batch_size": 16}


def test_with_no_token_masked_it_is_torchs_label_smoothing():
    torch.manual_seed(0)
    logits, targets = torch.randn(7, 5), torch.randint(0, 5, (7,))
    for share in (0.0, 0.1, 0.4):
        expected = F.cross_entropy(logits, targets, label_smoothing=share)
        assert torch.allclose(smoothed_cross_entropy(logits, targets, share), expected, atol=1e-6), share


def test_the_smoothed_share_goes_to_the_tokens_that_may_be_emitted_only():
    """Tokens masked to -inf (no existing ID continues with them) get none of it: the loss is finite, has finite
    gradients, and equals torch's label smoothing over the allowed tokens alone."""
    torch.manual_seed(0)
    allowed = torch.tensor([0, 2, 3])
    scores = torch.randn(6, 3, requires_grad=True)
    logits = torch.full((6, 5), float("-inf"))
    logits[:, allowed] = scores
    targets = allowed[torch.tensor([0, 1, 2, 2, 1, 0])]
    loss = smoothed_cross_entropy(logits, targets, 0.2)
    expected = F.cross_entropy(scores, torch.tensor([0, 1, 2, 2, 1, 0]), label_smoothing=0.2)
    assert torch.isfinite(loss) and torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert torch.isinf(F.cross_entropy(logits, targets, label_smoothing=0.2))  # why torch's own is not used


@pytest.mark.parametrize("sequence_training", [False, True], ids=["one-step-at-a-time", "sequence-trained"])
def test_a_recommenders_training_loss_is_the_smoothed_one(movielens_small, sequence_training):
    """The loss a recommender trains on is (1 - e) x the cross-entropy + e x the mean cross-entropy of the allowed
    tokens: linear in e, so its value at 0.5 is read off those at 0 and 0.3, and differs from the plain one."""
    snapshot, table, sequences = movielens_small
    options = {**RECOMMENDER, "sequence_training": sequence_training}
    model = GenerativeModel.create(table, snapshot, options)
    model._start_item_vectors(None, progress=False)
    model.network.eval()  # no dropout: each loss is a function of the option alone
    losses = {}
    for share in (0.0, 0.3, 0.5):
        model.config = GenerativeModel.create(table, snapshot, {**options, "label_smoothing": share}).config
        examples = model._window_examples(sequences) if sequence_training else model._step_examples(sequences)
        with torch.no_grad():
            losses[share] = examples.batch_loss([0, 1, 2, 3]).item()
    assert abs(losses[0.3] - losses[0.0]) > 1e-3
    assert losses[0.5] == pytest.approx(losses[0.0] + (losses[0.3] - losses[0.0]) * 5 / 3, rel=1e-4)


def test_a_retriever_trains_with_it_and_a_saved_model_keeps_it(rq_ids, title_pairs, item_texts, tmp_path):
    snapshot, table = rq_ids
    model = GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "epochs": 1, "label_smoothing": 0.1})
    passed, loss = [], model.network.loss
    model.network.loss = lambda *args: passed.append(args[-1]) or loss(*args)
    model.fit_retrieval(title_pairs[:40], item_texts)
    assert passed and set(passed) == {0.1}
    assert GenerativeModel.load(model.save(tmp_path / "model")).config.label_smoothing == 0.1


def test_a_share_outside_0_to_1_is_refused(rq_ids):
    snapshot, table = rq_ids
    for share in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="label_smoothing"):
            GenerativeModel.create(table, snapshot, {**TINY_GENERATIVE, "label_smoothing": share})
