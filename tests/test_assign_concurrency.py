"""Two real ``lmindexer assign`` processes on one ID table at the same time, on a local file and on S3 (moto).

Each process reads the table, spends seconds encoding its own new items with the real encoder, then writes. Their
read-encode-write windows overlap, so without compare-and-swap writes the later writer silently replaces the earlier
one's table and that run's IDs vanish although it reported success.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmindexer.idtable import IdTable
from lmindexer.jobs import assign_ids, fit_snapshot

pytestmark = pytest.mark.slow
NEW_ITEMS = 60  # per process: enough encoding work that the two processes' windows overlap


@pytest.fixture(scope="module")
def snapshot(wiki_sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("snap") / "rq"
    fit_snapshot(wiki_sample_path, out, method="rq-kmeans", config={"codebook_size": 8, "levels": 2}, progress=False)
    return out


@pytest.fixture(scope="module")
def catalogues(wiki_dir, wiki_sample_path, tmp_path_factory):
    """A base catalogue, and two disjoint catalogues of items neither the base nor the embedding cache has seen."""
    sample = set(wiki_sample_path.read_text().splitlines())
    unseen = [line for line in (wiki_dir / "items.jsonl").read_text().splitlines() if line not in sample]
    folder = tmp_path_factory.mktemp("catalogues")
    paths = {}
    for name, lines in {
        "base": wiki_sample_path.read_text().splitlines()[:50],
        "a": unseen[1000 : 1000 + NEW_ITEMS],
        "b": unseen[3000 : 3000 + NEW_ITEMS],
    }.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def item_ids(path: Path) -> set[str]:
    return {json.loads(line)["item_id"] for line in path.read_text().splitlines()}


def start_assign(snapshot: Path, catalogue: Path, ids: str, report: Path, cache: Path) -> subprocess.Popen:
    # A fresh embedding cache: every item really goes through the encoder, which holds the window open.
    env = {**os.environ, "LMINDEXER_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmindexer.cli", "assign", "--snapshot", str(snapshot), "--catalog",
               str(catalogue), "--ids", ids, "--json", str(report), "--quiet"]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_concurrent_assign_processes_keep_both_runs_ids(where, snapshot, catalogues, tmp_path, request):
    if where == "local":
        ids = str(tmp_path / "ids.parquet")
    else:
        ids = f"s3://{request.getfixturevalue('s3_bucket')}/ids/ids.parquet"
    assign_ids(snapshot, catalogues["base"], ids, progress=False)
    base_rows = IdTable.read(ids).table.to_pylist()

    reports = {name: tmp_path / f"{name}.json" for name in ("a", "b")}
    processes = {
        name: start_assign(snapshot, catalogues[name], ids, reports[name], tmp_path / f"cache-{name}")
        for name in ("a", "b")
    }
    for name, process in processes.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"assign {name} failed: {err[-2000:]}"

    final = IdTable.read(ids)
    # every item of both runs has an ID, and no earlier ID moved
    assert set(final.item_ids) == item_ids(catalogues["base"]) | item_ids(catalogues["a"]) | item_ids(catalogues["b"])
    assert final.table.slice(0, len(base_rows)).to_pylist() == base_rows
    assert len(set(final.sid_map().values())) == len(final)
    for name in ("a", "b"):
        report = json.loads(reports[name].read_text())
        assert report["written"] and report["allocation"]["newly_assigned"] == NEW_ITEMS
        # what each run reported is still true of the stored table
        assert report["rows_after"] <= len(final)
    if where == "local":
        assert pq.ParquetFile(ids).metadata.num_rows == len(final)
