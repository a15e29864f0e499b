"""The pipeline's decisions and records, without Airflow (the DAG tests run the whole thing)."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from testsupport.retriever_state import move_current
from testsupport.step_results import APPLY, RETRAIN, SNAPSHOT, merged, pointer, published, quality, reduced

from lmindexer.errors import ConfigError, UserError
from lmindexer.options import parse_config
from lmindexer.pipeline import PipelineConfig, records, safe_run_id, steps
from lmindexer.pipeline.records import current, remembered
from lmindexer.pipeline.results import Checked, LiveVersion, Shard, Snapshot
from lmindexer.storage.s3 import StorageError
from lmindexer.storage.state import ProcessingState


@pytest.fixture
def config(s3_bucket) -> PipelineConfig:
    return PipelineConfig(base_uri=f"s3://{s3_bucket}", retrain_added_share=0.25)


def test_config_validation():
    config = parse_config(PipelineConfig, {"base_uri": "s3://b", "staged_prefix": "/tmp-staged/"})
    assert config.staged_prefix == "tmp-staged/"
    assert config.uri(config.ids_prefix, "v1", "ids.parquet") == "s3://b/ids/v1/ids.parquet"
    with pytest.raises(ConfigError, match="unknown indexer method 'nope'"):
        parse_config(PipelineConfig, {"base_uri": "s3://b", "method": "nope"})
    with pytest.raises(ConfigError, match="max_invalid_share"):
        parse_config(PipelineConfig, {"base_uri": "s3://b", "max_invalid_share": 2})
    with pytest.raises(ConfigError, match="base_uri"):
        parse_config(PipelineConfig, {})


def test_a_new_id_space_is_stored_as_parts_and_one_that_began_as_one_file_stays_one_file(config):
    """A run writes its own rows to a new ID space's table (parts under a manifest); an ID space whose table is
    one Parquet file keeps that file, so no row of it moves and every earlier ID stays where readers find it."""
    from lmindexer.idtable import IdSpace, IdTable, is_parted

    assert steps.ids_uri(config, "v1") == config.uri(config.ids_prefix, "v1", "ids.json")
    assert is_parted(steps.ids_uri(config, "v1"))
    single_file = config.uri(config.ids_prefix, "v2", "ids.parquet")
    IdTable.empty(IdSpace("v2", "rq-kmeans", (4, 4))).write(single_file)
    assert steps.ids_uri(config, "v2") == single_file


def test_run_ids_become_safe_keys():
    assert safe_run_id("manual__2026-11-28T16:32:15.564518+00:00") == "manual__2026-11-28t16-32-15.564518-00-00"
    with pytest.raises(ValueError, match="no usable characters"):
        safe_run_id("::")


def test_steps_remember_their_result(config):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert remembered(config, "run-1", "step", compute) == {"value": 1}
    assert remembered(config, "run-1", "step", compute) == {"value": 1}
    assert remembered(config, "run-2", "step", compute) == {"value": 2}
    assert len(calls) == 2


def test_decide(config):
    assert steps.decide(config, "r1", merged(config, new=20)).mode == "retrain"  # no snapshot yet
    with pytest.raises(UserError, match="needs a snapshot"):
        steps.decide(config, "r2", merged(config, new=20), "apply")
    move_current(config, pointer(items_at_retrain=100, added_since_retrain=10))
    assert steps.decide(config, "r3", merged(config, new=20)).mode == "retrain"  # 30 of 100 > 25%
    assert steps.decide(config, "r4", merged(config, new=5)).mode == "apply"  # 15 of 100
    assert steps.decide(config, "r5", merged(config, new=50), "apply").mode == "apply"  # forced
    assert steps.decide(config, "r6", merged(config, new=0), "retrain").reason == "retrain requested"
    # a retried task gets the stored decision, even if the world changed meanwhile
    move_current(config, pointer(items_at_retrain=1, added_since_retrain=1000))
    assert steps.decide(config, "r4", merged(config, new=5)).mode == "apply"


def test_train_command_is_accelerate_launch(config, tmp_path):
    command = steps.train_command(config, tmp_path / "c.parquet", tmp_path / "out", tmp_path / "o.yaml")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "1"
    assert "--multi_gpu" not in command
    assert command[command.index("-m", 3) + 1 : command.index("-m", 3) + 3] == ["lmindexer.cli", "fit"]
    many = config.model_copy(update={"train_processes": 2, "mixed_precision": "bf16"})
    command = steps.train_command(many, tmp_path / "c.parquet", tmp_path / "out", tmp_path / "o.yaml")
    assert "--multi_gpu" in command and command[command.index("--mixed_precision") + 1] == "bf16"


def test_commit_moves_the_pointer_once(config):
    checked = Checked(passed=True, metrics=quality(), stability=None)
    move_current(config, pointer(items_at_retrain=100, added_since_retrain=10))
    onto_r0 = merged(config, catalog_uri="c2", items=120, new=20)
    live = steps.commit(config, "r1", [], onto_r0, APPLY, SNAPSHOT, reduced(rows_after=120), checked, published())
    assert (live.items_at_retrain, live.added_since_retrain) == (100, 30)
    assert current(config)["run_id"] == "r1"
    assert LiveVersion.from_xcom(current(config)) == live  # what is stored is what the step returned
    onto_r1 = merged(config, catalog_uri="c2", items=120, new=20)
    retrained = steps.commit(config, "r2", [], onto_r1, RETRAIN, SNAPSHOT, reduced(), checked, published("y"))
    assert (retrained.items_at_retrain, retrained.added_since_retrain) == (120, 0)


def upload_drop(bucket: str, key: str, rows: list[dict]) -> None:
    from lmindexer.storage.s3 import s3_client

    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    s3_client().put_object(Bucket=bucket, Key=key, Body=body)


def rows(prefix: str, n: int) -> list[dict]:
    return [{"item_id": f"{prefix}-{i}", "title": f"{prefix} item {i}", "text": "A real sentence of text."} for i in
            range(n)]  # fmt: skip


def test_a_rerun_works_on_the_drops_its_first_attempt_discovered(config, s3_bucket):
    upload_drop(s3_bucket, "incoming/a.jsonl", rows("a", 5))
    first = steps.discover(config, "r1")
    assert [d.key for d in first] == ["incoming/a.jsonl"]
    validated = steps.validate_drops(config, "r1", first)

    # a drop lands, then the whole run is rerun (e.g. cleared in the UI): it still works on what it first found
    upload_drop(s3_bucket, "incoming/b.jsonl", rows("b", 5))
    again = steps.discover(config, "r1")
    assert again == first
    assert steps.validate_drops(config, "r1", again) == validated
    with pytest.raises(UserError, match="other drops than it discovered"):
        steps.validate_drops(config, "r1", [*again, dataclasses.replace(again[0], key="incoming/b.jsonl")])
    assert steps.mark_processed(config, "r1", validated) == ["incoming/a.jsonl"]

    # so the new drop is never marked processed without being ingested: the next run takes it
    state = ProcessingState(config.base_uri)
    assert [r.key for r in state.records] == ["incoming/a.jsonl"]
    assert [d.key for d in steps.discover(config, "r2")] == ["incoming/b.jsonl"]


def test_a_merge_stores_its_drops_rows_as_a_part_and_compacts_after_the_configured_parts(config, s3_bucket):
    """An incremental run's catalogue version is the live version's parts plus the run's own (what its drops
    changed), so what a run stores follows its drops, not the catalogue; the run that would pass
    ``catalog_max_parts`` stores one compacted part; every version reads back as the whole catalogue."""
    from lmindexer.catalog import Item
    from lmindexer.catalog.store import load_catalog_version, read_catalog, write_catalog
    from lmindexer.storage.s3 import list_objects

    base = [Item(f"base-{n:03d}", title=f"base {n}", text="A real sentence of text.") for n in range(200)]
    write_catalog(base, config.uri("catalog", "r0", "items.parquet"))  # a version stored before manifests
    move_current(config, pointer(catalog_uri=config.uri("catalog", "r0", "items.parquet"), items=200))
    config = config.model_copy(update={"catalog_max_parts": 3})

    def run(run_id: str, drop_rows: list[dict]):
        upload_drop(s3_bucket, f"incoming/{run_id}.jsonl", drop_rows)
        done = steps.merge(config, run_id, steps.validate_drops(config, run_id, steps.discover(config, run_id)))
        steps.mark_processed(config, run_id, steps.validate_drops(config, run_id, steps.discover(config, run_id)))
        move_current(config, pointer(run_id, catalog_uri=done.catalog_uri, items=done.items))
        return done

    first = run("r1", [*rows("a", 3), {"item_id": "base-007", "deleted": True}])
    assert first.catalog_uri == config.uri("catalog", "r1", "version.json")
    stored = {info.key: info.size for info in list_objects(config.uri("catalog", "r1"))}
    assert sorted(stored) == ["catalog/r1/part.parquet", "catalog/r1/removed.parquet", "catalog/r1/version.json"]
    version = load_catalog_version(first.catalog_uri)
    assert [part.row_count for part in version.parts] == [200, 3] and version.parts[1].removed_count == 1
    catalogue = read_catalog(first.catalog_uri)
    assert (first.items, len(catalogue), "base-007" in catalogue, "a-2" in catalogue) == (202, 202, False, True)

    second = run("r2", rows("b", 2))
    assert len(load_catalog_version(second.catalog_uri).parts) == 3
    third = run("r3", rows("c", 1))
    assert [part.rows for part in load_catalog_version(third.catalog_uri).parts] == [
        config.uri("catalog", "r3", "items.parquet")
    ]
    assert sorted(read_catalog(third.catalog_uri)) == sorted(
        [item.item_id for item in base if item.item_id != "base-007"] + ["a-0", "a-1", "a-2", "b-0", "b-1", "c-0"]
    )


def test_an_unreadable_drop_is_quarantined_whole_and_the_others_go_on(config, s3_bucket):
    from lmindexer.storage.s3 import s3_client

    upload_drop(s3_bucket, "incoming/1-good.jsonl", rows("g", 4))
    s3_client().put_object(Bucket=s3_bucket, Key="incoming/2-broken.parquet", Body=b"not parquet at all")
    drops = steps.discover(config, "r1")
    validated = steps.validate_drops(config, "r1", drops)
    by_key = {v.drop.key: v for v in validated}
    assert by_key["incoming/1-good.jsonl"].accepted and by_key["incoming/1-good.jsonl"].staged == 4
    broken = by_key["incoming/2-broken.parquet"]
    assert not broken.accepted and "not a readable Parquet file" in broken.reason
    summary = json.loads(s3_client().get_object(Bucket=s3_bucket, Key=broken.summary_uri.split("/", 3)[3])
                         ["Body"].read())  # fmt: skip
    assert "not a readable Parquet file" in summary["reason"]

    assert steps.merge(config, "r1", validated).new == 4  # the good drop went on
    steps.mark_processed(config, "r1", validated)
    records = {r.key: r for r in ProcessingState(config.base_uri).records}
    assert records["incoming/1-good.jsonl"].status == "processed"
    assert records["incoming/2-broken.parquet"].status == "rejected"
    assert "Parquet" in records["incoming/2-broken.parquet"].reason
    assert steps.discover(config, "r2") == []  # neither blocks the next run
    with pytest.raises(steps.DropsRejected, match="1 of 2 drops were quarantined whole"):
        steps.confirm_drops(validated)


def test_a_drop_over_the_invalid_share_is_rejected_whole_without_blocking_the_others(config, s3_bucket):
    upload_drop(s3_bucket, "incoming/1-good.jsonl", rows("g", 4))
    upload_drop(s3_bucket, "incoming/2-bad.jsonl", rows("h", 2) + [{"item_id": ""}] * 3)
    validated = steps.validate_drops(config, "r1", steps.discover(config, "r1"))
    assert [v.accepted for v in validated] == [True, False]
    bad = validated[1]
    # the counts still describe every row; none of it is staged for ingestion
    assert (bad.rows_in, bad.quarantined, bad.staged, bad.staged_uri) == (5, 3, 2, None)
    assert "more than the 5.0% allowed" in bad.reason
    assert steps.merge(config, "r1", validated).items == 4  # none of the rejected drop's rows went in


def committed(config, run_id, onto):
    checked = Checked(passed=True, metrics=quality(), stability=None)
    return steps.commit(config, run_id, [], onto, APPLY, SNAPSHOT, reduced(), checked, published())


def test_a_run_overtaken_by_another_commit_can_neither_decide_publish_nor_commit(config, s3_bucket):
    move_current(config, pointer(items_at_retrain=100, added_since_retrain=0))
    # two runs merged the same new drop onto the same live version
    late = merged(config, catalog_uri="c-late", items=110, new=10)
    early = dataclasses.replace(late, catalog_uri="c-early")
    committed(config, "early", early)
    assert current(config)["added_since_retrain"] == 10

    with pytest.raises(steps.StaleRun, match="run early has committed since"):
        steps.decide(config, "late", late)
    with pytest.raises(steps.StaleRun):
        steps.publish(config, {"hosts": ["http://127.0.0.1:9"], "alias": "a"}, "late", late, APPLY, reduced())
    with pytest.raises(steps.StaleRun):
        committed(config, "late", late)
    # the ten new items are counted once, and the pointer is the early run's
    assert (current(config)["run_id"], current(config)["added_since_retrain"]) == ("early", 10)
    # a retry of the run that did commit is a no-op
    assert committed(config, "early", early).run_id == "early"


def test_two_commits_racing_on_the_pointer_let_exactly_one_through(config, monkeypatch):
    move_current(config, pointer(items_at_retrain=100, added_since_retrain=0))
    onto_r0 = merged(config, items=110, new=10)
    real = records.current_versioned

    def read_then_lose_the_race(cfg):
        # the other run's commit lands between this run's staleness check and its write
        pointer, version = real(cfg)
        if pointer["run_id"] == "r0":
            monkeypatch.setattr(records, "current_versioned", real)
            monkeypatch.setattr(steps, "current_versioned", real)
            committed(config, "other", onto_r0)
        return pointer, version

    monkeypatch.setattr(steps, "current_versioned", read_then_lose_the_race)
    with pytest.raises(steps.StaleRun, match="another run committed at the same moment"):
        committed(config, "mine", onto_r0)
    assert (current(config)["run_id"], current(config)["added_since_retrain"]) == ("other", 10)


def test_a_damaged_record_is_refused_not_trusted(config, s3_bucket):
    from lmindexer.storage.s3 import s3_client

    remembered(config, "r1", "decide", lambda: {"mode": "apply", "added_share": 0.1})
    key = "state/runs/r1/decide.json"
    client = s3_client()
    body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read().decode()
    client.put_object(Bucket=s3_bucket, Key=key, Body=body.replace('"apply"', '"retrain"').encode())
    with pytest.raises(StorageError, match="does not match its checksum"):
        remembered(config, "r1", "decide", lambda: {"mode": "never computed"})
    client.put_object(Bucket=s3_bucket, Key=key, Body=body[: len(body) // 2].encode())
    with pytest.raises(StorageError, match="is not valid JSON"):
        remembered(config, "r1", "decide", lambda: {"mode": "never computed"})


class _ThreadRecordingIndexer:
    """Stands in for a loaded snapshot: codes every item 0 and records torch's threads while it codes."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def texts(self, items):
        return [item.text for item in items]

    def codes_and_preferences(self, texts):
        import numpy as np
        import torch

        self.threads.append(torch.get_num_threads())
        return np.zeros((len(texts), 2), dtype=np.int64), np.zeros((len(texts), 1), dtype=np.int64)


