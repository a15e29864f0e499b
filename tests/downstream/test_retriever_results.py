"""The retriever refresh's step records: JSON in and out, and records stored by the previous release still read."""

from __future__ import annotations

import json

import pytest

from lmindexer.downstream.results import (
    EvaluatedRetriever,
    GateOutcome,
    LiveComparison,
    LiveRetriever,
    PipelineRef,
    Refreshed,
    RefreshPlan,
    SyncedRetriever,
    TrainedRetriever,
)
from lmindexer.pipeline.results import ResultError

POINTER = PipelineRef(run_id="p1", snapshot_uri="s3://b/models/v1", snapshot_version="v1", ids_uri="s3://b/ids",
                      catalog_uri="s3://b/catalog")  # fmt: skip
LIVE = LiveRetriever(run_id="r0", model_uri="s3://b/r/runs/r0/model", snapshot_version="v1", pipeline_run_id="p0",
                     metrics={"ndcg@10": 0.5}, suffix_capacity=4)  # fmt: skip
COMPARISON = LiveComparison(run_id="r0", model_uri=LIVE.model_uri, snapshot_version="v1", same_id_space=True,
                            compared=True, recorded_metrics={"ndcg@10": 0.5}, metrics={"ndcg@10": 0.4})  # fmt: skip
GATE = GateOutcome(run_id="r1", gated_at="t", passed=True, failures=[], checks={"recall@10": 0.9})
RESULTS = [
    RefreshPlan(
        run_id="r1",
        mode="auto",
        planned_at="t",
        pointer=POINTER,
        live=LIVE,
        action="sync",
        reason="x",
        items=5,
        ids_fingerprint="f",
    ),
    TrainedRetriever(
        run_id="r1",
        trained_at="t",
        pipeline_run_id="p1",
        snapshot_uri="s",
        ids_uri="i",
        catalog_uri="c",
        options={"epochs": 1},
        live=LIVE,
        model_uri="m",
        snapshot_version="v1",
        items=5,
        ids_fingerprint="f",
        suffix_capacity=4,
        training={"epoch_loss": [2.0, 1.0]},
    ),
    EvaluatedRetriever(
        run_id="r1",
        evaluated_at="t",
        model_uri="m",
        snapshot_version="v1",
        eval_queries="q",
        metrics={"ndcg@10": 0.4},
        live=COMPARISON,
    ),
    GATE,
    SyncedRetriever(
        run_id="s1",
        synced_at="t",
        from_model_uri="a",
        model_uri="b",
        pipeline_run_id="p2",
        ids_uri="i",
        catalog_uri="c",
        ids_fingerprint="f",
        inserted=2,
        removed=1,
        items=6,
        current=LIVE,
    ),
    Refreshed(
        run_id="r1", action="retrain", reason="x", metrics={"ndcg@10": 0.4}, live=COMPARISON, gate=GATE, current=LIVE
    ),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_every_record_survives_its_json(result):
    assert type(result).from_xcom(json.loads(json.dumps(result.to_xcom()))) == result


def test_records_stored_by_the_previous_release_still_read():
    # train.json kept a summary of the live retriever; evaluate.json that summary with the comparison's fields.
    summary = {"run_id": "r0", "model_uri": "m0", "snapshot_version": "v1", "pipeline_run_id": "p0",
               "metrics": {"ndcg@10": 0.5}, "metrics_run_id": "r0", "eval_queries": "q"}  # fmt: skip
    trained = TrainedRetriever.from_xcom({**RESULTS[1].to_xcom(), "live": summary})
    assert trained.live == LiveRetriever(**summary)
    old_comparison = {**summary, "same_id_space": False, "compared": False, "note": "another ID space",
                      "recorded_metrics": summary["metrics"]}  # fmt: skip
    del old_comparison["metrics"]
    evaluated = EvaluatedRetriever.from_xcom({**RESULTS[2].to_xcom(), "live": old_comparison})
    assert evaluated.live is not None and evaluated.live.recorded_metrics == {"ndcg@10": 0.5}
    # A sync.json from before carried no "current".
    synced = RESULTS[4].to_xcom()
    del synced["current"]
    assert SyncedRetriever.from_xcom(synced).current is None


def test_a_hand_over_of_the_wrong_shape_names_the_record_and_the_field():
    with pytest.raises(ResultError, match="RefreshPlan lacks 'action'"):
        RefreshPlan.from_xcom({k: v for k, v in RESULTS[0].to_xcom().items() if k != "action"})
    with pytest.raises(ResultError, match="LiveRetriever has no field 'colour'"):
        LiveRetriever.from_xcom({**LIVE.to_xcom(), "colour": "red"})
