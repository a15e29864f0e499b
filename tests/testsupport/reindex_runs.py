"""Helpers for the catalog_reindex DAG tests: the run's environment, drops, and reading back what a run did."""

from __future__ import annotations

import json

import boto3

from lmindexer import devstack
from lmindexer.idtable import IdTable
from lmindexer.storage.state import ProcessingState


def dag_env(airflow_home, stack, bucket, alias, search_url=None, **pipeline):
    env = {**airflow_home, **devstack.client_env(stack), "LMINDEXER_TASK_RETRIES": "0"}
    host, port = (search_url or stack.search_url).removeprefix("http://").split(":")
    env["AIRFLOW_CONN_LMINDEXER_SEARCH"] = json.dumps(
        {"conn_type": "opensearch", "host": host, "port": int(port), "schema": "http",
         "extra": {"engine": "opensearch", "alias": alias, "timeout": 5, "max_retries": 0}}
    )  # fmt: skip
    env["AIRFLOW_VAR_LMINDEXER_PIPELINE"] = json.dumps(
        {"base_uri": f"s3://{bucket}", "indexer": {"codebook_size": 8, "levels": 2}, "shard_size": 50,
         "max_invalid_share": 0.2, "retrain_added_share": 0.5, "label": "category", **pipeline}
    )  # fmt: skip
    return env


def upload(s3, bucket, key, lines):
    s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())


def ids_table(bucket):
    current = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key="state/current.json")["Body"].read())
    return current, IdTable.read(current["ids_uri"])


def run_state(completed):
    output = completed.stdout + completed.stderr
    finished = [line for line in output.splitlines() if "DagRun Finished" in line]
    return "success" if finished and "state=success" in finished[-1] else "failed"


def assert_succeeded(completed):
    assert run_state(completed) == "success", completed.stdout[-4000:] + completed.stderr[-2000:]


def processed(bucket):
    return {r.key: r for r in ProcessingState(f"s3://{bucket}").load().records}
