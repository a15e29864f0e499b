"""Faults between the backend and the engine: throttling (429) and the engine going away mid-publish."""

from __future__ import annotations

import pytest

from lmindexer.search import PublishError


def test_throttled_documents_are_retried_with_back_off_and_succeed(engine, make_backend, docs_factory, proxy):
    backend = make_backend(engine, url=proxy.url, chunk_size=10, bulk_max_retries=3)
    proxy.throttle_bulk_requests = 3  # the first attempt of the first chunks answers half the items with 429
    docs = docs_factory(40)
    result = backend.publish_full(docs, "v1", "r1")

    assert proxy.throttled_ids, "the proxy throttled nothing"
    assert (result.bulk.attempted, result.bulk.indexed, result.bulk.failed) == (40, 40, 0)
    assert result.doc_count == 40
    for item_id in set(proxy.throttled_ids):
        assert backend.get(item_id) is not None
    # Only the throttled documents were sent again: 4 chunks + one retry request per throttled chunk.
    assert proxy.bulk_requests == 4 + 3


def test_a_bulk_request_refused_as_a_whole_with_429_is_retried(engine, make_backend, docs_factory, proxy):
    backend = make_backend(engine, url=proxy.url, chunk_size=10, bulk_max_retries=3)
    proxy.reject_bulk_requests = 2
    result = backend.publish_full(docs_factory(20), "v1", "r1")
    assert (result.bulk.indexed, result.bulk.failed, result.doc_count) == (20, 0, 20)
    assert proxy.bulk_requests == 2 + 2


def test_throttling_beyond_the_retries_is_reported_per_document(engine, make_backend, docs_factory, proxy):
    backend = make_backend(engine, url=proxy.url, chunk_size=100, bulk_max_retries=1)
    backend.publish_full(docs_factory(10), "v1", "r1")
    proxy.throttle_bulk_requests = 2  # the attempt and its one retry
    changes = docs_factory(8, start=50)
    result = backend.publish_incremental(changes)

    # Attempt 1 throttles items 0, 2, 4, 6; the retry sends those four and throttles two of them again.
    assert (result.attempted, result.indexed, result.failed) == (8, 6, 2) and result.reconciles
    assert {e.status for e in result.errors} == {429}
    assert {e.error_type for e in result.errors} == {"es_rejected_execution_exception"}
    for error in result.errors:
        assert backend.get(error.item_id) is None


def test_engine_lost_mid_publish_keeps_the_previous_index_live_and_a_rerun_completes(
    engine, make_backend, docs_factory, proxy
):
    through_proxy = make_backend(engine, url=proxy.url, chunk_size=10)
    direct = make_backend(engine)
    first = through_proxy.publish_full(docs_factory(30), "v1", "r1")

    proxy.drop_after_bulk = 2  # two chunks get through, then every connection is dropped
    second_docs = docs_factory(60, version="v2", title="second")
    with pytest.raises(PublishError) as info:
        through_proxy.publish_full(second_docs, "v2", "r2")

    error = info.value
    message = str(error)
    assert "failed before going live: " in message and "cannot reach" in message
    assert f"it pointed at {first.index} before this publish" in message
    assert "was left in place" in message and "the next successful publish removes it" in message
    assert not error.index_deleted and error.live_index == first.index
    assert error.result is not None and error.result.indexed == 20 and error.result.unconfirmed > 0

    # Readers never noticed: the alias still points at the complete previous index.
    assert direct.live_index() == first.index and direct.count() == 30
    leftover = {i.name: i for i in direct.list_indexes()}[error.index]
    assert not leftover.live and not leftover.verified

    proxy.heal()
    rerun = through_proxy.publish_full(second_docs, "v2", "r2")
    assert rerun.index == error.index and rerun.previous_index == first.index
    assert rerun.doc_count == 60 and rerun.bulk.failed == 0
    assert direct.live_index() == rerun.index and direct.count() == 60


def test_engine_lost_mid_incremental_publish_rerun_completes(make_backend, docs_factory, proxy):
    through_proxy = make_backend(url=proxy.url, chunk_size=5)
    docs = docs_factory(20)
    through_proxy.publish_full(docs, "v1", "r1")
    changes = [{**doc, "title": "changed"} for doc in docs[:15]]

    proxy.drop_after_bulk = 1
    with pytest.raises(PublishError, match="rerun with the same input") as info:
        through_proxy.publish_incremental(changes, ["item-0019"])
    assert info.value.result is not None and info.value.result.indexed == 5

    proxy.heal()
    result = through_proxy.publish_incremental(changes, ["item-0019"])
    assert (result.indexed, result.deleted, result.failed) == (15, 1, 0)
    assert through_proxy.count() == 19 and through_proxy.get("item-0014")["title"] == "changed"


def test_sigv4_signs_every_request(make_backend, docs_factory, proxy, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    backend = make_backend(url=proxy.url, aws_auth="sigv4", aws_region="eu-west-1")
    backend.publish_full(docs_factory(5), "v1", "r1")
    authorizations = [
        next((v for k, v in headers.items() if k.lower() == "authorization"), "") for _, _, headers in proxy.requests
    ]
    assert authorizations and all(a.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") for a in authorizations)
    assert all("/eu-west-1/es/aws4_request" in a for a in authorizations)
