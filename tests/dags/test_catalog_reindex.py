"""End-to-end runs of catalog_reindex on the local stack: real Airflow, real S3 and search servers, real text."""

from __future__ import annotations

import json
import uuid

import pytest
from testsupport.airflow_runs import run_dag
from testsupport.fault_proxy import FaultProxy
from testsupport.reindex_runs import assert_succeeded, dag_env, ids_table, processed, run_state, upload

from lmindexer.search import SearchBackend, SearchConfig
from lmindexer.storage.state import ProcessingState

pytestmark = pytest.mark.slow


def test_full_then_incremental_then_rerun(airflow_home, local_stack, s3, wiki_sample_path):
    bucket, alias = f"reindex-{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    env = dag_env(airflow_home, local_stack, bucket, alias)
    search = SearchBackend(SearchConfig(hosts=[local_stack.search_url], alias=alias))
    lines = wiki_sample_path.read_text().splitlines()

    # 1. the first drop: no snapshot yet, so a full build
    upload(s3, bucket, "incoming/drop-1.jsonl", lines[:200])
    assert_succeeded(run_dag(env, "catalog_reindex"))
    current, first = ids_table(bucket)
    assert len(first) == 200 and len(set(first.sid_map().values())) == 200
    assert search.count() == 200
    first_index = search.live_index()
    first_rows = first.table.to_pylist()

    # 2. a later drop: 60 new items, 5 changed, 5 deleted, 3 malformed rows -> incremental
    changed = [json.dumps(json.loads(line) | {"text": f"Rewritten summary number {n}."}) for n, line in
               enumerate(lines[:5])]  # fmt: skip
    deleted_ids = [json.loads(line)["item_id"] for line in lines[5:10]]
    bad = ['{"item_id": "broken", "text": ', json.dumps({"item_id": "", "text": "x"}), json.dumps({"item_id": "e"})]
    tombstones = [json.dumps({"item_id": i, "deleted": True}) for i in deleted_ids]
    upload(s3, bucket, "incoming/drop-2.jsonl", changed + tombstones + lines[200:260] + bad)
    assert_succeeded(run_dag(env, "catalog_reindex"))
    current, second = ids_table(bucket)
    assert current["snapshot_version"] == first.space.snapshot_version  # applied, not retrained
    assert second.table.slice(0, 200).to_pylist() == first_rows  # existing IDs unchanged, byte for byte
    assert len(second) == 260  # deleted items keep their reserved IDs
    new_ids = {json.loads(line)["item_id"] for line in lines[200:260]}
    assert new_ids <= set(second.item_ids)
    assert len(set(second.sid_map().values())) == 260
    assert search.live_index() == first_index
    assert search.count() == 200 + 60 - 5
    for item_id in deleted_ids:
        assert search.get(item_id) is None
    changed_doc = search.get(json.loads(lines[0])["item_id"])
    assert changed_doc["text"] == "Rewritten summary number 0."
    assert changed_doc["sid"] == second.sid_map()[changed_doc["item_id"]]

    # the malformed rows are quarantined with their rule, and the counts reconcile exactly
    summaries = {d.key: d.summary for d in ProcessingState(f"s3://{bucket}").load().records}
    assert summaries["incoming/drop-2.jsonl"] == {"rows_in": 73, "staged": 70, "quarantined": 3, "tombstones": 5}
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/")["Contents"]
    rejected_key = next(o["Key"] for o in listing if "drop-2" in o["Key"] and o["Key"].endswith("rejected.jsonl"))
    rejected = [json.loads(x) for x in s3.get_object(Bucket=bucket, Key=rejected_key)["Body"].read().splitlines()]
    assert sorted(r["rule"] for r in rejected) == ["empty_text", "malformed_json", "missing_item_id"]

    # 3. rerunning with nothing new changes nothing
    before = s3.get_object(Bucket=bucket, Key=current["ids_uri"].split("/", 3)[3])["Body"].read()
    assert_succeeded(run_dag(env, "catalog_reindex"))
    after = s3.get_object(Bucket=bucket, Key=current["ids_uri"].split("/", 3)[3])["Body"].read()
    assert after == before
    assert ids_table(bucket)[0]["run_id"] == current["run_id"]
    assert search.count() == 255
    # the same drop uploaded again (new ETag) is reprocessed without changing any ID
    upload(s3, bucket, "incoming/drop-1.jsonl", lines[:200])
    assert_succeeded(run_dag(env, "catalog_reindex"))
    assert ids_table(bucket)[1].sid_map() == second.sid_map()


