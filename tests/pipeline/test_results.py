"""The typed results steps hand each other: JSON out and back without loss, old records still read, and a record
of the wrong shape refused with the field named."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from testsupport.imports import model_stack_loaded_by
from testsupport.step_results import merged, pointer, quality, reduced

from lmindexer.pipeline.results import (
    Checked,
    Confirmed,
    Decision,
    LiveVersion,
    Published,
    ResultError,
    Shard,
    ShardCodes,
    Snapshot,
    ValidatedDrop,
    to_xcom,
)
from lmindexer.storage.drops import Drop

DROP = Drop(
    bucket="b", key="incoming/a.jsonl", etag="e1", size=10, last_modified=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
)
RESULTS = [
    ValidatedDrop(drop=DROP, accepted=True, source="s3://b/incoming/a.jsonl", run_id="r/000-a", rows_in=5, staged=4,
                  quarantined=1, tombstones=0, rejections_by_rule={"non_empty": 1}, success=True,
                  staged_uri="s3://b/staged/x", quarantine_uri="s3://b/q/x", summary_uri="s3://b/q/s",
                  invalid_share=0.2, threshold=0.5, suite_success=True, drop_clean=False, result_uri="s3://b/q/r",
                  expectations=[{"type": "expect_column_values_to_not_be_null", "success": True}]),
    merged(new=3, changed=1, deleted=2, upserts_uri="u"),
    Decision("apply", "2.0% added since the last retrain", 0.02),
    Snapshot(trained=True, snapshot_uri="s3://b/models/v1", snapshot_version="v1"),
    Shard(shard=1, start=5000, end=7000, todo_uri="t", shards=2),
    ShardCodes(shard=1, codes_uri="c", items=2000),
    reduced(),
    Checked(passed=True, metrics=quality(level1_ami=None, ami=[]), stability={"stability": 1.0}, id_rows_checked=10),
    Published(mode="full", index="catalog-v1", refused=1, quarantine_uri="q", attempted=9, indexed=8,
              details={"alias": "catalog", "bulk": {"attempted": 9, "errors": []}}),
    LiveVersion.from_xcom(pointer(metrics=quality().to_xcom(), ids_rows=110, index="catalog-v1")),
    Confirmed(drops=2, rejected=0),
]  # fmt: skip


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_a_result_survives_the_trip_through_json(result):
    data = json.loads(json.dumps(result.to_xcom()))  # what an orchestrator stores and hands on
    assert type(result).from_xcom(data) == result


def test_nested_results_are_rebuilt_as_their_types():
    checked = Checked.from_xcom(json.loads(json.dumps(RESULTS[7].to_xcom())))
    assert checked.metrics.items == 110 and checked.metrics.level1_ami is None
    drop = ValidatedDrop.from_xcom(RESULTS[0].to_xcom()).drop
    assert drop == DROP and drop.last_modified.tzinfo is not None
    assert to_xcom([DROP]) == [DROP.to_dict()]


def test_a_record_written_before_a_rename_reads_under_the_new_name():
    assert Snapshot.from_xcom({"trained": False, "snapshot_uri": "s", "version": "v7"}).snapshot_version == "v7"


def test_a_record_written_before_a_field_existed_reads_with_its_default():
    old = merged().to_xcom()
    del old["upserts_uri"], old["deletes_of_unknown_items"]
    assert type(merged()).from_xcom(old).upserts_uri is None
    bare = pointer()
    del bare["items_at_retrain"], bare["added_since_retrain"]
    live = LiveVersion.from_xcom(bare)
    assert (live.items_at_retrain, live.added_since_retrain, live.ids_rows, live.metrics) == (None, 0, None, None)


def test_an_earlier_publish_record_keeps_the_publishers_account_in_its_details():
    old = {"mode": "incremental", "index": "i", "refused": 0, "quarantine_uri": None, "attempted": 3, "indexed": 2,
           "deleted": 1, "not_found": 0, "failed": 0, "unconfirmed": 0, "errors": []}  # fmt: skip
    published = Published.from_xcom(old)
    assert (published.attempted, published.indexed, published.deleted) == (3, 2, 1)
    assert published.details == {"not_found": 0, "failed": 0, "unconfirmed": 0, "errors": []}


def test_a_record_of_the_wrong_shape_is_refused_naming_the_field():
    with pytest.raises(ResultError, match="Decision has no field 'mood'"):
        Decision.from_xcom({"mode": "apply", "reason": "r", "mood": "good"})
    with pytest.raises(ResultError, match="Shard lacks 'todo_uri'"):
        Shard.from_xcom({"shard": 0, "start": 0, "end": 1, "shards": 1})
    with pytest.raises(ResultError, match="a Reduced is a JSON object, not list"):
        type(reduced()).from_xcom([1, 2])


def test_a_task_that_only_validates_or_publishes_does_not_load_the_model_stack():
    """The modules an Airflow worker imports for discover, validate, merge, check and publish: no torch, faiss or
    scikit-learn, which only the training and assignment steps load, inside the step."""
    code = "import lmindexer.pipeline.steps, lmindexer.pipeline.results, lmindexer.validation, lmindexer.search"
    assert model_stack_loaded_by(code) == []
