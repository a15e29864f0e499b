"""fit -> assign -> evaluate as the CLI and the pipeline run them, on real text."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lmindexer.errors import ConfigError, IdTableError, UserError
from lmindexer.idtable import IdTable
from lmindexer.jobs import assign_ids, evaluate_ids, fit_snapshot, load_config_file

TINY = {"codebook_size": 8}


@pytest.fixture(scope="module")
def snapshot(wiki_sample_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("snap") / "hk"
    fit_snapshot(wiki_sample_path, out, method="hkmeans", config=TINY, progress=False)
    return out


def lines(path):
    return path.read_text().splitlines()


def test_fit_records_what_it_read(snapshot, wiki_sample_path):
    document = json.loads((snapshot / "snapshot.json").read_text())
    assert document["manifest"]["catalog_read"]["accepted"] == len(lines(wiki_sample_path))
    assert document["config"]["codebook_size"] == [8, 8, 8]


def test_assign_then_incremental_assign(snapshot, wiki_sample_path, tmp_path):
    rows = lines(wiki_sample_path)
    first = tmp_path / "first.jsonl"
    first.write_text("\n".join(rows[:200]) + "\n")
    ids = tmp_path / "ids.parquet"
    result = assign_ids(snapshot, first, ids, progress=False)
    assert result.allocation.newly_assigned == 200
    assert result.rows_after == 200
    before = pq.read_table(ids)

    # the second drop: 100 new items, one changed item, one tombstone, one malformed row
    changed = json.loads(rows[0]) | {"text": "Completely different text now."}
    tombstone = {"item_id": json.loads(rows[1])["item_id"], "deleted": True}
    second = tmp_path / "second.jsonl"
    second.write_text(
        "\n".join([json.dumps(changed), json.dumps(tombstone), *rows[2:], '{"item_id": "broken",']) + "\n"
    )
    rejected = []
    result = assign_ids(snapshot, second, ids, progress=False, on_reject=rejected.append)
    assert result.allocation.newly_assigned == len(rows) - 200
    assert result.allocation.text_changed == 1
    assert result.tombstones == 1
    assert result.read.rejected == 1 and rejected[0][0].rule == "malformed_json"
    assert result.read.rows_in == result.read.accepted + result.read.rejected
    after = pq.read_table(ids)
    assert after.slice(0, 200).to_pylist() == before.to_pylist()  # existing rows untouched
    table = IdTable.read(ids)
    assert len(table) == len(rows)
    assert len(set(table.sid_map().values())) == len(rows)  # unique IDs

    # a rerun of the same drop changes nothing, not even the file
    mtime = ids.stat().st_mtime_ns
    again = assign_ids(snapshot, second, ids, progress=False)
    assert again.allocation.newly_assigned == 0 and not again.written
    assert ids.stat().st_mtime_ns == mtime


def test_full_assign_matches_codes_of_the_snapshot(snapshot, wiki_sample_path, wiki_items, tmp_path):
    from lmindexer.indexers import load_snapshot

    ids = tmp_path / "ids.parquet"
    assign_ids(snapshot, wiki_sample_path, ids, progress=False)
    table = IdTable.read(ids)
    codes = load_snapshot(snapshot).codes(wiki_items)
    stored = dict(zip(table.item_ids, table.codes_list(), strict=True))
    assert all(stored[item.item_id] == tuple(row) for item, row in zip(wiki_items, codes.tolist(), strict=True))


def test_ids_from_another_snapshot_are_refused(snapshot, wiki_sample_path, tmp_path):
    ids = tmp_path / "ids.parquet"
    assign_ids(snapshot, wiki_sample_path, ids, progress=False)
    other = tmp_path / "other"
    fit_snapshot(wiki_sample_path, other, method="rq-kmeans", config=TINY, progress=False)
    with pytest.raises(IdTableError, match="new ID space"):
        assign_ids(other, wiki_sample_path, ids, progress=False)


def test_evaluate_with_label_and_previous(snapshot, wiki_sample_path, tmp_path):
    ids = tmp_path / "ids.parquet"
    assign_ids(snapshot, wiki_sample_path, ids, progress=False)
    evaluation = evaluate_ids(ids, catalog=wiki_sample_path, label="category", previous=ids)
    report = evaluation.report
    assert report.items == len(lines(wiki_sample_path))
    assert report.labelled_items == report.items
    assert [row["level"] for row in report.agreement] == [1, 2, 3]
    # hierarchical clusters of real text carry topic information
    assert report.agreement[0]["ami"] > 0.1
    assert report.stability["stability"] == 1.0
    with pytest.raises(UserError, match="has a value for 'colour'"):
        evaluate_ids(ids, catalog=wiki_sample_path, label="colour")
    with pytest.raises(ConfigError, match="needs the catalogue"):
        evaluate_ids(ids, label="category")
    with pytest.raises(IdTableError, match="not found"):
        evaluate_ids(tmp_path / "missing.parquet")


def test_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: rqvae\nepochs: 3\n")
    assert load_config_file(path) == {"method": "rqvae", "epochs": 3}
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(path)
    path.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")


def _mostly_rejected(path, wiki_sample_path):
    valid = lines(wiki_sample_path)[:2]
    broken = [f'{{"item_id": "cut-{n}", "title": ' for n in range(40)]
    empty = [json.dumps({"item_id": f"empty-{n}", "text": ""}) for n in range(10)]
    path.write_text("\n".join(valid + broken + empty) + "\n")
    return path


def test_a_fit_with_too_few_items_after_rejections_points_at_the_rejections(wiki_sample_path, tmp_path):
    catalogue = _mostly_rejected(tmp_path / "mostly-bad.jsonl", wiki_sample_path)
    with pytest.raises(ConfigError) as refused:
        fit_snapshot(catalogue, tmp_path / "snap", method="rq-kmeans", progress=False)
    message = str(refused.value)
    assert message.startswith("fitting needs at least 32 items")
    assert f"50 of 52 rows of {catalogue} were rejected (malformed_json: 40, empty_text: 10; e.g. " in message
    assert f"`lmindexer validate --catalog {catalogue} --rejects FILE`" in message

    with pytest.raises(ConfigError, match=r"every rejected row and its reason is in rejected\.jsonl$"):
        fit_snapshot(catalogue, tmp_path / "snap", progress=False, rejects_location="rejected.jsonl")


def test_a_fit_with_too_few_items_and_no_rejections_says_only_that(wiki_sample_path, tmp_path):
    catalogue = tmp_path / "small.jsonl"
    catalogue.write_text("\n".join(lines(wiki_sample_path)[:2]) + "\n")
    with pytest.raises(ConfigError) as refused:
        fit_snapshot(catalogue, tmp_path / "snap", method="rq-kmeans", progress=False)
    assert "rejected" not in str(refused.value)
