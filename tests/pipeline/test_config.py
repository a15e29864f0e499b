"""The pipeline config: the indexer's options are typed by the method and validated when the config is loaded."""

from __future__ import annotations

import json

import pytest
import yaml
from testsupport.imports import MODEL_STACK, STORAGE_STACK, model_stack_loaded_by

from lmindexer.cli import main
from lmindexer.errors import ConfigError
from lmindexer.methods import HKMeansConfig, LMIndexerConfig, RQKMeansConfig, indexer_options
from lmindexer.options import parse_config
from lmindexer.pipeline import PipelineConfig


def load(values: dict) -> PipelineConfig:
    return parse_config(PipelineConfig, values, what="pipeline config")


def test_indexer_options_are_typed_by_the_method():
    default = load({"base_uri": "s3://b"})
    assert type(default.indexer) is RQKMeansConfig
    lm = load({"base_uri": "s3://b", "method": "lmindexer", "indexer": {"levels": 2, "codebook_size": 8}})
    assert type(lm.indexer) is LMIndexerConfig
    # The preset filled what was left out, and one K became one per level, at load.
    assert (lm.indexer.preset, lm.indexer.train_layers, lm.indexer.codebook_size) == ("fast", 0, [8, 8])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"indexer": {"codebook_size": 1}}, "indexer: rq-kmeans options: codebook_size: each codebook size must be"),
        ({"indexer": {"levels": 3, "codebook_size": [4, 4]}}, "codebook_size: 2 values but levels is 3"),
        ({"method": "lmindexer", "indexer": {"preset": "huge"}}, "indexer: lmindexer options: preset: Input should be"),
        # An option of another method is not silently ignored.
        (
            {"method": "hkmeans", "indexer": {"preset": "fast"}},
            "hkmeans options: preset: Extra inputs are not permitted",
        ),
        ({"indexer": [8, 3]}, "the options of 'rq-kmeans' are a mapping, not list"),
        ({"method": "nope"}, "unknown indexer method 'nope'"),
    ],
)
def test_a_bad_indexer_option_is_refused_at_load_naming_it(values, message):
    with pytest.raises(ConfigError, match="invalid pipeline config: .*" + message):
        load({"base_uri": "s3://b", **values})


def test_options_of_another_method_are_refused():
    with pytest.raises(ConfigError, match="HKMeansConfig given for method 'rq-kmeans', which takes RQKMeansConfig"):
        load({"base_uri": "s3://b", "indexer": HKMeansConfig()})


def test_the_options_the_training_task_receives_are_the_ones_loaded():
    """train() hands the options to the training process as YAML; parsed there, they are the same options."""
    config = load({"base_uri": "s3://b", "method": "lmindexer", "indexer": {"preset": "tuned", "codebook_size": 16}})
    handed_over = yaml.safe_load(yaml.safe_dump(config.indexer.model_dump(mode="json")))
    assert indexer_options("lmindexer", handed_over) == config.indexer
    # And a whole config survives its JSON (the crash-recovery runs and the CLI's --json hand it on so).
    assert PipelineConfig(**json.loads(config.model_dump_json())) == config


def test_loading_a_config_loads_neither_the_model_nor_the_storage_stack():
    """Every task and every parse of the DAG files loads the config: it needs pydantic, not torch, Arrow or boto3."""
    code = (
        "from lmindexer.pipeline import PipelineConfig\n"
        "c = PipelineConfig(base_uri='s3://b', method='lmindexer', indexer={'preset': 'default'})\n"
        "assert c.indexer.train_layers == -1"
    )
    assert model_stack_loaded_by(code, MODEL_STACK + STORAGE_STACK) == []


def test_pipeline_run_refuses_a_bad_option_before_any_step(tmp_path, capsys):
    store = tmp_path / "store"
    (store / "incoming").mkdir(parents=True)
    (store / "incoming" / "a.jsonl").write_text('{"item_id": "a", "title": "t"}\n')
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"base_uri": str(store), "indexer": {"levels": 2, "codebook_size": [8, 1]}}))
    code = main(["pipeline", "run", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "indexer: rq-kmeans options: codebook_size: each codebook size must be between 2 and 65536, got 1" in err
    # Nothing ran: no run state, no catalogue, the drop still waiting.
    assert sorted(p.name for p in store.iterdir()) == ["incoming"]
