"""The retriever refresh with a dense index configured: every trained or synced model gets a dense index of its
catalogue version beside it, recorded in the live retriever's record, and the index follows the catalogue's texts
even when the items and their IDs do not change."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
from testsupport.retriever_state import (
    TINY_RETRIEVER,
    fit_snapshot,
    one_torch_thread,
    publish,
    title_queries,
    write_queries,
)

from lmindexer.downstream import jobs
from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.errors import ConfigError
from lmindexer.pipeline import PipelineConfig

INITIAL, ADDED = 40, 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def world(wiki_items, tmp_path_factory):
    """A pipeline that has published 40 real items, a retriever config with a dense index (its defaults), and the
    first refresh promoted."""
    root = tmp_path_factory.mktemp("retriever-dense")
    pipeline = PipelineConfig(base_uri=str(root / "store"))
    items = wiki_items[: INITIAL + ADDED]
    snapshot_uri = fit_snapshot(pipeline, items[:INITIAL], root)
    pointer = publish(pipeline, "p1", items[:INITIAL], snapshot_uri)
    queries = write_queries(root / "queries.jsonl", title_queries(items[:INITIAL]))
    retriever = jobs.parse_retriever_config(
        {"train_queries": queries, "eval_queries": queries, "options": TINY_RETRIEVER, "dense_index": {}}
    )
    first = jobs.refresh_retriever(pipeline, retriever, "r1")
    return SimpleNamespace(
        pipeline=pipeline, retriever=retriever, items=items, snapshot_uri=snapshot_uri, pointer=pointer, first=first
    )


def test_a_trained_retriever_goes_live_with_a_dense_index_of_its_catalogue(world):
    live = jobs.current_retriever(world.pipeline, world.retriever)
    assert world.first.action == "retrain" and live == world.first.current
    assert live.dense_uri == f"{world.pipeline.base_uri}/retrievers/runs/r1/dense"
    index = DenseIndex.load(live.dense_uri)
    assert index.item_ids == sorted(item.item_id for item in world.items[:INITIAL])
    item = world.items[7]
    assert index.search([f"{item.title}. {item.text}"], k=1)[0][0][0] == item.item_id


def test_changed_texts_alone_sync_the_dense_index_and_leave_the_model_alone(world, monkeypatch):
    p, r = world.pipeline, world.retriever
    live = jobs.current_retriever(p, r)
    rewritten = world.items[3]
    text = "Glaciers carve deep valleys as the ice sheet moves slowly over the bedrock of the mountains."
    changed = [dataclasses.replace(i, text=text) if i.item_id == rewritten.item_id else i for i in world.items[:40]]
    publish(p, "p1-text", changed, world.snapshot_uri)
    monkeypatch.setattr(GenerativeModel, "fit_retrieval", lambda *a, **k: pytest.fail("a sync must not train"))
    plan = jobs.plan_refresh(p, r, "s-text")
    assert plan.action == "sync" and plan.reason.endswith("the dense index follows its catalogue version")
    synced = jobs.sync_retriever(p, r, "s-text", plan)
    assert (synced.inserted, synced.removed) == (0, 0)
    current = jobs.current_retriever(p, r)
    assert current.dense_uri == f"{p.base_uri}/retrievers/runs/s-text/dense" != live.dense_uri
    assert current.metrics == live.metrics and current.trained_run_id == "r1"
    found = DenseIndex.load(current.dense_uri).search([f"{rewritten.title}. {text}"], k=1)[0][0]
    assert found[0] == rewritten.item_id and found[1] == pytest.approx(1.0, abs=1e-4)
    old = DenseIndex.load(live.dense_uri).search([f"{rewritten.title}. {text}"], k=1)[0][0]
    assert old[1] < 0.99  # the index before the sync still held the old text
    # Nothing changed since: nothing to do, and a rerun of the sync repeats nothing.
    assert jobs.plan_refresh(p, r, "s-again").action == "none"
    assert jobs.sync_retriever(p, r, "s-text", plan).current == current


def test_new_and_deleted_items_reach_the_dense_index_with_the_sync(world):
    p, r = world.pipeline, world.retriever
    publish(p, "p2", world.items[1:], world.snapshot_uri)  # 10 new items; the first one deleted
    plan = jobs.plan_refresh(p, r, "s2")
    assert plan.action == "sync"
    synced = jobs.sync_retriever(p, r, "s2", plan)
    assert (synced.inserted, synced.removed) == (ADDED, 1)
    index = DenseIndex.load(jobs.current_retriever(p, r).dense_uri)
    assert index.item_ids == sorted(item.item_id for item in world.items[1:])


def test_a_retriever_without_a_dense_index_gets_one_when_the_config_asks(world, tmp_path):
    p = world.pipeline
    without = jobs.parse_retriever_config({**world.retriever.model_dump(), "dense_index": None, "prefix": "plain/"})
    assert without.dense_index is None
    promoted = jobs.refresh_retriever(p, without, "plain-1")
    assert promoted.action == "retrain" and promoted.current.dense_uri is None
    assert jobs.plan_refresh(p, without, "plain-2").action == "none"
    with_dense = jobs.parse_retriever_config({**without.model_dump(), "dense_index": {}})
    plan = jobs.plan_refresh(p, with_dense, "plain-3")
    assert plan.action == "sync" and plan.reason.endswith("but the live retriever has no dense index yet")
    synced = jobs.sync_retriever(p, with_dense, "plain-3", plan)
    assert synced.current.dense_uri == f"{p.base_uri}/plain/runs/plain-3/dense"
    assert Path(synced.current.dense_uri, "dense_index.json").is_file()


def test_dense_index_options_are_validated_with_the_config():
    base = {"train_queries": "t.jsonl", "eval_queries": "e.jsonl"}
    with pytest.raises(ConfigError, match=r"dense_index: .*max_length"):
        jobs.parse_retriever_config({**base, "dense_index": {"max_length": 1}})
    assert jobs.parse_retriever_config(base).dense_index is None
