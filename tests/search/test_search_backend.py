"""Publishing against a real OpenSearch-compatible server (osmem-server), through both official clients."""

from __future__ import annotations

import json
import threading

import pytest

from lmindexer.search import PublishError, SearchError, index_name, list_alias_indexes, rollback_alias
from lmindexer.search.documents import template_name


def test_full_publish_goes_live_behind_the_alias(engine, make_backend, docs_factory, alias):
    backend = make_backend(engine)
    docs = docs_factory(120)
    result = backend.publish_full(docs, "rq-kmeans-v1", "run-1")

    assert result.index == index_name(alias, "rq-kmeans-v1", "run-1")
    assert result.index.startswith(f"{alias}-rq-kmeans-v1-")
    assert result.previous_index is None
    assert result.bulk.attempted == result.bulk.indexed == result.doc_count == 120
    assert result.bulk.failed == 0 and result.bulk.reconciles
    assert result.sample_checked == 20
    assert backend.live_index() == result.index
    assert backend.count() == 120

    # The template applied: prefix fields are keywords, so an exact term query finds exactly the siblings.
    mapping = backend.engine.get_mapping(result.index)
    assert mapping["properties"]["sid_prefix_2"] == {"type": "keyword"}
    assert backend.engine.get_indexes(result.index)  # created from the template named after the alias
    anchor = docs[7]
    siblings = backend.items_sharing_prefix(anchor["sid"], 2, size=100)
    expected = sorted(d["sid"] for d in docs if d["sid_prefix_2"] == anchor["sid_prefix_2"])
    assert [d["sid"] for d in siblings] == expected
    assert len(backend.items_sharing_prefix(anchor["sid"], 3, size=100)) < len(siblings)

    assert backend.get(anchor["item_id"]) == anchor
    assert backend.get("no-such-item") is None
    [info] = backend.list_indexes()
    assert (info.name, info.live, info.verified, info.doc_count) == (result.index, True, True, 120)
    assert info.snapshot_version == "rq-kmeans-v1" and info.run_id == "run-1"
    # Results travel between tasks as JSON.
    assert json.loads(json.dumps(result.to_dict()))["bulk"]["indexed"] == 120
    assert json.loads(json.dumps(info.to_dict()))["live"] is True


def test_an_index_built_apart_goes_live_only_when_the_alias_is_swapped(engine, make_backend, docs_factory):
    backend = make_backend(engine)
    first = backend.publish_full(docs_factory(30), "v1", "r1").index
    built = backend.publish_full(docs_factory(45, title="new"), "v2", "r2", live=False)
    assert (built.live, built.previous_index, built.doc_count) == (False, first, 45)
    # Loaded and verified beside the live index; readers still see the old one.
    assert backend.live_index() == first and backend.count() == 30
    assert {i.name: (i.live, i.verified) for i in backend.list_indexes()} == {
        first: (True, True),
        built.index: (False, True),
    }
    swap = backend.swap_alias(built.index)
    assert (swap.swapped, swap.previous_index, swap.index) == (True, first, built.index)
    assert backend.live_index() == built.index and backend.count() == 45
    # Idempotent: a retried swap changes nothing.
    again = backend.swap_alias(built.index)
    assert (again.swapped, again.previous_index) == (False, built.index)
    assert backend.live_index() == built.index


def test_the_alias_is_never_swapped_to_an_index_that_is_not_a_verified_one_of_its_own(make_backend, docs_factory):
    backend = make_backend()
    live = backend.publish_full(docs_factory(10), "v1", "r1").index
    with pytest.raises(SearchError, match="it does not exist; the alias still points at"):
        backend.swap_alias(f"{backend.alias}-no-such-index")
    backend.engine.create_index(f"{backend.alias}-stranger", settings={}, mappings={})
    with pytest.raises(SearchError, match="is not a verified index of this alias"):
        backend.swap_alias(f"{backend.alias}-stranger")
    assert backend.live_index() == live


def test_lookups_take_semantic_ids_and_user_text_is_only_data(make_backend, docs_factory):
    backend = make_backend()
    backend.publish_full(docs_factory(10), "v1", "r1")
    with pytest.raises(SearchError, match="not a semantic ID"):
        backend.items_sharing_prefix("* OR sid:*", 1)
    with pytest.raises(SearchError, match="prefix level must be 1 to 3"):
        backend.items_sharing_prefix("1-2-3-0", 4)
    # Query syntax inside an item's fields or id is stored and read back as plain data.
    hostile = {**docs_factory(1, start=99)[0], "item_id": "x OR *:*", "title": 'x" OR *:* {"query"}'}
    backend.publish_incremental([hostile])
    assert backend.get(hostile["item_id"]) == hostile
    assert backend.get("*") is None
    assert backend.count() == 11