@pytest.mark.parametrize(("tasks_at_once", "shards", "expected"), [(4, 4, 2), (4, 1, 8), (1, 4, 8)])
def test_an_assign_shard_codes_on_its_share_of_the_cores(tmp_path, monkeypatch, tasks_at_once, shards, expected):
    import torch

    from lmindexer.catalog import Item
    from lmindexer.catalog.store import write_catalog
    from lmindexer.threads import THREADS_ENV

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    indexer = _ThreadRecordingIndexer()
    monkeypatch.setattr("lmindexer.indexers.load_snapshot", lambda uri: indexer)
    config = PipelineConfig(base_uri=str(tmp_path / "store"))
    todo = str(tmp_path / "todo.parquet")
    write_catalog([Item(item_id=f"i{n}", text=f"item {n}") for n in range(3)], todo)
    shard = Shard(shard=0, start=0, end=3, todo_uri=todo, shards=shards)
    before = torch.get_num_threads()

    result = steps.assign_shard(config, "run-1", SNAPSHOT, shard, tasks_at_once=tasks_at_once)

    assert result.items == 3
    assert indexer.threads == [expected]
    assert torch.get_num_threads() == before  # the process's setting is given back


def test_the_check_of_an_incremental_run_runs_the_id_suite_on_the_rows_added_since_the_commit(
    config, wiki_items, tmp_path
):
    """Rows the live version committed passed the suite when they were added (and every read verifies their
    structure); an incremental run's check runs the suite on its own rows, yet still finds every live item's row in
    the whole table, and fails on a live item that has none."""
    from testsupport.retriever_state import fit_snapshot, publish

    from lmindexer.catalog.store import write_catalog
    from lmindexer.jobs import assign_ids

    base, new = wiki_items[:40], wiki_items[40:46]
    snapshot_uri = fit_snapshot(config, base + new, tmp_path)
    live = publish(config, "r0", base, snapshot_uri)
    move_current(config, {**live, "ids_rows": len(base)})
    catalog_uri = config.uri(config.catalog_prefix, "r1", "items.parquet")
    write_catalog(base + new, catalog_uri)
    assign_ids(snapshot_uri, catalog_uri, live["ids_uri"], progress=False)
    added = reduced(ids_uri=live["ids_uri"], rows_before=len(base), rows_after=len(base) + len(new))
    checked = steps.check(config, "r1", merged(catalog_uri=catalog_uri), APPLY, SNAPSHOT, added)
    assert checked.passed and checked.id_rows_checked == len(new)
    assert checked.metrics.items == len(base) + len(new)

    lost_uri = config.uri(config.catalog_prefix, "r2", "items.parquet")
    write_catalog([*base, *new, wiki_items[46]], lost_uri)  # a live item that never got an ID
    with pytest.raises(steps.QualityGateFailed, match="ID table checks"):
        steps.check(config, "r2", merged(catalog_uri=lost_uri), APPLY, SNAPSHOT, added)


