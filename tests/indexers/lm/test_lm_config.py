from __future__ import annotations

import pytest

from lmindexer.errors import ConfigError
from lmindexer.indexers import create_indexer
from lmindexer.indexers.lm import PRESETS, LMIndexerConfig


def test_the_preset_fills_only_what_is_left_out():
    fast = LMIndexerConfig()
    assert fast.preset == "fast" and not fast.trains_encoder and fast.max_length == PRESETS["fast"]["max_length"]
    tuned = LMIndexerConfig(preset="tuned", max_length=96)
    assert tuned.trains_encoder and tuned.train_layers == 2 and tuned.max_length == 96
    assert tuned.encoder_epochs == PRESETS["tuned"]["encoder_epochs"]
    assert LMIndexerConfig(preset="default").train_layers == -1


def test_a_saved_config_reloads_to_the_same_options():
    config = LMIndexerConfig(preset="tuned", levels=4, codebook_size=[16, 8, 8, 4], learning_rate=1e-4)
    assert LMIndexerConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "turbo"}, "preset"),
        ({"backbone": "  "}, "backbone must name a model"),
        ({"batch_size": 1}, "batch_size"),
        ({"train_layers": 0, "encoder_epochs": 2}, "encoder_epochs needs train_layers"),
        ({"heldout_share": 0.6}, "heldout_share"),
        ({"token_dropout": 1.0}, "token_dropout"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"last_level": "sometimes"}, "last_level"),
        ({"keep_learned": "never"}, "keep_learned"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_fail_with_a_message_naming_them(options, message):
    with pytest.raises(ConfigError, match="invalid indexer config") as caught:
        create_indexer("lmindexer", options)
    assert message in str(caught.value)