def test_second_publish_swaps_atomically_and_prunes(make_backend, docs_factory, monkeypatch, alias):
    backend = make_backend(keep_indexes=2)
    first = backend.publish_full(docs_factory(50), "v1", "r1")

    swaps = []
    original = backend.engine.update_aliases

    def recording(actions):
        swaps.append(actions)
        original(actions)

    monkeypatch.setattr(backend.engine, "update_aliases", recording)
    counts: list[int] = []
    failures: list[Exception] = []
    stop = threading.Event()

    def read_during_publish() -> None:
        reader = make_backend()
        while not stop.is_set():
            try:
                counts.append(reader.count())
            except Exception as exc:
                failures.append(exc)

    thread = threading.Thread(target=read_during_publish)
    thread.start()
    try:
        second = backend.publish_full(docs_factory(50, title="second"), "v1", "r2")
    finally:
        stop.set()
        thread.join()

    # One request, removing the old index and adding the new one: readers always see a complete index.
    assert swaps == [
        [{"remove": {"index": first.index, "alias": alias}}, {"add": {"index": second.index, "alias": alias}}]
    ]
    assert not failures and counts and set(counts) == {50}
    assert second.previous_index == first.index and second.pruned == []

    third = backend.publish_full(docs_factory(50), "v2", "r3")
    assert third.pruned == [first.index]
    listed = list_alias_indexes(backend.config)
    assert [(i.name, i.live, i.doc_count) for i in listed] == [(third.index, True, 50), (second.index, False, 50)]

    assert make_backend(keep_indexes=1).prune() == [second.index]
    assert [i.name for i in backend.list_indexes()] == [third.index]


def test_indexes_named_the_older_way_are_listed_rolled_back_to_and_pruned(make_backend, docs_factory, monkeypatch):
    backend = make_backend(keep_indexes=2)
    # An index as earlier releases named it: <alias>-<version>-<run>, the whole run id included.
    monkeypatch.setattr(
        "lmindexer.search.backend.index_name", lambda alias, version, run: f"{alias}-{version}-{run}".lower()
    )
    old = backend.publish_full(docs_factory(20), "rq-kmeans-20261201T235229Z-29ede91f", "manual__2026-12-01t23-42-37")
    monkeypatch.undo()
    new = backend.publish_full(docs_factory(30), "rq-kmeans-20261202T010000Z-0badcafe", "manual__2026-12-02t00-00-00")
    assert old.index.endswith("-manual__2026-12-01t23-42-37") and new.index != old.index
    assert [(i.name, i.live) for i in backend.list_indexes()] == [(new.index, True), (old.index, False)]
    assert backend.rollback().to_index == old.index and backend.count() == 20
    newest = backend.publish_full(docs_factory(25), "rq-kmeans-20261203T010000Z-12345678", "manual__2026-12-03")
    assert newest.pruned == [old.index]
    assert [i.name for i in backend.list_indexes()] == [newest.index, new.index]


def test_rollback_returns_to_the_previous_index(engine, make_backend, docs_factory, alias):
    backend = make_backend(engine)
    with pytest.raises(SearchError, match="does not exist; there is nothing to roll back"):
        backend.rollback()
    first = backend.publish_full(docs_factory(30), "v1", "r1")
    second = backend.publish_full(docs_factory(40, title="new"), "v2", "r2")
    assert backend.count() == 40

    result = rollback_alias(backend.config)
    assert (result.alias, result.from_index, result.to_index) == (alias, second.index, first.index)
    assert result.doc_count == 30 and json.loads(json.dumps(result.to_dict()))["to_index"] == first.index
    assert backend.live_index() == first.index and backend.count() == 30
    with pytest.raises(SearchError, match="no earlier verified index"):
        backend.rollback()

    # The next publish keeps the rolled-back-from index as history and becomes live.
    third = backend.publish_full(docs_factory(35), "v3", "r3")
    assert backend.live_index() == third.index and backend.count() == 35


def test_incremental_upserts_and_deletes_through_the_alias(engine, make_backend, docs_factory):
    backend = make_backend(engine)
    with pytest.raises(SearchError, match="does not exist yet; run a full publish first"):
        backend.publish_incremental(docs_factory(1))
    docs = docs_factory(30)
    backend.publish_full(docs, "v1", "r1")

    changed = [{**docs[0], "title": "renamed"}, {**docs[1], "title": "renamed too"}]
    added = docs_factory(3, start=100)
    result = backend.publish_incremental(changed + added, [docs[5]["item_id"], docs[6]["item_id"], "never-existed"])

    assert (result.attempted, result.indexed, result.deleted, result.not_found, result.failed) == (8, 5, 2, 1, 0)
    assert result.reconciles
    assert backend.count() == 30 + 3 - 2
    assert backend.get(docs[0]["item_id"])["title"] == "renamed"
    assert backend.get(added[2]["item_id"]) == added[2]
    assert backend.get(docs[5]["item_id"]) is None

    other_space = docs_factory(1, start=200, version="v2")
    mismatch = backend.publish_incremental(other_space)
    assert mismatch.failed == 1 and mismatch.errors[0].error_type == "snapshot_version_mismatch"
    assert backend.get(other_space[0]["item_id"]) is None


