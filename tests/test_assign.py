"""One way items get IDs: the CLI's assignment in one process and the pipeline's sharded coding plus one
allocation give every item the same ID."""

from __future__ import annotations

from testsupport.retriever_state import fit_snapshot

from lmindexer.assign import code_items, read_candidates, write_candidates
from lmindexer.catalog.store import write_catalog
from lmindexer.idtable import IdTable
from lmindexer.indexers import load_snapshot, read_id_space
from lmindexer.jobs import assign_ids
from lmindexer.pipeline import PipelineConfig, steps
from lmindexer.pipeline.results import Shard, Snapshot


def test_one_process_and_sharded_assignment_give_every_item_the_same_id(s3_bucket, wiki_items, tmp_path):
    config = PipelineConfig(base_uri=f"s3://{s3_bucket}")
    # Fewer codes than items share a prefix, so suffixes are handed out and their order matters.
    items = wiki_items[:90]
    snapshot_uri = fit_snapshot(config, items, tmp_path)
    catalog = str(tmp_path / "catalog.parquet")
    write_catalog(items, catalog)

    one_process = str(tmp_path / "ids.parquet")
    assign_ids(snapshot_uri, catalog, one_process, progress=False)

    snapshot = Snapshot(trained=False, snapshot_uri=snapshot_uri,
                        snapshot_version=read_id_space(snapshot_uri).snapshot_version)  # fmt: skip
    bounds = [(0, 25), (25, 60), (60, 90)]
    shards = [Shard(shard=n, start=a, end=b, todo_uri=catalog, shards=3) for n, (a, b) in enumerate(bounds)]
    coded = [steps.assign_shard(config, "r1", snapshot, shard) for shard in shards]
    reduced = steps.reduce_ids(config, "r1", snapshot, coded)

    expected = IdTable.read(one_process).sid_map()
    assert len(expected) == 90 and max(IdTable.read(one_process).table.column("suffix").to_pylist()) > 0
    assert IdTable.read(reduced.ids_uri).sid_map() == expected


def test_coded_items_survive_their_hand_over(wiki_items, tmp_path, s3_bucket):
    config = PipelineConfig(base_uri=f"s3://{s3_bucket}")
    snapshot = load_snapshot(fit_snapshot(config, wiki_items[:40], tmp_path))
    candidates = code_items(snapshot, wiki_items[:12])
    assert [c.item_id for c in candidates] == [i.item_id for i in wiki_items[:12]]
    assert all(c.preferences[0] == c.codes[-1] for c in candidates)  # the item's own last code comes first
    location = str(tmp_path / "codes.parquet")
    write_candidates(candidates, location)
    assert read_candidates(location) == candidates
    assert code_items(snapshot, []) == []
