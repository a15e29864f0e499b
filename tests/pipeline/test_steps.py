"""The pipeline's decisions and records, without Airflow (the DAG tests run the whole thing)."""

from __future__ import annotations

import pytest
from testsupport.retriever_state import move_current

from lmindexer.errors import ConfigError, UserError
from lmindexer.options import parse_config
from lmindexer.pipeline import PipelineConfig, safe_run_id, steps
from lmindexer.pipeline.records import current, remembered


@pytest.fixture
def config(s3_bucket) -> PipelineConfig:
    return PipelineConfig(base_uri=f"s3://{s3_bucket}", retrain_added_share=0.25)


def test_config_validation():
    config = parse_config(PipelineConfig, {"base_uri": "s3://b", "staged_prefix": "/tmp-staged/"})
    assert config.staged_prefix == "tmp-staged/"
    assert config.uri(config.ids_prefix, "v1", "ids.parquet") == "s3://b/ids/v1/ids.parquet"
    with pytest.raises(ConfigError, match="unknown indexer method 'nope'"):
        parse_config(PipelineConfig, {"base_uri": "s3://b", "method": "nope"})
    with pytest.raises(ConfigError, match="max_invalid_share"):
        parse_config(PipelineConfig, {"base_uri": "s3://b", "max_invalid_share": 2})
    with pytest.raises(ConfigError, match="base_uri"):
        parse_config(PipelineConfig, {})


def test_run_ids_become_safe_keys():
    assert safe_run_id("manual__2026-11-28T16:32:15.564518+00:00") == "manual__2026-11-28t16-32-15.564518-00-00"
    with pytest.raises(ValueError, match="no usable characters"):
        safe_run_id("::")


def test_steps_remember_their_result(config):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert remembered(config, "run-1", "step", compute) == {"value": 1}
    assert remembered(config, "run-1", "step", compute) == {"value": 1}
    assert remembered(config, "run-2", "step", compute) == {"value": 2}
    assert len(calls) == 2


def test_decide(config):
    merged = {"new": 20}
    assert steps.decide(config, "r1", merged)["mode"] == "retrain"  # no snapshot yet
    with pytest.raises(UserError, match="needs a snapshot"):
        steps.decide(config, "r2", merged, "apply")
    move_current(config, {"run_id": "r0", "items_at_retrain": 100, "added_since_retrain": 10})
    assert steps.decide(config, "r3", merged)["mode"] == "retrain"  # 30 of 100 > 25%
    assert steps.decide(config, "r4", {"new": 5})["mode"] == "apply"  # 15 of 100
    assert steps.decide(config, "r5", {"new": 50}, "apply")["mode"] == "apply"  # forced
    assert steps.decide(config, "r6", {"new": 0}, "retrain")["reason"] == "retrain requested"
    # a retried task gets the stored decision, even if the world changed meanwhile
    move_current(config, {"run_id": "r0", "items_at_retrain": 1, "added_since_retrain": 1000})
    assert steps.decide(config, "r4", {"new": 5})["mode"] == "apply"


def test_train_command_is_accelerate_launch(config, tmp_path):
    command = steps.train_command(config, tmp_path / "c.parquet", tmp_path / "out", tmp_path / "o.yaml")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "1"
    assert "--multi_gpu" not in command
    assert command[command.index("-m", 3) + 1 : command.index("-m", 3) + 3] == ["lmindexer.cli", "fit"]
    many = config.model_copy(update={"train_processes": 2, "mixed_precision": "bf16"})
    command = steps.train_command(many, tmp_path / "c.parquet", tmp_path / "out", tmp_path / "o.yaml")
    assert "--multi_gpu" in command and command[command.index("--mixed_precision") + 1] == "bf16"


def test_commit_moves_the_pointer_once(config):
    merged = {"catalog_uri": "c2", "items": 120, "new": 20}
    snapshot = {"snapshot_uri": "s1", "version": "v1"}
    reduced = {"ids_uri": "i1"}
    checked = {"metrics": {"level1_ami": 0.4}}
    move_current(config, {"run_id": "r0", "items_at_retrain": 100, "added_since_retrain": 10})
    pointer = steps.commit(config, "r1", [], merged, {"mode": "apply"}, snapshot, reduced, checked, {"index": "x"})
    assert (pointer["items_at_retrain"], pointer["added_since_retrain"]) == (100, 30)
    assert current(config)["run_id"] == "r1"
    retrained = steps.commit(config, "r2", [], merged, {"mode": "retrain"}, snapshot, reduced, checked, {"index": "y"})
    assert (retrained["items_at_retrain"], retrained["added_since_retrain"]) == (120, 0)
