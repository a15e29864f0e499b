"""catalog_reindex as production runs it: metadata on PostgreSQL, a real scheduler with the LocalExecutor.

The other DAG tests use ``airflow dags test`` on SQLite, which runs every task one after the other in one process;
it cannot show that the mapped ``assign_shard`` tasks of a run really run side by side. Here the api-server, the
dag-processor and the scheduler run as in a deployment, the run is triggered like a manual run in the UI, and the
task instances' start and end times are read back from the metadata database.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from testsupport.airflow_runs import AIRFLOW, airflow_environment
from testsupport.airflow_services import Airflow, query, running_airflow, wait_until
from testsupport.postgres import Postgres
from testsupport.reindex_runs import dag_env, ids_table, upload

from lmindexer import devstack
from lmindexer.search import SearchBackend, SearchConfig

pytestmark = pytest.mark.slow

DAG_ID = "catalog_reindex"
# Task instances the LocalExecutor runs at once. At least 2 for mapped tasks to overlap; not more than the shards
# need, since every slot is a process importing torch on a small CI machine.
PARALLELISM = 3
ITEMS, SHARD_SIZE = 120, 40  # -> 3 assign_shard tasks (plan_shards: one shard per shard_size items to assign)
RUN_TIMEOUT_S = 240


@pytest.fixture
def airflow_on_postgres(postgres: Postgres, tmp_path: Path) -> tuple[dict[str, str], int]:
    """Environment of an Airflow whose metadata database is ``postgres`` (migrated), and its api-server port."""
    home = tmp_path / "airflow-home"
    home.mkdir()
    api_port = devstack.free_port()
    env = {
        **os.environ,
        **airflow_environment(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
        # Task processes report to the execution API; it must be this test's api-server, not the default :8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        # The scheduler signs the tasks' tokens and the api-server checks them: both need the same secret.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # Only the triggered run: unpausing a DAG with a schedule would also start the latest scheduled interval,
        # which (max_active_runs=1) could run first and take the drop.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # One DAG folder of two files: one parsing process is enough and leaves the cores to the tasks.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    }
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    return env, api_port


def _run_state(dsn: str, run_id: str) -> str | None:
    rows = query(dsn, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", DAG_ID, run_id)
    state = rows[0][0] if rows else None
    return state if state in ("success", "failed") else None


def _failed_task_logs(airflow: Airflow, run_id: str) -> str:
    """The last lines of each attempt's log of the run, for the failure message."""
    run_logs = Path(airflow.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    return "\n".join(
        f"----- {log} -----\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        for log in sorted(run_logs.rglob("*.log"))
    )


def _overlapping(spans: dict[int, tuple[datetime, datetime]]) -> list[tuple[int, int]]:
    return [
        (a, b)
        for (a, (start_a, end_a)), (b, (start_b, end_b)) in itertools.combinations(sorted(spans.items()), 2)
        if start_a < end_b and start_b < end_a
    ]


def test_catalog_reindex_runs_on_postgres_with_the_local_executor_and_assigns_shards_in_parallel(
    airflow_on_postgres, postgres, local_stack, s3, wiki_sample_path, tmp_path
):
    base_env, api_port = airflow_on_postgres
    bucket, alias = f"prod-{uuid.uuid4().hex[:8]}", f"p{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    lines = wiki_sample_path.read_text().splitlines()[:ITEMS]
    upload(s3, bucket, "incoming/drop-1.jsonl", lines)
    env = dag_env(base_env, local_stack, bucket, alias, shard_size=SHARD_SIZE)
    run_id = "manual__on_postgres"

    with running_airflow(env, tmp_path / "service-logs", api_port) as airflow:
        wait_until(
            "the dag-processor stores catalog_reindex",
            lambda: query(postgres.dsn, "SELECT 1 FROM serialized_dag WHERE dag_id = %s", DAG_ID),
            airflow,
            timeout=120,
        )
        airflow.cli("dags", "unpause", DAG_ID)
        airflow.cli("dags", "trigger", DAG_ID, "--run-id", run_id)
        state = wait_until("the run finishes", lambda: _run_state(postgres.dsn, run_id), airflow, RUN_TIMEOUT_S)
        assert state == "success", f"run {run_id} {state}\n{_failed_task_logs(airflow, run_id)}"

    # What the run did: a full build of every item, every ID distinct, all of them searchable.
    current, table = ids_table(bucket)
    assert current["items"] == ITEMS and len(table) == ITEMS
    assert len(set(table.sid_map().values())) == ITEMS
    assert SearchBackend(SearchConfig(hosts=[local_stack.search_url], alias=alias)).count() == ITEMS

    # The training task carries queue="gpu"; the LocalExecutor has no queues and ran it like any other task.
    ((train_queue, train_state),) = query(
        postgres.dsn,
        "SELECT queue, state FROM task_instance WHERE dag_id = %s AND run_id = %s AND task_id = 'train'",
        DAG_ID,
        run_id,
    )
    assert (train_queue, train_state) == ("gpu", "success")

    rows = query(
        postgres.dsn,
        "SELECT map_index, state, start_date, end_date FROM task_instance"
        " WHERE dag_id = %s AND run_id = %s AND task_id = 'assign_shard' ORDER BY map_index",
        DAG_ID,
        run_id,
    )
    shards = math.ceil(ITEMS / SHARD_SIZE)
    assert [(index, state) for index, state, _, _ in rows] == [(n, "success") for n in range(shards)]
    spans = {index: (start, end) for index, _, start, end in rows}
    described = "\n".join(f"  map_index={i}: {s.isoformat()} -> {e.isoformat()}" for i, (s, e) in spans.items())
    print(f"assign_shard task instances:\n{described}")  # shown with -rP: what "in parallel" looked like
    assert _overlapping(spans), f"no two assign_shard task instances ran at the same time:\n{described}"