def test_the_plan_reads_only_the_runs_upserts_while_the_table_holds_every_live_items_id(config, wiki_items, tmp_path):
    """A run merged onto the live version, whose every item had an ID in this table when it was committed: while
    the table holds at least the rows it held then, only the run's upserts can lack an ID, and the plan reads them
    and the table's item_ids, not the catalogue version (so its cost follows the run's items). A table with fewer
    rows than at that commit sends it back to every live item."""
    from testsupport.retriever_state import fit_snapshot, publish

    from lmindexer.catalog.store import items_from_table, read_catalog_table
    from lmindexer.idtable import IdTable
    from lmindexer.storage.s3 import read_bytes, remove, write_bytes
    from lmindexer.storage.versioned import current_version

    base, new = wiki_items[:30], wiki_items[30:34]
    snapshot_uri = fit_snapshot(config, base + new, tmp_path)
    live = {**publish(config, "r0", base, snapshot_uri), "ids_rows": len(base)}  # as commit records it
    move_current(config, live)
    snapshot = Snapshot(trained=False, snapshot_uri=snapshot_uri, snapshot_version=live["snapshot_version"])
    upload_drop(config.base_uri.removeprefix("s3://"), "incoming/new.jsonl", [i.to_dict() for i in new])
    merged_r1 = steps.merge(config, "r1", steps.validate_drops(config, "r1", steps.discover(config, "r1")))

    def planned(run_id: str) -> list:
        shards = steps.plan_shards(config, run_id, merged_r1, snapshot)
        return [item for shard in shards for item in items_from_table(read_catalog_table(shard.todo_uri))]

    # The live catalogue, the oldest part of the run's version, is unreadable: a plan reading it would fail.
    held = read_bytes(live["catalog_uri"])
    remove(live["catalog_uri"])
    assert planned("r1") == sorted(new, key=lambda item: item.item_id)
    write_bytes(held, live["catalog_uri"])

    # The table lost base[3]'s row since the commit (fewer rows than then): every live item is looked up again.
    table = IdTable.read(live["ids_uri"])
    kept = table.table.filter(pc.not_equal(table.table.column("item_id"), base[3].item_id))
    IdTable(kept, table.space).write(live["ids_uri"], replacing=current_version(live["ids_uri"]))
    assert planned("r2") == sorted([*new, base[3]], key=lambda item: item.item_id)


