"""One whole reindex run in one process, without an orchestrator: the steps of :mod:`lmindexer.pipeline.steps` in
the order the ``catalog_reindex`` DAG runs them (mapped shards one after another).

For a laptop, a cron job, or to finish by hand a run that an orchestrator left half done: every step is remembered
under the run's id, so calling :func:`run_pipeline` again with the same ``run_id`` after a crash at any point
(a killed process, a lost connection) repeats no finished step and completes the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmindexer.pipeline import steps
from lmindexer.pipeline.config import Mode, PipelineConfig


def run_pipeline(
    config: PipelineConfig,
    search: Any,
    run_id: str,
    *,
    mode: Mode = "auto",
    on_step: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Run (or complete) run ``run_id``; returns what each step returned, by step (the typed results of
    :mod:`lmindexer.pipeline.results`; :func:`~lmindexer.pipeline.results.to_xcom` gives their JSON).
    ``on_step(name, result)`` is called after every step, e.g. to print progress. Raises what a step raises;
    :class:`~lmindexer.pipeline.steps.DropsRejected` comes last, after the accepted drops were committed."""
    done: dict[str, Any] = {}

    def record(name: str, result: Any) -> Any:
        done[name] = result
        if on_step is not None:
            on_step(name, result)
        return result

    drops = record("discover", steps.discover(config, run_id))
    if not drops:
        return done
    validated = record("validate", steps.validate_drops(config, run_id, drops))
    merged = record("merge", steps.merge(config, run_id, validated))
    decision = record("decide", steps.decide(config, run_id, merged, mode))
    snapshot = record("train", steps.train(config, run_id, merged, decision))
    shards = record("plan_shards", steps.plan_shards(config, run_id, merged, snapshot))
    coded = record("assign_shard", [steps.assign_shard(config, run_id, snapshot, shard) for shard in shards])
    reduced = record("reduce_ids", steps.reduce_ids(config, run_id, snapshot, coded))
    checked = record("check", steps.check(config, run_id, merged, decision, snapshot, reduced))
    published = record("publish", steps.publish(config, search, run_id, merged, decision, reduced))
    record("swap_alias", steps.swap_alias(config, search, run_id, merged, published))
    record("commit", steps.commit(config, run_id, validated, merged, decision, snapshot, reduced, checked, published))
    record("confirm", steps.confirm_drops(validated))
    return done


__all__ = ["run_pipeline"]