def test_per_document_errors_are_reported_and_counts_reconcile(engine, make_backend, docs_factory):
    backend = make_backend(engine, max_failed_documents=2)
    docs = docs_factory(20)
    docs[3] = {**docs[3], "updated_at": "not a date"}
    docs[8] = {**docs[8], "unexpected_field": 1}
    docs.append(dict(docs[0]))  # the same id twice
    docs.append({"title": "no id"})
    with pytest.raises(PublishError) as info:
        backend.publish_full(docs, "v1", "r1")
    result = info.value.result
    assert (result.attempted, result.indexed, result.failed) == (22, 18, 4) and result.reconciles
    assert info.value.index_deleted and backend.live_index() is None
    by_id = {error.item_id: error for error in result.errors}
    bad_date = by_id[docs[3]["item_id"]]
    assert bad_date.status == 400 and bad_date.error_type == "mapper_parsing_exception"
    assert "updated_at" in bad_date.reason and "not a date" in bad_date.reason
    assert by_id[docs[8]["item_id"]].error_type == "strict_dynamic_mapping_exception"
    assert by_id[docs[0]["item_id"]].error_type == "duplicate_id"
    assert by_id[None].error_type == "invalid_document"
    assert "4 documents failed (max_failed_documents is 2)" in str(info.value)

    # Within the allowance the publish goes live, and the failures are still all there.
    allowed = make_backend(engine, max_failed_documents=2).publish_full(docs[:20], "v1", "r2")
    assert (allowed.bulk.attempted, allowed.bulk.indexed, allowed.bulk.failed) == (20, 18, 2)
    assert allowed.doc_count == 18
    assert {e.item_id for e in allowed.bulk.errors} == {docs[3]["item_id"], docs[8]["item_id"]}

    incremental = backend.publish_incremental([docs[3], docs[4]])
    assert (incremental.indexed, incremental.failed) == (1, 1) and incremental.reconciles
    assert incremental.errors[0].item_id == docs[3]["item_id"]
    with pytest.raises(PublishError, match="1 document failed"):
        incremental.check()


def test_a_failed_publish_leaves_the_alias_on_the_previous_index(make_backend, docs_factory):
    backend = make_backend()
    first = backend.publish_full(docs_factory(25), "v1", "r1")
    bad = docs_factory(25, version="v2")
    bad[0] = {**bad[0], "codes": "not integers"}
    with pytest.raises(PublishError) as info:
        backend.publish_full(bad, "v2", "r2")
    message = str(info.value)
    assert f"was not changed: it points at {first.index}" in message and "was deleted" in message
    assert backend.live_index() == first.index and backend.count() == 25
    assert [i.name for i in backend.list_indexes()] == [first.index]


def test_a_defect_mid_publish_keeps_its_traceback_and_still_cleans_up(make_backend, docs_factory):
    backend = make_backend(chunk_size=5)
    first = backend.publish_full(docs_factory(10), "v1", "r1")

    def broken():
        yield from docs_factory(7)
        raise RuntimeError("a bug in the caller")

    with pytest.raises(RuntimeError, match="a bug in the caller"):
        backend.publish_full(broken(), "v1", "r2")
    assert backend.live_index() == first.index
    assert [i.name for i in backend.list_indexes()] == [first.index]


def test_empty_publish_does_not_go_live(make_backend):
    backend = make_backend()
    with pytest.raises(PublishError, match="no documents were indexed"):
        backend.publish_full([], "v1", "r1")
    assert backend.live_index() is None
    assert make_backend(allow_empty=True).publish_full([], "v1", "r2").doc_count == 0


def test_rerun_of_a_live_publish_is_a_no_op(make_backend, docs_factory):
    backend = make_backend()
    first = backend.publish_full(docs_factory(10), "v1", "r1")
    again = backend.publish_full(docs_factory(10), "v1", "r1")
    assert again.already_live and again.index == first.index and again.doc_count == 10


def test_refuses_an_alias_that_is_a_concrete_index(make_backend, alias):
    backend = make_backend()
    backend.engine.create_index(alias, settings={}, mappings={})
    with pytest.raises(SearchError, match="is an index, not an alias"):
        backend.publish_full([{"item_id": "a"}], "v1", "r1")


def test_a_shadowing_template_is_detected(make_backend, docs_factory, alias):
    backend = make_backend()
    backend.engine.put_index_template(
        "shadow-" + alias,
        {"index_patterns": [f"{alias}-*"], "priority": 5000, "template": {"mappings": {"dynamic": True}}},
    )
    with pytest.raises(PublishError, match=f"index template {template_name(alias)} was not applied"):
        backend.publish_full(docs_factory(5), "v1", "r1")
    assert backend.live_index() is None


def test_elasticsearch_client_sends_plain_json_when_compatibility_headers_are_off(make_backend, proxy, docs_factory):
    with pytest.raises(SearchError, match="set compatibility_headers to false"):
        make_backend("elasticsearch", compatibility_headers=True).install_template()

    backend = make_backend("elasticsearch", url=proxy.url)
    backend.publish_full(docs_factory(3), "v1", "r1")
    bulk_headers = []
    for method, path, headers in proxy.requests:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "vnd.elasticsearch" not in lowered.get("content-type", "") + lowered.get("accept", "")
        if path.split("?")[0].endswith("/_bulk"):
            bulk_headers.append(lowered["content-type"])
    assert bulk_headers == ["application/x-ndjson"]
