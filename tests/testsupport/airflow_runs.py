"""Running the project's DAGs with the real Airflow CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_environment(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }


# ``airflow dags test`` names every run after the moment it starts, so it cannot run the same run twice. This runs
# the same in-process test run, but with ``run_after`` pinned to the logical date: the run id is then the same each
# time, and Airflow replaces the earlier run of that date (its task instances and XComs start afresh), which is
# what clearing a whole run in the UI does.
_SAME_RUN = """
import json, sys
from airflow.utils import timezone
from airflow.utils.cli import get_bagged_dag
dag = get_bagged_dag(None, sys.argv[1])
when = timezone.parse(sys.argv[2])
run = dag.test(logical_date=when, run_after=when, run_conf=json.loads(sys.argv[3]) or None)
print(f"DagRun Finished: run_id={run.run_id}, state={run.state}", flush=True)
"""


def run_dag(
    env: dict[str, str], dag_id: str, conf: dict | None = None, timeout: int = 600, same_run_at: str | None = None
) -> subprocess.CompletedProcess:
    """One real DAG run. With ``same_run_at`` (an ISO date), every call runs the same run again, as a rerun of a
    cleared run does; without it each call is a new run."""
    if same_run_at is not None:
        command = [sys.executable, "-c", _SAME_RUN, dag_id, same_run_at, json.dumps(conf or {})]
    else:
        command = [AIRFLOW, "dags", "test", dag_id]
        if conf:
            command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
