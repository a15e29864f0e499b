from __future__ import annotations

import pytest

from lmindexer.errors import ConfigError
from lmindexer.indexers import create_indexer
from lmindexer.indexers.lm import PRESETS, LMIndexerConfig


def test_the_preset_fills_only_what_is_left_out():
    fast = LMIndexerConfig()
    assert fast.preset == "fast" and fast.train_encoder is False and fast.max_length == PRESETS["fast"]["max_length"]
    default = LMIndexerConfig(preset="default", max_length=96)
    assert default.train_encoder is True and default.max_length == 96
    assert default.quantised_steps == PRESETS["default"]["quantised_steps"]


def test_a_saved_config_reloads_to_the_same_options():
    config = LMIndexerConfig(preset="default", levels=4, codebook_size=[16, 8, 8, 4], learning_rate=1e-4)
    assert LMIndexerConfig.model_validate(config.model_dump(mode="json")) == config


def test_mask_rates_default_per_position_and_accept_one_or_l_values():
    assert LMIndexerConfig(levels=3).mask_rate == [0.5, 0.7, 0.7]
    assert LMIndexerConfig(levels=2, mask_rate=[0.3]).mask_rate == [0.3, 0.3]
    assert LMIndexerConfig(levels=2, mask_rate=[0.1, 0.2]).mask_rate == [0.1, 0.2]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "turbo"}, "preset"),
        ({"levels": 3, "mask_rate": [0.5, 0.5]}, "mask_rate has 2 values but levels is 3"),
        ({"mask_rate": [1.0]}, "mask_rate must be in [0, 1)"),
        ({"backbone": "  "}, "backbone must name a model"),
        ({"batch_size": 1}, "batch_size"),
        ({"quantised_steps": 0}, "quantised_steps"),
        ({"code_temperature": 0}, "code_temperature"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_fail_with_a_message_naming_them(options, message):
    with pytest.raises(ConfigError, match="invalid indexer config") as caught:
        create_indexer("lmindexer", options)
    assert message in str(caught.value)
