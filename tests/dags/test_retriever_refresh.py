"""retriever_refresh: it loads, it is scheduled on catalog_reindex's semantic-IDs Asset, and a real run on the local
stack trains, gates and promotes a retriever."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import boto3
import pytest
from testsupport.airflow_runs import run_dag
from testsupport.retriever_state import TINY_RETRIEVER, fit_snapshot, publish, title_queries, write_queries

from lmindexer import devstack
from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.pipeline import PipelineConfig

SCRIPT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
dag = bag.dags.get("retriever_refresh")
reindex = bag.dags.get("catalog_reindex")
condition = getattr(dag.timetable, "asset_condition", None) if dag else None
print(json.dumps({
    "errors": {k: str(v)[:500] for k, v in bag.import_errors.items()},
    "tasks": sorted(dag.task_dict) if dag else [],
    "schedule": [[a.name, a.uri] for a in getattr(condition, "objects", [])],
    "produced": [[a.name, a.uri] for a in reindex.task_dict["commit"].outlets] if reindex else [],
    "downstream": {t: sorted(dag.task_dict[t].downstream_task_ids) for t in ("plan", "route", "train")} if dag else {},
    "train_queue": dag.task_dict["train"].queue if dag else None,
    "outlets": {t: [a.uri for a in dag.task_dict[t].outlets] for t in ("promote", "sync")} if dag else {},
    "gate_retries": dag.task_dict["gate"].retries if dag else None,
    "params": sorted(dag.params.keys()) if dag else [],
    "max_active_runs": dag.max_active_runs if dag else None,
}))
"""


def test_dag_loads_and_is_scheduled_on_the_semantic_ids_asset(airflow_home):
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=airflow_home, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["tasks"] == ["evaluate", "gate", "plan", "promote", "route", "sync", "train", "up_to_date"]
    # the very Asset catalog_reindex's commit produces
    assert report["schedule"] == [["lmindexer_semantic_ids", "lmindexer://semantic-ids/"]]
    assert report["produced"] == report["schedule"]
    assert report["downstream"] == {
        "plan": ["route", "sync", "train", "up_to_date"],
        "route": ["sync", "train", "up_to_date"],
        "train": ["evaluate"],
    }
    assert report["train_queue"] == "gpu"
    assert report["outlets"] == {"promote": ["lmindexer://retriever/"], "sync": ["lmindexer://retriever/"]}
    assert report["gate_retries"] == 0
    assert report["params"] == ["mode"]
    assert report["max_active_runs"] == 1


@pytest.mark.slow
def test_a_run_trains_gates_and_promotes(airflow_home, local_stack, wiki_items, tmp_path, monkeypatch):
    for name, value in devstack.client_env(local_stack).items():
        monkeypatch.setenv(name, value)
    bucket = f"retriever-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    pipeline = PipelineConfig(base_uri=f"s3://{bucket}")
    items = wiki_items[:40]
    pointer = publish(pipeline, "reindex-1", items, fit_snapshot(pipeline, items, tmp_path))
    queries = write_queries(f"s3://{bucket}/queries/train.jsonl", title_queries(items))
    retriever = {
        "train_queries": queries,
        "eval_queries": queries,
        "options": {**TINY_RETRIEVER, "epochs": 2},
        "min_recall_at_10": 0.0,
        "dense_index": {},
    }
    env = {
        **airflow_home,
        **devstack.client_env(local_stack),
        "LMINDEXER_TASK_RETRIES": "0",
        # one thread per process: the test shares a few cores with other work
        "OMP_NUM_THREADS": "1",
        "AIRFLOW_VAR_LMINDEXER_PIPELINE": json.dumps({"base_uri": f"s3://{bucket}"}),
        "AIRFLOW_VAR_LMINDEXER_RETRIEVER": json.dumps(retriever),
    }
    completed = run_dag(env, "retriever_refresh")
    output = completed.stdout + completed.stderr
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    assert finished and "state=success" in finished[-1], output[-6000:]

    current = json.loads(s3.get_object(Bucket=bucket, Key="retrievers/current.json")["Body"].read())
    assert current["kind"] == "trained" and current["pipeline_run_id"] == "reindex-1"
    assert current["snapshot_version"] == pointer["snapshot_version"]
    assert current["model_uri"] == f"s3://{bucket}/retrievers/runs/{current['run_id']}/model"
    assert current["metrics"]["queries"] == 40
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="retrievers/runs/")["Contents"]}
    for step in ("plan", "train", "evaluate", "gate", "promote"):
        assert f"retrievers/runs/{current['run_id']}/{step}.json" in keys
    assert f"retrievers/runs/{current['run_id']}/sync.json" not in keys  # the branch not taken
    model = GenerativeModel.load(current["model_uri"])
    assert len(model.trie) == 40
    # The dense index of the same catalogue version, beside the model, loadable from S3 as serve --dense loads it.
    assert current["dense_uri"] == f"s3://{bucket}/retrievers/runs/{current['run_id']}/dense"
    assert DenseIndex.load(current["dense_uri"]).item_ids == sorted(item.item_id for item in items)
    assert {i for ranked in model.search([items[0].title]) for i, _ in ranked} <= {item.item_id for item in items}
