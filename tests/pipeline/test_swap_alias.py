"""swap_alias: a full publish's new index goes live only in the step of its own, and never for a stale run.

Each case runs the pipeline in a process that SIGKILLs itself right after ``publish`` is recorded (the new index
loaded and verified, the alias not yet moved), looks at the engine, then completes or races the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from testsupport.search_server import running_search_server

from lmindexer.pipeline import PipelineConfig
from lmindexer.pipeline.records import current
from lmindexer.pipeline.runner import run_pipeline
from lmindexer.pipeline.steps import StaleRun
from lmindexer.search import SearchBackend, SearchConfig
from lmindexer.storage.s3 import s3_client

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search_url(tmp_path_factory):
    with running_search_server(tmp_path_factory.mktemp("osmem") / "server.log") as server:
        yield server.url


def land(bucket: str, key: str, items) -> None:
    body = "\n".join(json.dumps(item.to_dict()) for item in items) + "\n"
    s3_client().put_object(Bucket=bucket, Key=key, Body=body.encode())


def run_until_published(config: PipelineConfig, search: dict, run_id: str, mode: str = "auto") -> None:
    """Run ``run_id`` in a process of its own that dies as soon as its publish step is recorded."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "testsupport.crashing_run", config.model_dump_json(), json.dumps(search), run_id,
               "after-record:publish", mode]  # fmt: skip
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]


@pytest.fixture
def world(s3_bucket, search_url):
    config = PipelineConfig(base_uri=f"s3://{s3_bucket}", indexer={"codebook_size": 4, "levels": 2}, shard_size=100,
                            max_invalid_share=0.2, label="category")  # fmt: skip
    return config, {"hosts": [search_url], "alias": f"k{uuid.uuid4().hex[:8]}"}, s3_bucket


def test_a_new_index_goes_live_only_at_the_swap(world, wiki_items):
    config, search, bucket = world
    land(bucket, "incoming/first.jsonl", wiki_items[:40])
    run_until_published(config, search, "first")
    with SearchBackend(SearchConfig(**search)) as backend:
        assert backend.live_index() is None  # loaded and verified, but readers see nothing new yet
        [built] = backend.list_indexes()
        assert (built.verified, built.live, built.doc_count) == (True, False, 40)
    done = run_pipeline(config, search, "first")  # the rerun: publish is remembered, the swap runs
    swap = done["swap_alias"]
    assert (swap.swapped, swap.index, swap.previous_index) == (True, built.name, None)
    with SearchBackend(SearchConfig(**search)) as backend:
        assert backend.live_index() == built.name and backend.count() == 40
    assert current(config)["index"] == built.name


def test_a_run_gone_stale_after_publishing_never_swaps(world, wiki_items):
    config, search, bucket = world
    land(bucket, "incoming/first.jsonl", wiki_items[:40])
    first = run_pipeline(config, search, "first")["swap_alias"].index
    land(bucket, "incoming/second.jsonl", wiki_items[40:48])
    run_until_published(config, search, "slow", mode="retrain")  # a new index for a retrain, not yet live
    run_pipeline(config, search, "quick")  # another run commits the same drop meanwhile (incremental)
    with pytest.raises(StaleRun):
        run_pipeline(config, search, "slow", mode="retrain")
    with SearchBackend(SearchConfig(**search)) as backend:
        assert backend.live_index() == first  # the quick run's changes went through it
        assert backend.count() == 48
    assert current(config)["run_id"] == "quick"