def test_a_publish_failure_keeps_the_live_index_and_a_rerun_of_the_run_ingests_only_its_own_drops(
    airflow_home, local_stack, s3, wiki_sample_path
):
    bucket, alias = f"fault-{uuid.uuid4().hex[:8]}", f"f{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lines = wiki_sample_path.read_text().splitlines()
    search = SearchBackend(SearchConfig(hosts=[local_stack.search_url], alias=alias))
    no_gates = {"gates": {"min_level1_ami_ratio": 0.0}}  # this test is about publishing, not model quality
    ranked = json.dumps(json.loads(lines[0]) | {"rank": 1})  # the engine maps attributes.rank as a number
    upload(s3, bucket, "incoming/a.jsonl", [ranked, *lines[1:100]])
    assert_succeeded(run_dag(dag_env(airflow_home, local_stack, bucket, alias, **no_gates), "catalog_reindex"))
    live = search.live_index()
    assert search.count() == 100

    # the search server goes away after the new index is created: the retrain run fails before the alias swap
    upload(s3, bucket, "incoming/b.jsonl", lines[100:130])
    proxy = FaultProxy(local_stack.search_url)
    run_date = "2026-06-02T02:00:00+00:00"
    try:
        proxy.drop_after_bulk = 0
        failed = run_dag(dag_env(airflow_home, local_stack, bucket, alias, proxy.url, **no_gates), "catalog_reindex",
                         {"mode": "retrain"}, same_run_at=run_date)  # fmt: skip
    finally:
        proxy.close()
    assert run_state(failed) == "failed"
    assert "lmindexer reindex failed: dag=catalog_reindex task=publish" in failed.stdout + failed.stderr
    assert search.live_index() == live
    assert search.count() == 100
    assert json.loads(s3.get_object(Bucket=bucket, Key="state/current.json")["Body"].read())["items"] == 100

    # a new drop lands, then the whole failed run is rerun (same run id, as clearing it in the UI does) with the
    # server back: it completes with exactly the drops it first found, and leaves the new one for the next run
    late = [json.dumps(json.loads(lines[130]) | {"rank": "first"})]  # the engine cannot index this as a number
    upload(s3, bucket, "incoming/c.jsonl", late + lines[131:150])
    healed = dag_env(airflow_home, local_stack, bucket, alias, **no_gates)
    assert_succeeded(run_dag(healed, "catalog_reindex", {"mode": "retrain"}, same_run_at=run_date))
    assert search.live_index() != live
    assert search.count() == 130
    assert set(processed(bucket)) == {"incoming/a.jsonl", "incoming/b.jsonl"}

    # the next run ingests it; the one document the engine refuses is quarantined with the engine's reason
    assert_succeeded(run_dag(healed, "catalog_reindex"))
    assert processed(bucket)["incoming/c.jsonl"].status == "processed"
    assert search.count() == 130 + 19
    current, table = ids_table(bucket)
    assert current["items"] == 150 and len(table) == 150
    refused_id = json.loads(lines[130])["item_id"]
    assert search.get(refused_id) is None and refused_id in table
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/")["Contents"]
    key = next(o["Key"] for o in listing if o["Key"].endswith("publish/rejected.jsonl"))
    (refused,) = [json.loads(x) for x in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert (refused["item_id"], refused["rule"], refused["field"]) == (refused_id, "engine_rejected", "attributes.rank")
    assert "mapper_parsing_exception" in refused["message"]
