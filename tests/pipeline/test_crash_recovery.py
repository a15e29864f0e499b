"""kill -9 of a pipeline run at every step, then a rerun of the same run: nothing lost, nothing done twice.

Each case starts from a live version (snapshot, ID table, catalogue, published index), lands one drop (new,
changed and deleted items, one malformed row), runs the run in a process of its own that SIGKILLs itself at the
chosen point, reruns the same run id to completion, and checks the result against what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from testsupport.retriever_state import move_current
from testsupport.retriever_state import publish as publish_live_version
from testsupport.search_server import running_search_server

from lmindexer.idtable import IdTable
from lmindexer.indexers import create_indexer
from lmindexer.pipeline import PipelineConfig
from lmindexer.pipeline.records import current
from lmindexer.pipeline.runner import run_pipeline
from lmindexer.search import SearchBackend, SearchConfig, iter_documents
from lmindexer.storage.s3 import s3_client, upload_file
from lmindexer.storage.state import ProcessingState

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]
BASE, NEW = 60, 12
STEPS = [
    "discover", "validate", "merge", "decide", "train", "plan", "assign-00000", "reduce", "check", "publish", "swap",
]  # fmt: skip


@pytest.fixture(scope="module")
def search_url(tmp_path_factory):
    with running_search_server(tmp_path_factory.mktemp("osmem") / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def snapshot_dir(wiki_items, tmp_path_factory):
    indexer = create_indexer("rq-kmeans", {"codebook_size": 4, "levels": 2})
    indexer.fit(wiki_items[: BASE + NEW], progress=False)
    out = tmp_path_factory.mktemp("snapshot") / "rq"
    indexer.save(out)
    return out


def live_world(bucket: str, alias: str, search_url: str, snapshot_dir: Path, items, tmp_path: Path):
    """A store with a committed version of ``items`` and its index live behind ``alias``."""
    config = PipelineConfig(base_uri=f"s3://{bucket}", indexer={"codebook_size": 4, "levels": 2}, shard_size=100,
                            max_invalid_share=0.2, label="category")  # fmt: skip
    snapshot_uri = config.uri(config.models_prefix, "base")
    for path in sorted(snapshot_dir.rglob("*")):
        if path.is_file():
            upload_file(path, f"{snapshot_uri}/{path.relative_to(snapshot_dir).as_posix()}")
    pointer = publish_live_version(config, "r0", items, snapshot_uri)
    move_current(config, {**pointer, "items_at_retrain": len(items), "added_since_retrain": 0})
    search = {"hosts": [search_url], "alias": alias}
    with SearchBackend(SearchConfig(**search)) as backend:
        table = IdTable.read(pointer["ids_uri"])
        result = backend.publish_full(iter_documents(items, table), table.space.snapshot_version, "r0")
    return config, search, result.index


def test_an_uninterrupted_run_reference(search_url, snapshot_dir, wiki_items, tmp_path, s3_bucket):
    """The run the crash cases are compared with (and a check that the world and drop are what they claim)."""
    outcome = land_and_run(s3_bucket, search_url, snapshot_dir, wiki_items, tmp_path, point=None)
    check_outcome(outcome)


@pytest.mark.parametrize("point", [*(f"before-record:{s}" for s in STEPS), "commit:pointer-moved"])
def test_a_run_killed_at_any_step_completes_on_rerun_with_nothing_lost(
    point, search_url, snapshot_dir, wiki_items, tmp_path, s3_bucket
):
    outcome = land_and_run(s3_bucket, search_url, snapshot_dir, wiki_items, tmp_path, point=point)
    check_outcome(outcome)


def land_and_run(bucket, search_url, snapshot_dir, wiki_items, tmp_path, point):
    alias = f"k{uuid.uuid4().hex[:8]}"
    base = wiki_items[:BASE]
    config, search, first_index = live_world(bucket, alias, search_url, snapshot_dir, base, tmp_path)
    before = IdTable.read(current(config)["ids_uri"]).table.to_pylist()
    new = wiki_items[BASE : BASE + NEW]
    changed = {**base[0].to_dict(), "text": "Rewritten after the first version."}
    deleted = {"item_id": base[1].item_id, "deleted": True}
    lines = [json.dumps(changed), json.dumps(deleted), *(json.dumps(i.to_dict()) for i in new), '{"item_id": "x",']
    s3_client().put_object(Bucket=bucket, Key="incoming/drop.jsonl", Body=("\n".join(lines) + "\n").encode())

    run_id = "crash-run"
    if point is not None:
        env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "testsupport.crashing_run", config.model_dump_json(), json.dumps(search),
                   run_id, point]  # fmt: skip
        killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert killed.returncode == -9, killed.stderr[-3000:]
    done = run_pipeline(config, search, run_id)  # the rerun of the same run
    return {"config": config, "search": search, "before": before, "done": done, "new": new, "changed": changed,
            "deleted": deleted["item_id"], "first_index": first_index}  # fmt: skip


def check_outcome(o):
    config = o["config"]
    live = current(config)
    assert live["run_id"] == "crash-run"
    assert (live["items"], live["added_since_retrain"]) == (BASE + NEW - 1, NEW)  # new counted once
    table = IdTable.read(live["ids_uri"])
    assert table.table.slice(0, BASE).to_pylist() == o["before"]  # no earlier ID moved
    assert len(table) == BASE + NEW and len(set(table.sid_map().values())) == BASE + NEW
    assert {i.item_id for i in o["new"]} <= set(table.item_ids)
    records = ProcessingState(config.base_uri).records
    assert [(r.key, r.run_id, r.status) for r in records] == [("incoming/drop.jsonl", "crash-run", "processed")]
    assert records[0].summary == {"rows_in": NEW + 3, "staged": NEW + 2, "quarantined": 1, "tombstones": 1}
    with SearchBackend(SearchConfig(**o["search"])) as backend:
        assert backend.live_index() == o["first_index"]  # an incremental run, through the same index
        assert backend.count() == BASE + NEW - 1
        assert backend.get(o["deleted"]) is None
        assert backend.get(o["changed"]["item_id"])["text"] == o["changed"]["text"]
        sids = table.sid_map()
        for item in o["new"]:
            assert backend.get(item.item_id)["sid"] == sids[item.item_id]
    # the whole run is done: running it again does nothing more
    assert run_pipeline(config, o["search"], "crash-run")["commit"].run_id == "crash-run"
