"""The LMIndexer's text encoder: split into cached lower layers and trained upper layers, loaded from any source."""

from __future__ import annotations

import pytest
import torch

from lmindexer.errors import ConfigError
from lmindexer.indexers.lm.encoder import load_encoder, mean_pool

TEXTS = ["a bridge over the thames", "a moth", "the history of the byzantine empire in the twelfth century"]


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "tiny-random"])
def test_lower_then_upper_layers_give_the_whole_encoders_states(name):
    encoder = load_encoder(name, seed=0).eval()
    batch = encoder.tokenize(TEXTS, 32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        whole = encoder.full(ids, mask)
        for train_layers in (1, encoder.num_layers - 1):
            split = encoder.split_at(train_layers)
            assert split == encoder.num_layers - train_layers
            parts = encoder.upper(encoder.lower(ids, mask, split), mask, split, ids)
            # padded positions differ (they are masked everywhere), the items' own tokens must not
            present = mask.bool()
            assert torch.allclose(parts[present], whole[present], atol=1e-5)
    assert encoder.split_at(0) == encoder.num_layers and encoder.split_at(-1) == 0
    assert encoder.trainable_parameters(0) == []
    assert len(encoder.trainable_parameters(-1)) == len(list(encoder.model.parameters()))


def test_the_packaged_encoders_summary_is_its_sentence_embedding():
    from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder

    encoder = load_encoder("all-MiniLM-L6-v2", seed=0).eval()
    batch = encoder.tokenize(TEXTS, 128)
    with torch.no_grad():
        ours = mean_pool(encoder.full(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
    theirs = torch.as_tensor(TextEncoder(DEFAULT_ENCODER, max_length=128, use_cache=False).encode(TEXTS))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_tiny_random_is_seeded():
    first = load_encoder("tiny-random", seed=3).model.state_dict()
    again = load_encoder("tiny-random", seed=3).model.state_dict()
    other = load_encoder("tiny-random", seed=4).model.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_a_missing_encoder_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="cannot load encoder"):
        load_encoder(str(tmp_path / "nothing-here"), seed=0)
