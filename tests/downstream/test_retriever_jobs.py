"""The retriever refresh without Airflow, on a local store: plan, train, evaluate, gate, promote, sync, reruns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from testsupport.retriever_state import (
    TINY_RETRIEVER,
    fit_snapshot,
    move_current,
    one_torch_thread,
    publish,
    title_queries,
    write_queries,
)

from lmindexer.cache import cache_root
from lmindexer.downstream import jobs
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.results import EvaluatedRetriever, LiveComparison
from lmindexer.errors import ConfigError, RetrieverError, RetrieverGateFailed
from lmindexer.idtable import IdTable
from lmindexer.pipeline import PipelineConfig
from lmindexer.pipeline.records import write_json

INITIAL, ADDED = 60, 20


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def world(wiki_items, tmp_path_factory):
    """A pipeline that has published 60 real items (rq-kmeans IDs, L=2, K=8), and title queries about them."""
    root = tmp_path_factory.mktemp("retriever-jobs")
    pipeline = PipelineConfig(base_uri=str(root / "store"))
    items = wiki_items[: INITIAL + ADDED]
    snapshot_uri = fit_snapshot(pipeline, items[:INITIAL], root)
    pointer = publish(pipeline, "p1", items[:INITIAL], snapshot_uri)
    train = write_queries(root / "train.jsonl", title_queries(items[:INITIAL]))
    # One evaluation query is about an item the catalogue does not hold: skipped and counted, never a failure.
    eval_pairs = [*title_queries(items[:30]), ("an item nobody indexed", "wiki-missing")]
    evaluation = write_queries(root / "eval.jsonl", eval_pairs)
    retriever = jobs.parse_retriever_config(
        {"train_queries": train, "eval_queries": evaluation, "options": {**TINY_RETRIEVER, "checkpoint_every": 1}}
    )
    return SimpleNamespace(
        pipeline=pipeline, retriever=retriever, items=items, snapshot_uri=snapshot_uri, pointer=pointer, root=root
    )


@pytest.fixture(scope="module")
def first(world):
    """The first refresh, step by step, as the DAG runs it."""
    p, r = world.pipeline, world.retriever
    plan = jobs.plan_refresh(p, r, "r1")
    trained = jobs.train_retriever(p, r, "r1", plan)
    evaluated = jobs.evaluate_retriever(p, r, "r1", trained)
    gated = jobs.gate_retriever(p, r, "r1", evaluated)
    promoted = jobs.promote_retriever(p, r, "r1", gated)
    return SimpleNamespace(plan=plan, trained=trained, evaluated=evaluated, gated=gated, promoted=promoted)


def current_bytes(world) -> bytes:
    return (Path(world.pipeline.base_uri) / "retrievers" / "current.json").read_bytes()


def test_first_refresh_trains_evaluates_gates_and_promotes(world, first):
    assert first.plan.action == "retrain" and first.plan.reason == "no retriever has been promoted yet"
    assert first.plan.pointer.run_id == "p1" and first.plan.live is None
    trained = first.trained
    assert trained.model_uri == f"{world.pipeline.base_uri}/retrievers/runs/r1/model"
    assert sorted(p.name for p in Path(trained.model_uri).iterdir()) == [
        "generative.json", "tokenizer", "weights.safetensors"
    ]  # fmt: skip
    assert (trained.items, trained.train_pairs, trained.train_pairs_skipped) == (INITIAL, INITIAL, 0)
    assert trained.snapshot_version == world.pointer["snapshot_version"]
    assert trained.training["epoch_loss"][-1] < trained.training["epoch_loss"][0]
    # trained in an accelerate launch subprocess on local copies; the record names what the run trained on
    assert (trained.training["processes"], trained.training["device"]) == (1, "cpu")
    assert trained.train_queries == world.retriever.train_queries
    assert not (cache_root() / "training" / "retriever-r1").exists(), "the checkpoint goes once the model is saved"
    metrics = first.evaluated.metrics
    assert metrics["queries"] == 30 and metrics["skipped_queries"] == 1
    assert {"recall@1", "recall@10", "ndcg@10", "mrr@10"} <= set(metrics)
    assert first.evaluated.live is None
    assert first.gated.passed and first.gated.failures == []
    live = jobs.current_retriever(world.pipeline, world.retriever)
    assert live == first.promoted
    assert live.run_id == "r1" and live.kind == "trained" and live.model_uri == trained.model_uri
    assert live.pipeline_run_id == "p1" and live.metrics == metrics and live.previous_run_id is None
    # every step's result is recorded beside the model
    run_dir = Path(world.pipeline.base_uri) / "retrievers" / "runs" / "r1"
    assert sorted(p.name for p in run_dir.glob("*.json")) == [
        "evaluate.json", "gate.json", "plan.json", "promote.json", "train.json"
    ]  # fmt: skip
    model = GenerativeModel.load(live.model_uri)
    catalogue = {item.item_id for item in world.items[:INITIAL]}
    for ranked in model.search([q for q, _ in title_queries(world.items[:20])], k=10):
        assert ranked and {item_id for item_id, _ in ranked} <= catalogue


def test_reruns_repeat_no_work(world, first, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must not retrain")

    monkeypatch.setattr(GenerativeModel, "fit_retrieval", no_training)
    before = current_bytes(world)
    p, r = world.pipeline, world.retriever
    assert jobs.plan_refresh(p, r, "r1") == first.plan  # the stored plan, though a retriever is live now
    assert jobs.train_retriever(p, r, "r1", first.plan) == first.trained
    assert jobs.evaluate_retriever(p, r, "r1", first.trained) == first.evaluated
    assert jobs.promote_retriever(p, r, "r1", first.gated) == first.promoted
    assert jobs.refresh_retriever(p, r, "r1").current == first.promoted
    assert current_bytes(world) == before
    # a new run against the same pointer has nothing to do
    again = jobs.plan_refresh(p, r, "r2")
    assert again.action == "none"
    with pytest.raises(RetrieverError, match="run r2 planned 'none'"):
        jobs.train_retriever(p, r, "r2", again)


def test_a_failed_gate_raises_and_leaves_the_live_retriever(world, first):
    before = current_bytes(world)
    # a small, quick model: this test is about the gate, not the model
    few = write_queries(world.root / "few.jsonl", title_queries(world.items[:8]))
    options = {**TINY_RETRIEVER, "epochs": 1, "indexing_pairs": False}
    strict = world.retriever.model_copy(update={"min_recall_at_10": 1.01, "train_queries": few, "options": options})
    with pytest.raises(RetrieverGateFailed, match=r"recall@10 \d\.\d+ is below the floor 1\.0100.*stays in charge"):
        jobs.refresh_retriever(world.pipeline, strict, "r-strict", mode="retrain")
    assert current_bytes(world) == before
    run_dir = Path(world.pipeline.base_uri) / "retrievers" / "runs" / "r-strict"
    assert json.loads((run_dir / "gate.json").read_text())["passed"] is False
    assert not (run_dir / "promote.json").exists()
    # the same ID space: the live model was measured now, on the same queries and items
    live = json.loads((run_dir / "evaluate.json").read_text())["live"]
    assert live["same_id_space"] and live["compared"] and live["metrics"]["queries"] == 30
    # promote refuses a run whose stored gate failed, whatever it is handed
    with pytest.raises(RetrieverGateFailed, match="has not passed its gates"):
        jobs.promote_retriever(world.pipeline, strict, "r-strict", {"passed": True})
    assert current_bytes(world) == before


def test_gates_compare_with_the_live_model_only_in_the_same_id_space(world):
    p, r = world.pipeline, world.retriever

    def evaluated(new_ndcg, live):
        return EvaluatedRetriever(run_id="e", evaluated_at="t", model_uri="m", snapshot_version="v", eval_queries="q",
                                  metrics={"recall@10": 0.5, "ndcg@10": new_ndcg}, live=live)  # fmt: skip

    def live_model(**fields):
        return LiveComparison(run_id="old", model_uri="m-old", snapshot_version="v", recorded_metrics=None, **fields)

    same_space = live_model(same_id_space=True, compared=True, metrics={"ndcg@10": 0.5})
    assert jobs.gate_retriever(p, r, "g1", evaluated(0.49, same_space)).passed
    with pytest.raises(RetrieverGateFailed, match=r"ndcg@10 0\.4700 is more than 0\.0200 below the live model's 0\.5"):
        jobs.gate_retriever(p, r, "g2", evaluated(0.47, same_space))
    # Another ID space: the live model's recorded figure is reported, not gated on; only the floor applies.
    other_space = dataclasses.replace(
        live_model(same_id_space=False, compared=False), recorded_metrics={"ndcg@10": 0.9}
    )
    gated = jobs.gate_retriever(p, r, "g3", evaluated(0.1, other_space))
    assert gated.passed and gated.checks["informational"]["difference"] == pytest.approx(-0.8)
    floor = r.model_copy(update={"min_recall_at_10": 0.6})
    with pytest.raises(RetrieverGateFailed, match="recall@10"):
        jobs.gate_retriever(p, floor, "g4", evaluated(0.1, other_space))


def test_promote_refuses_to_replace_a_retriever_that_went_live_after_its_plan(world, first):
    p, r = world.pipeline, world.retriever
    run = Path(p.base_uri) / "retrievers" / "runs" / "stale"
    older = {"run_id": "an-older-run", "model_uri": "m-older", "snapshot_version": first.trained.snapshot_version}
    write_json(str(run / "train.json"), {**first.trained.to_xcom(), "live": older})
    write_json(str(run / "evaluate.json"), first.evaluated.to_xcom())
    write_json(str(run / "gate.json"), {"passed": True})
    before = current_bytes(world)
    with pytest.raises(RetrieverError, match="changed since run stale planned"):
        jobs.promote_retriever(p, r, "stale", {"passed": True})
    assert current_bytes(world) == before


def test_plan(world, first, tmp_path):
    other = PipelineConfig(base_uri=str(tmp_path / "store"))
    r = world.retriever
    assert jobs.plan_refresh(other, r).action == "none"  # nothing published
    move_current(other, world.pointer)
    assert jobs.plan_refresh(other, r).reason == "no retriever has been promoted yet"
    live = jobs.current_retriever(world.pipeline, r)
    write_json(other.uri("retrievers", "current.json"), live.to_xcom())
    move_current(other, {**world.pointer, "run_id": "p9", "snapshot_version": "rq-kmeans-new"})
    plan = jobs.plan_refresh(other, r)
    assert plan.action == "retrain" and "the ID space changed" in plan.reason
    # the same space, but an ID past the live model's suffix vocabulary: only a retrain can return that item
    move_current(other, {**world.pointer, "run_id": "p9"})
    write_json(
        other.uri("retrievers", "current.json"), {**live.to_xcom(), "suffix_capacity": 1, "ids_fingerprint": "x"}
    )
    plan = jobs.plan_refresh(other, r)
    assert plan.action == "retrain" and "suffix vocabulary" in plan.reason
    assert jobs.plan_refresh(other, r, mode="retrain").action == "retrain"
    with pytest.raises(ConfigError, match="unknown refresh mode"):
        jobs.plan_refresh(other, r, mode="later")


def test_sync_puts_new_items_in_the_trie_and_drops_deleted_ones_without_training(world, first, monkeypatch):
    p, r = world.pipeline, world.retriever
    live = jobs.current_retriever(p, r)
    before_model = GenerativeModel.load(live.model_uri)
    # a pipeline run that changed texts only moves the pointer, not the items or their IDs
    move_current(p, {**world.pointer, "run_id": "p1-text"})
    assert "left the live items and their IDs unchanged" in jobs.plan_refresh(p, r).reason

    added = world.items[INITIAL:]
    deleted = world.items[0]
    pointer = publish(p, "p2", world.items[1:], world.snapshot_uri)  # 20 new items; the first one deleted
    table = IdTable.read(pointer["ids_uri"])
    assert len(table) == INITIAL + ADDED  # the deleted item keeps its reserved ID in the table
    new_ids = {item.item_id for item in added}
    assert not new_ids & {item_id for item_id, _ in before_model.trie}

    monkeypatch.setattr(GenerativeModel, "fit_retrieval", lambda *a, **k: pytest.fail("sync must not train"))
    plan = jobs.plan_refresh(p, r, "s1")
    assert plan.action == "sync" and plan.items == INITIAL + ADDED - 1
    synced = jobs.sync_retriever(p, r, "s1", plan)
    assert (synced.inserted, synced.removed, synced.items) == (ADDED, 1, INITIAL + ADDED - 1)
    current = jobs.current_retriever(p, r)
    assert current == synced.current
    assert current.kind == "synced" and current.trained_run_id == "r1" and current.previous_run_id == "r1"
    assert current.model_uri == f"{p.base_uri}/retrievers/runs/s1/model" and current.pipeline_run_id == "p2"
    assert current.metrics == live.metrics and current.metrics_run_id == "r1"

    # The decoder may now write every new item's ID (and maps it back to the item); the deleted item's it may not.
    after = GenerativeModel.load(current.model_uri)
    sids = table.sid_map()
    for item_id in new_ids:
        tokens = after.vocabulary.tokens_of_sid(sids[item_id])
        assert tokens[-1] in after.trie.allowed(tokens[:-1]) and after.trie.item_for(tokens) == item_id
    assert deleted.item_id not in after.trie
    assert deleted.item_id not in {i for ranked in after.search([deleted.title, deleted.text]) for i, _ in ranked}

    before = current_bytes(world)
    assert jobs.sync_retriever(p, r, "s1", plan).current == current
    assert current_bytes(world) == before
    assert jobs.plan_refresh(p, r, "s2").action == "none"


def test_config_errors_are_clear(world):
    base = {"train_queries": "t.jsonl", "eval_queries": "e.jsonl"}
    assert jobs.parse_retriever_config({**base, "prefix": "/models/gen/"}).prefix == "models/gen/"
    with pytest.raises(ConfigError, match="invalid retriever config: eval_queries: Field required"):
        jobs.parse_retriever_config({"train_queries": "t.jsonl"})
    with pytest.raises(ConfigError, match="bogus"):
        jobs.parse_retriever_config({**base, "bogus": 1})
    with pytest.raises(ConfigError, match="options: invalid generative model options: epochs"):
        jobs.parse_retriever_config({**base, "options": {"epochs": 0}})
    with pytest.raises(ConfigError, match="task must be 'retrieval'"):
        jobs.parse_retriever_config({**base, "options": {"task": "recommendation"}})
    with pytest.raises(ConfigError, match="max_ndcg_drop"):
        jobs.parse_retriever_config({**base, "max_ndcg_drop": -1})
    bad = world.root / "bad.jsonl"
    bad.write_text('{"query": "q", "item_id": "a"}\n{"query": ""}\n')
    with pytest.raises(RetrieverError, match=r"bad\.jsonl line 2: needs a non-empty string 'query' and 'item_id'"):
        jobs.read_queries(bad)