def test_the_plan_takes_the_runs_upserts_and_any_item_an_earlier_run_left_without_an_id(config, wiki_items, tmp_path):
    """Items to encode are read from the run's upserts (a small file) when it holds them all; an item of the
    catalogue that an interrupted earlier run left without an ID is planned too, read from the whole catalogue."""
    from testsupport.retriever_state import fit_snapshot, publish

    from lmindexer.assign import read_candidates
    from lmindexer.catalog.store import items_from_table, read_catalog_table
    from lmindexer.idtable import IdTable
    from lmindexer.storage.parquet import write_parquet
    from lmindexer.storage.versioned import current_version

    base, new = wiki_items[:30], wiki_items[30:34]
    snapshot_uri = fit_snapshot(config, base + new, tmp_path)
    live = publish(config, "r0", base, snapshot_uri)
    snapshot = Snapshot(trained=False, snapshot_uri=snapshot_uri, snapshot_version=live["snapshot_version"])
    upload_drop(config.base_uri.removeprefix("s3://"), "incoming/new.jsonl", [i.to_dict() for i in new])
    validated = steps.validate_drops(config, "r1", steps.discover(config, "r1"))
    merged_r1 = steps.merge(config, "r1", validated)

    def planned(run_id: str) -> list:
        shards = steps.plan_shards(config, run_id, merged_r1, snapshot)
        return [item for shard in shards for item in items_from_table(read_catalog_table(shard.todo_uri))]

    assert planned("r1") == sorted(new, key=lambda item: item.item_id)
    upserts = read_catalog_table(merged_r1.upserts_uri)
    assert sorted(upserts.column("item_id").to_pylist()) == sorted(i.item_id for i in new)

    # An earlier run was interrupted before base[3] got its ID: the plan picks it up from the catalogue.
    table = IdTable.read(live["ids_uri"])
    kept = table.table.filter(pc.not_equal(table.table.column("item_id"), base[3].item_id))
    IdTable(kept, table.space).write(live["ids_uri"], replacing=current_version(live["ids_uri"]))
    assert planned("r2") == sorted([*new, base[3]], key=lambda item: item.item_id)

    # Each shard's file holds exactly its rows, so a shard task reads only what it codes.
    sharded = config.model_copy(update={"shard_size": 2})
    shards = steps.plan_shards(sharded, "r3", merged_r1, snapshot)
    assert [(s.start, s.end) for s in shards] == [(0, 2), (2, 4), (4, 5)]
    assert len({s.todo_uri for s in shards}) == 3
    rows = [read_catalog_table(s.todo_uri).column("item_id").to_pylist() for s in shards]
    assert rows == [[i.item_id for i in planned("r2")][s.start : s.end] for s in shards]
    coded = steps.assign_shard(sharded, "r3", snapshot, shards[1])
    assert [c.item_id for c in read_candidates(coded.codes_uri)] == rows[1]

    # A plan stored by the previous release named one file of all the run's items: a shard still codes its rows.
    whole_uri = config.uri(config.staged_prefix, "r4", "to_assign.parquet")
    write_parquet(pa.concat_tables([read_catalog_table(s.todo_uri) for s in shards]), whole_uri)
    whole = dataclasses.replace(shards[1], todo_uri=whole_uri)
    coded = steps.assign_shard(sharded, "r4", snapshot, whole)
    assert [c.item_id for c in read_candidates(coded.codes_uri)] == rows[1]
