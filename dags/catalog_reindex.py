"""catalog_reindex: new catalogue drops in S3 -> validated -> semantic IDs (apply or retrain) -> checked -> published.

Five task groups tell the story: ingest (discover, validate, merge), index (decide, train, assign), gate (check),
go_live (publish, then the alias swap as its own task), record (commit, confirm).

Every step is a function of ``lmindexer.pipeline.steps``; this file only wires them, handing each task's typed
result (``lmindexer.pipeline.results``) to the next as JSON. Each step stores its result
under the run's state, so retrying a task or rerunning the run repeats no work and works on the drops the run first
discovered; nothing becomes current before ``commit``, and a failure before the alias swap leaves the previous index
live. ``confirm`` fails the run, after the good drops were committed, when a drop was quarantined whole.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, TaskGroup, TriggerRule, dag, get_current_context, task
from lmindexer_airflow.assets import SEARCH_INDEX, SEMANTIC_IDS
from lmindexer_airflow.context import prepare, search_config, task_defaults

# The typed results the steps hand each other; tasks pass their JSON (to_xcom / from_xcom). Light: no model stack.
from lmindexer.pipeline.results import (
    Checked,
    Decision,
    Merged,
    Published,
    Reduced,
    Shard,
    ShardCodes,
    Snapshot,
    ValidatedDrop,
    to_xcom,
)

# Mapped assign_shard tasks of one run that may run at once; each takes its share of its machine's cores.
ASSIGN_TASKS_AT_ONCE = 4


def _setup():
    return prepare(get_current_context())


@dag(
    dag_id="catalog_reindex",
    description="Validate new catalogue drops, assign or retrain semantic IDs, publish them to search",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lmindexer"],
    default_args=task_defaults(),
    params={
        "mode": Param("auto", enum=["auto", "apply", "retrain"], description="apply the snapshot, retrain, or decide"),
        "max_invalid_share": Param(None, type=["null", "number"], minimum=0, maximum=1),
        "retrain_added_share": Param(None, type=["null", "number"], minimum=0),
    },
)
def catalog_reindex() -> None:
    @task
    def discover() -> list[dict]:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return to_xcom(steps.discover(config, run_id))

    @task.short_circuit
    def has_new_drops(drops: list[dict]) -> bool:
        return bool(drops)

    @task
    def validate(drops: list[dict]) -> list[dict]:
        from lmindexer.pipeline import steps
        from lmindexer.storage.drops import Drop

        config, run_id = _setup()
        return to_xcom(steps.validate_drops(config, run_id, [Drop.from_dict(d) for d in drops]))

    @task
    def merge(validated: list[dict]) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.merge(config, run_id, ValidatedDrop.many(validated)).to_xcom()

    @task
    def decide(merged: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        mode = get_current_context()["params"]["mode"]
        return steps.decide(config, run_id, Merged.from_xcom(merged), mode).to_xcom()

    @task(queue="gpu", execution_timeout=timedelta(hours=6))
    def train(merged: dict, decision: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.train(config, run_id, Merged.from_xcom(merged), Decision.from_xcom(decision)).to_xcom()

    @task
    def plan_shards(merged: dict, snapshot: dict) -> list[dict]:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return to_xcom(steps.plan_shards(config, run_id, Merged.from_xcom(merged), Snapshot.from_xcom(snapshot)))

    @task(max_active_tis_per_dagrun=ASSIGN_TASKS_AT_ONCE)
    def assign_shard(shard: dict, snapshot: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.assign_shard(
            config, run_id, Snapshot.from_xcom(snapshot), Shard.from_xcom(shard), tasks_at_once=ASSIGN_TASKS_AT_ONCE
        ).to_xcom()

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def reduce_ids(snapshot: dict, coded: list[dict] | None) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.reduce_ids(config, run_id, Snapshot.from_xcom(snapshot), ShardCodes.many(coded or [])).to_xcom()

    @task
    def check(merged: dict, decision: dict, snapshot: dict, reduced: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.check(
            config, run_id, Merged.from_xcom(merged), Decision.from_xcom(decision), Snapshot.from_xcom(snapshot),
            Reduced.from_xcom(reduced),
        ).to_xcom()  # fmt: skip

    @task(outlets=[SEARCH_INDEX])
    def publish(merged: dict, decision: dict, reduced: dict, checked: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.publish(
            config, search_config(), run_id, Merged.from_xcom(merged), Decision.from_xcom(decision),
            Reduced.from_xcom(reduced),
        ).to_xcom()  # fmt: skip

    @task
    def swap_alias(merged: dict, published: dict) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.swap_alias(
            config, search_config(), run_id, Merged.from_xcom(merged), Published.from_xcom(published)
        ).to_xcom()

    @task(outlets=[SEMANTIC_IDS])
    def commit(
        validated: list[dict],
        merged: dict,
        decision: dict,
        snapshot: dict,
        reduced: dict,
        checked: dict,
        published: dict,
    ) -> dict:
        from lmindexer.pipeline import steps

        config, run_id = _setup()
        return steps.commit(
            config, run_id, ValidatedDrop.many(validated), Merged.from_xcom(merged), Decision.from_xcom(decision),
            Snapshot.from_xcom(snapshot), Reduced.from_xcom(reduced), Checked.from_xcom(checked),
            Published.from_xcom(published),
        ).to_xcom()  # fmt: skip

    @task(retries=0)
    def confirm(validated: list[dict], committed: dict) -> dict:
        from lmindexer.pipeline import steps

        return steps.confirm_drops(ValidatedDrop.many(validated)).to_xcom()

    # The story, one group per chapter; task ids stay unprefixed (logs, alerts and retries name them as before).
    with TaskGroup("ingest", prefix_group_id=False, tooltip="new drops found, validated, merged into the catalogue"):
        drops = discover()
        validated = validate(drops)
        has_new_drops(drops) >> validated
        merged = merge(validated)
    with TaskGroup("index", prefix_group_id=False, tooltip="apply the snapshot or retrain; IDs for new items"):
        decision = decide(merged)
        snapshot = train(merged, decision)
        shards = plan_shards(merged, snapshot)
        coded = assign_shard.partial(snapshot=snapshot).expand(shard=shards)
        reduced = reduce_ids(snapshot, coded)
    with TaskGroup("gate", prefix_group_id=False, tooltip="the output suite and the quality gates"):
        checked = check(merged, decision, snapshot, reduced)
    with TaskGroup("go_live", prefix_group_id=False, tooltip="load and verify the index, then swap the alias"):
        published = publish(merged, decision, reduced, checked)
        swapped = swap_alias(merged, published)
    with TaskGroup("record", prefix_group_id=False, tooltip="make the run current; fail it if a drop was rejected"):
        committed = commit(validated, merged, decision, snapshot, reduced, checked, published)
        swapped >> committed
        confirm(validated, committed)


catalog_reindex()
