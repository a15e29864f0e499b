from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag()
dag = bag.dags.get("catalog_reindex")
print(json.dumps({
    "errors": {k: str(v)[:500] for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dag_ids),
    "tasks": sorted(dag.task_dict) if dag else [],
    "schedule": getattr(dag.timetable, "expression", None) if dag else None,
    "catchup": dag.catchup if dag else None,
    "max_active_runs": dag.max_active_runs if dag else None,
    "train_queue": dag.task_dict["train"].queue if dag else None,
    "params": sorted(dag.params.keys()) if dag else [],
    "groups": {t.task_id: t.task_group.group_id for t in dag.tasks} if dag else {},
    "downstream": {t: sorted(dag.task_dict[t].downstream_task_ids) for t in ("publish", "swap_alias")} if dag else {},
    "retries": dag.task_dict["discover"].retries if dag else None,
    "failure_callbacks": [getattr(c, "__name__", str(c)) for c in dag.task_dict["discover"].on_failure_callback or []]
    if dag else [],
}))
"""


def test_dagbag_loads_without_import_errors(airflow_home):
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=airflow_home, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert "catalog_reindex" in report["dags"]
    assert report["tasks"] == sorted(
        [
            "discover", "has_new_drops", "validate", "merge", "decide", "train", "plan_shards", "assign_shard",
            "reduce_ids", "check", "publish", "swap_alias", "commit", "confirm",
        ]
    )  # fmt: skip
    assert report["schedule"] == "0 2 * * *"
    assert report["catchup"] is False
    assert report["max_active_runs"] == 1
    assert report["retries"] == 2 and report["failure_callbacks"] == ["log_failure"]
    assert report["train_queue"] == "gpu"
    assert report["params"] == ["max_invalid_share", "mode", "retrain_added_share"]


def test_the_dag_reads_as_the_story_with_the_alias_swap_its_own_task(airflow_home):
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=airflow_home, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    chapters: dict[str, list[str]] = {}
    for task_id, group in report["groups"].items():
        chapters.setdefault(group, []).append(task_id)
    assert {group: sorted(tasks) for group, tasks in chapters.items()} == {
        "ingest": ["discover", "has_new_drops", "merge", "validate"],
        "index": ["assign_shard", "decide", "plan_shards", "reduce_ids", "train"],
        "gate": ["check"],
        "go_live": ["publish", "swap_alias"],
        "record": ["commit", "confirm"],
    }
    # The swap comes after the load and before anything is made current.
    assert report["downstream"] == {"publish": ["commit", "swap_alias"], "swap_alias": ["commit"]}
