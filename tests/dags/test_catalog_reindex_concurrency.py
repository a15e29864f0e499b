"""Two catalog_reindex runs at once on one store (two Airflow deployments): exactly one commits."""

from __future__ import annotations

import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from testsupport.airflow_runs import AIRFLOW, airflow_environment, run_dag
from testsupport.reindex_runs import assert_succeeded, dag_env, ids_table, processed, run_state, upload

from lmindexer.search import SearchBackend, SearchConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_airflow_home(tmp_path_factory):
    """A second, independent Airflow (its own metadata database): two deployments pointed at one bucket."""
    home = tmp_path_factory.mktemp("airflow-home-2")
    env = {**os.environ, **airflow_environment(home)}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


def test_two_concurrent_runs_on_one_store_commit_once(airflow_home, second_airflow_home, local_stack, s3,
                                                      wiki_sample_path):  # fmt: skip
    bucket, alias = f"race-{uuid.uuid4().hex[:8]}", f"r{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lines = wiki_sample_path.read_text().splitlines()
    upload(s3, bucket, "incoming/base.jsonl", lines[:60])
    assert_succeeded(run_dag(dag_env(airflow_home, local_stack, bucket, alias), "catalog_reindex"))

    # one new drop; two runs start at once (two schedulers, or a manual run beside the nightly one)
    upload(s3, bucket, "incoming/new.jsonl", lines[60:80])
    envs = [dag_env(home, local_stack, bucket, alias) for home in (airflow_home, second_airflow_home)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda env: run_dag(env, "catalog_reindex"), envs))
    states = [run_state(outcome) for outcome in outcomes]
    assert "success" in states
    for state, outcome in zip(states, outcomes, strict=True):
        if state == "failed":  # the loser learns it is stale; it changed nothing
            assert "StaleRun" in outcome.stdout + outcome.stderr, outcome.stdout[-3000:]

    current, table = ids_table(bucket)
    assert current["items"] == 80 and len(table) == 80 and len(set(table.sid_map().values())) == 80
    assert current["added_since_retrain"] == 20  # counted once, not once per run
    assert processed(bucket)["incoming/new.jsonl"].run_id == current["run_id"]
    assert SearchBackend(SearchConfig(hosts=[local_stack.search_url], alias=alias)).count() == 80
