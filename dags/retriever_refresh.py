"""retriever_refresh: keep the generative retriever in step with the semantic IDs that catalog_reindex publishes.

Runs whenever catalog_reindex commits. A new ID space means retraining: train (GPU queue) -> evaluate -> gate ->
promote; new or deleted items in the same ID space only need the live model's trie synced; otherwise nothing. Every
step is a function of ``lmindexer.downstream.jobs`` and stores its result under the run, so a retry repeats no work;
the live retriever changes only in ``promote`` (after the gates) or ``sync``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from lmindexer_airflow.assets import RETRIEVER, SEMANTIC_IDS
from lmindexer_airflow.context import prepare_retriever, task_defaults

# The typed results the steps hand each other; tasks pass their JSON (to_xcom / from_xcom). Light: no model stack.
from lmindexer.downstream.results import EvaluatedRetriever, GateOutcome, RefreshPlan, TrainedRetriever


def _setup():
    return prepare_retriever(get_current_context())


@dag(
    dag_id="retriever_refresh",
    description="Retrain, or sync, the generative retriever when new semantic IDs are published",
    schedule=[SEMANTIC_IDS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lmindexer"],
    default_args=task_defaults(),
    params={"mode": Param("auto", enum=["auto", "retrain"], description="retrain even in the same ID space")},
)
def retriever_refresh() -> None:
    @task
    def plan() -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.plan_refresh(pipeline, retriever, run_id, mode=get_current_context()["params"]["mode"]).to_xcom()

    @task.branch
    def route(planned: dict) -> str:
        return {"retrain": "train", "sync": "sync", "none": "up_to_date"}[RefreshPlan.from_xcom(planned).action]

    @task(queue="gpu", execution_timeout=timedelta(hours=6))
    def train(planned: dict) -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.train_retriever(pipeline, retriever, run_id, RefreshPlan.from_xcom(planned)).to_xcom()

    @task
    def evaluate(trained: dict) -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.evaluate_retriever(pipeline, retriever, run_id, TrainedRetriever.from_xcom(trained)).to_xcom()

    # A failed gate is a verdict on a stored evaluation: retrying cannot change it.
    @task(retries=0)
    def gate(evaluated: dict) -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.gate_retriever(pipeline, retriever, run_id, EvaluatedRetriever.from_xcom(evaluated)).to_xcom()

    @task(outlets=[RETRIEVER])
    def promote(gated: dict) -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.promote_retriever(pipeline, retriever, run_id, GateOutcome.from_xcom(gated)).to_xcom()

    @task(outlets=[RETRIEVER])
    def sync(planned: dict) -> dict:
        from lmindexer.downstream import jobs

        pipeline, retriever, run_id = _setup()
        return jobs.sync_retriever(pipeline, retriever, run_id, RefreshPlan.from_xcom(planned)).to_xcom()

    @task
    def up_to_date(planned: dict) -> str:
        return RefreshPlan.from_xcom(planned).reason

    planned = plan()
    trained = train(planned)
    route(planned) >> [trained, sync(planned), up_to_date(planned)]
    promote(gate(evaluate(trained)))


retriever_refresh()
