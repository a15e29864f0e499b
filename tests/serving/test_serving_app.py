"""The HTTP API against real tiny trained models and a real local search server with the sample catalogue."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from testsupport.search_server import free_port

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH
from lmindexer.cli import main
from lmindexer.downstream.fusion import boosted_scores, prefix_boosts, top_items
from lmindexer.search import SearchBackend, SearchConfig
from lmindexer.serving import ServingLimits, create_app
from lmindexer.serving.body_limit import too_large_message


@pytest.fixture(scope="module")
def client(retriever, recommender, backend):
    app = create_app(retriever=retriever.model, recommender=recommender.model, backend=backend)
    with TestClient(app) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def shared_levels(a: str, b: str) -> int:
    shared = 0
    for x, y in zip(a.split("-")[:-1], b.split("-")[:-1], strict=True):
        if x != y:
            break
        shared += 1
    return shared


# -- /search ----------------------------------------------------------------------------------------------------------


def test_search_returns_existing_items_best_first_and_respects_k(client, retriever, wiki_items):
    sids = retriever.table.sid_map()
    hits = 0
    for item in wiki_items[:20]:
        response = client.get("/search", params={"q": item.title, "k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query"] == item.title and body["k"] == 5 and body["blend"] is False
        results = body["results"]
        assert 1 <= len(results) <= 5
        assert all(r["item_id"] in sids and r["sid"] == sids[r["item_id"]] for r in results)
        assert all(r["source"] == "generative" and r["score"] <= 0 for r in results)
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        assert len({r["item_id"] for r in results}) == len(results)
        hits += item.item_id in {r["item_id"] for r in results}
    assert hits >= 2  # trained on these titles: far above chance (10 of 320 items per query)
    default = client.get("/search", params={"q": wiki_items[0].title}).json()
    assert default["k"] == 10 and len(default["results"]) == 10
    one = client.get("/search", params={"q": wiki_items[0].title, "k": 1}).json()
    assert one["results"] == default["results"][:1]


def test_blended_search_fuses_text_search_and_returns_only_live_items(client, retriever, backend, publish, wiki_items):
    # A title whose words many texts share, so text search has more than enough candidates to fill k.
    query = next(item.title for item in wiki_items if len(backend.search_text(item.title, size=20)) == 20)
    plain = client.get("/search", params={"q": query, "k": 10}).json()["results"]
    deleted = {r["item_id"] for r in plain[:3]}
    partial = publish(deletes=deleted)
    assert partial.count() == len(wiki_items) - 3
    app = create_app(retriever=retriever.model, recommender=None, backend=partial)
    with TestClient(app) as partial_client:
        # Without blending the model still returns what it was trained on; blending checks liveness.
        unblended = partial_client.get("/search", params={"q": query, "k": 10}).json()["results"]
        assert deleted <= {r["item_id"] for r in unblended}
        response = partial_client.get("/search", params={"q": query, "k": 10, "blend": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["blend"] is True and len(body["results"]) == 10
    ids = [r["item_id"] for r in body["results"]]
    assert not deleted & set(ids)
    assert all(partial.get(item_id) is not None for item_id in ids)
    assert {r["source"] for r in body["results"]} <= {"generative", "text", "both"}
    assert any(r["source"] in {"text", "both"} for r in body["results"])
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 2 / 61 for s in scores)
    sids = retriever.table.sid_map()
    assert all(r["sid"] == sids[r["item_id"]] for r in body["results"])


def _boosts_for(retriever, query: str):
    sids = retriever.table.sid_map()
    beam = retriever.model.search([query], k=retriever.model.config.beam_size)[0]
    return prefix_boosts([(sids[item_id], score) for item_id, score in beam])


def test_the_engines_prefix_boosted_search_applies_the_librarys_formula(backend, retriever, wiki_items):
    """The engine's bool query (text + constant_score term queries on sid_prefix_<level>) scores every document as
    boosted_scores does from the engine's own text scores: the formula the benchmarks measure is the one served."""
    codes = dict(zip(retriever.table.item_ids, retriever.table.codes_list(), strict=True))
    compared = 0
    for item in wiki_items[:12]:
        query = item.title
        boosts = _boosts_for(retriever, query)
        assert not boosts.is_empty()
        found = backend.search_boosted(query, boosts, size=len(wiki_items))
        text = {hit.item_id: hit.score for hit in backend.search_text(query, size=len(wiki_items))}
        assert found.text_scale == pytest.approx(max(text.values()))
        expected = {i: s for i, s in boosted_scores(text, codes, boosts).items() if s > 0}
        got = {hit.item_id: hit.score for hit in found.hits}
        assert set(got) == set(expected)
        assert got == pytest.approx(expected, rel=1e-4)
        # Documents matching no word of the query come in on their predicted prefixes alone.
        compared += len(set(got) - set(text))
    assert compared > 0


def test_prefix_boost_search_returns_live_items_ranked_by_text_plus_boost(client, retriever, backend, wiki_items):
    query = wiki_items[3].title
    response = client.get("/search", params={"q": query, "k": 10, "mode": "prefix-boost"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "prefix-boost" and body["blend"] is False
    codes = dict(zip(retriever.table.item_ids, retriever.table.codes_list(), strict=True))
    text = {hit.item_id: hit.score for hit in backend.search_text(query, size=len(wiki_items))}
    expected = boosted_scores(text, codes, _boosts_for(retriever, query))
    ids = [r["item_id"] for r in body["results"]]
    assert ids == top_items(expected, 10)
    sids = retriever.table.sid_map()
    assert all(r["sid"] == sids[r["item_id"]] for r in body["results"])
    sources = {r["item_id"]: r["source"] for r in body["results"]}
    assert all(sources[i] == ("text" if _boosts_for(retriever, query).of(codes[i]) == 0 else sources[i]) for i in ids)
    assert all(sources[i] != "generative" for i in ids if i in text)
    assert all(sources[i] == "generative" for i in ids if i not in text)
    # The boost changes the text ranking (else this mode would add nothing).
    assert ids != [hit.item_id for hit in backend.search_text(query, size=10)]


def test_mode_rrf_is_what_blend_true_returns_and_the_two_cannot_disagree(client, wiki_items):
    query = wiki_items[5].title
    by_mode = client.get("/search", params={"q": query, "mode": "rrf"}).json()
    by_blend = client.get("/search", params={"q": query, "blend": "true"}).json()
    assert by_mode == by_blend and by_mode["mode"] == "rrf" and by_mode["blend"] is True
    plain = client.get("/search", params={"q": query}).json()
    assert plain["mode"] == "generative" and plain["blend"] is False
    detail = assert_error(client.get("/search", params={"q": query, "blend": "true", "mode": "prefix-boost"}), 422)
    assert detail == "blend=true means mode=rrf; it cannot be used with mode=prefix-boost"
    assert "query parameter 'mode'" in assert_error(client.get("/search", params={"q": query, "mode": "bm25"}), 422)


def test_text_search_ranks_the_title_match_first(backend, wiki_items):
    """osmem-server scores match queries by relevance (idf, term frequency, field length), so an exact title ranks
    its own item first for most items, and query syntax in the text is only words."""
    firsts = [backend.search_text(item.title, size=5)[0].item_id == item.item_id for item in wiki_items[:30]]
    assert sum(firsts) >= 25
    # In query-string syntax these would match every document; in a match query they are no words at all.
    assert backend.search_text("*:* || (*)", size=400) == []
    item = next(item for item in wiki_items if len(backend.search_text(item.title, size=400)) >= 3)
    hits = backend.search_text(f"{item.title} *:*", size=400)
    assert hits[0].item_id == item.item_id and len(hits) < len(wiki_items)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] > 0


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "query parameter 'q': Field required"),
        ({"q": ""}, "query parameter 'q': String should have at least 1 character"),
        ({"q": "   "}, "must contain text"),
        ({"q": "x" * 513}, "query parameter 'q': String should have at most 512 characters"),
        ({"q": "ok", "k": 0}, "query parameter 'k': Input should be greater than or equal to 1"),
        ({"q": "ok", "k": 11}, "query parameter 'k': Input should be less than or equal to 10"),
        ({"q": "ok", "k": "ten"}, "query parameter 'k': Input should be a valid integer"),
        ({"q": "ok", "blend": "perhaps"}, "query parameter 'blend'"),
    ],
)
def test_bad_search_requests_are_4xx_with_a_clear_detail(client, params, expected):
    assert expected in assert_error(client.get("/search", params=params), 422)


# -- /recommend -------------------------------------------------------------------------------------------------------


def test_recommend_returns_known_items_and_reports_unknown_ones(client, recommender):
    sids = recommender.table.sid_map()
    history = list(sids)[:6]
    response = client.post("/recommend", json={"history": history, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["k"] == 5 and body["unknown_items"] == [] and body["items_used"] == 6
    assert 1 <= len(body["results"]) <= 5
    assert all(r["item_id"] in sids and r["sid"] == sids[r["item_id"]] for r in body["results"])
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)

    mixed = ["no-such-movie", *history, "gone", "no-such-movie"]
    body2 = client.post("/recommend", json={"history": mixed, "k": 5}).json()
    assert body2["unknown_items"] == ["no-such-movie", "gone"]
    assert body2["results"] == body["results"]  # unknown items are skipped, not guessed at
    full = client.post("/recommend", json={"history": history, "exclude_seen": False}).json()["results"]
    assert len(full) == 10  # the default k


def test_recommend_leaves_out_the_history_unless_asked_not_to(client, recommender):
    movies = list(recommender.table.sid_map())
    # Histories ending in what the model recommends: popular movies it tends to recommend again.
    histories = []
    for start in range(0, 60, 6):
        first = movies[start : start + 4]
        again = client.post("/recommend", json={"history": first, "exclude_seen": False}).json()["results"]
        histories.append(first + [r["item_id"] for r in again[:4]])
    repeats = 0
    for history in histories:
        off = client.post("/recommend", json={"history": history, "k": 10, "exclude_seen": False}).json()["results"]
        on = client.post("/recommend", json={"history": history, "k": 10}).json()["results"]
        repeats += len({r["item_id"] for r in off} & set(history))
        assert not {r["item_id"] for r in on} & set(history)  # on by default: never a seen item
        assert len(on) == 10  # k = the beam here: no beam was spent on a seen item
        scores = {r["item_id"]: r["score"] for r in on}
        for r in off:  # otherwise the model's ranking: every unseen item it found, with its score
            if r["item_id"] not in history:
                assert scores[r["item_id"]] == pytest.approx(r["score"], abs=1e-5)
    assert repeats > 0  # off, seen items do come back
    detail = assert_error(client.post("/recommend", json={"history": movies[:2], "exclude_seen": "no"}), 422)
    assert detail.startswith("body field 'exclude_seen': Input should be a valid boolean")


def _concurrently(send, payloads):
    """Send every payload at once from its own thread (released together by a barrier); responses in order."""
    barrier = threading.Barrier(len(payloads))
    responses = [None] * len(payloads)

    def worker(n, payload):
        barrier.wait(30)
        responses[n] = send(payload)

    threads = [threading.Thread(target=worker, args=(n, p)) for n, p in enumerate(payloads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return responses


def test_concurrent_requests_are_decoded_in_shared_batches_and_answered_as_if_alone(
    retriever, recommender, backend, wiki_items, monkeypatch
):
    """Requests sent together share batched beam searches (fewer batches than requests), and each answer is what
    the model gives that request alone: its own k, its own exclude_seen, in float32 the same items in the same
    order."""
    for model in (retriever.model, recommender.model):
        monkeypatch.setattr(model, "precision", "fp32")  # bf16 sums may round differently in another batch shape
    limits = {"batch_max_wait_ms": 500, "batch_max_size": 8}
    app = create_app(retriever=retriever.model, recommender=recommender.model, backend=backend, limits=limits)
    searches = [{"q": item.title, "k": 1 + n % 5} for n, item in enumerate(wiki_items[:8])]
    movies = list(recommender.table.sid_map())
    # Histories ending in items the model recommends for their start, so that leaving out the seen ones matters.
    starts = [movies[n * 6 : n * 6 + 4] for n in range(8)]
    again = [[item_id for item_id, _ in ranked[:4]] for ranked in recommender.model.recommend(starts, k=4)]
    bodies = [
        {"history": s + a, "k": 3 + n % 4, "exclude_seen": n % 2 == 0} for n, (s, a) in enumerate(zip(starts, again))
    ]
    with TestClient(app) as client:
        together = _concurrently(lambda params: client.get("/search", params=params), searches)
        together += _concurrently(lambda body: client.post("/recommend", json=body), bodies)
        stats = {role: batcher.stats for role, batcher in app.state.batchers.items()}
    alone = [retriever.model.search([params["q"]], k=params["k"])[0] for params in searches]
    alone += [
        recommender.model.recommend([body["history"]], k=body["k"], exclude_seen=body["exclude_seen"])[0]
        for body in bodies
    ]
    assert all(response.status_code == 200 for response in together)
    for shared, expected in zip(together, alone, strict=True):
        got = shared.json()["results"]
        assert [r["item_id"] for r in got] == [item_id for item_id, _ in expected]
        assert [r["score"] for r in got] == pytest.approx([score for _, score in expected], abs=1e-4)
    for role in ("retriever", "recommender"):
        assert stats[role].requests == 8 and stats[role].batches < 8, (role, stats[role])


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"history": ["x"] * 201}, 422, "body field 'history': List should have at most 200 items"),
        ({"history": []}, 422, "body field 'history': List should have at least 1 item"),
        ({"history": ["nope", "nada"]}, 422, "none of the 2 history items is known"),
        ({"history": "not-a-list"}, 422, "body field 'history': Input should be a valid list"),
        ({"history": ["x", 3]}, 422, "body field 'history[1]': Input should be a valid string"),
        ({"history": [""]}, 422, "body field 'history[0]'"),
        ({}, 422, "body field 'history': Field required"),
        ({"history": ["x"], "extra": 1}, 422, "body field 'extra': Extra inputs are not permitted"),
        ({"history": ["x"], "k": 11}, 422, "body field 'k': Input should be less than or equal to 10"),
        ({"history": ["x"], "k": 0}, 422, "body field 'k': Input should be greater than or equal to 1"),
        ([1, 2], 422, "request body"),
    ],
)
def test_bad_recommend_requests_are_4xx_with_a_clear_detail(client, body, status, expected):
    assert expected in assert_error(client.post("/recommend", json=body), status)


@pytest.mark.parametrize("k", ["5", True, False, 5.0, "true", [5], {"value": 5}])
def test_a_string_or_boolean_k_in_the_body_is_refused_not_coerced(client, recommender, k):
    history = list(recommender.table.sid_map())[:3]
    assert client.post("/recommend", json={"history": history, "k": 5}).status_code == 200
    detail = assert_error(client.post("/recommend", json={"history": history, "k": k}), 422)
    assert detail.startswith("body field 'k': Input should be a valid integer")


@pytest.mark.parametrize("text", ["true", "5.0", "", " 5", "5 ", "1_0", "+5", "1e1", "0x5", "５"])
def test_a_query_string_k_must_be_written_in_digits(client, retriever, text):
    item_id = next(iter(retriever.table.sid_map()))
    for path, params in (("/search", {"q": "physics"}), (f"/items/{item_id}/similar", {})):
        plain = client.get(path, params={**params, "k": "5"})
        assert plain.status_code == 200 and len(plain.json()["results"]) == 5
        detail = assert_error(client.get(path, params={**params, "k": text}), 422)
        assert detail == "query parameter 'k': Input should be a valid integer, written in digits"


def test_malformed_json_is_a_400(client):
    response = client.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(response, 400)


# -- /items/{id}/similar ----------------------------------------------------------------------------------------------


def test_similar_items_share_the_longest_prefix_and_exclude_the_item(client, retriever):
    sids = retriever.table.sid_map()
    for item_id in list(sids)[:5]:
        for k in (3, 10, 25):
            response = client.get(f"/items/{item_id}/similar", params={"k": k})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["item_id"] == item_id and body["sid"] == sids[item_id]
            others = [(o, s) for o, s in sids.items() if o != item_id and shared_levels(sids[item_id], s) >= 1]
            expected = sorted(others, key=lambda e: (-shared_levels(sids[item_id], e[1]), e[1], e[0]))[:k]
            results = body["results"]
            assert [(r["item_id"], r["sid"]) for r in results] == expected
            assert all(r["shared_levels"] == shared_levels(sids[item_id], r["sid"]) >= 1 for r in results)
            assert all(r["title"] for r in results)


def test_similar_for_an_unknown_item_is_404(client):
    assert "'no-such-item' is not in the live search index" in assert_error(
        client.get("/items/no-such-item/similar"), 404
    )
    assert_error(client.get("/items/x/similar", params={"k": 0}), 422)
    assert_error(client.get("/items/x/similar", params={"k": 101}), 422)


def test_an_nfd_spelling_of_an_id_finds_the_item_stored_in_nfc(publish, retriever):
    import unicodedata

    backend = publish()
    donor = backend.get(next(iter(retriever.table.sid_map())))
    stored = unicodedata.normalize("NFC", "café-1")  # the catalogue stores ids in NFC
    backend.publish_incremental([{**donor, "item_id": stored}]).check()
    with TestClient(create_app(retriever=None, recommender=None, backend=backend)) as local:
        typed = unicodedata.normalize("NFD", "café-1")
        assert typed != stored
        response = local.get(f"/items/{typed}/similar")
        assert response.status_code == 200, response.text
        assert response.json()["item_id"] == stored


# -- health, docs, errors ---------------------------------------------------------------------------------------------


def test_health_reports_components_versions_and_counts(client, retriever, recommender, backend):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    # The recommender is trained on another catalogue than the one published: health says so.
    assert body["warnings"] == [
        f"the recommender writes IDs of snapshot {recommender.table.space.snapshot_version}; "
        f"the live index holds {retriever.table.space.snapshot_version}"
    ]
    assert body["retriever"] == {
        "loaded": True,
        "snapshot_version": retriever.table.space.snapshot_version,
        "id_method": "rq-kmeans",
        "items": len(retriever.table),
        "beam_size": 10,
        "max_k": 10,
    }
    assert body["recommender"]["items"] == len(recommender.table)
    assert body["recommender"]["snapshot_version"] == recommender.table.space.snapshot_version
    search = body["search"]
    assert search["configured"] and search["reachable"] and search["alias"] == backend.alias
    assert search["live_index"] == backend.live_index() and search["documents"] == len(retriever.table)
    assert search["snapshot_version"] == retriever.table.space.snapshot_version


def test_docs_and_openapi_are_served(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/search", "/recommend", "/items/{item_id}/similar", "/health"} <= set(spec["paths"])
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert spec["paths"]["/search"]["get"]["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }


def test_unknown_routes_and_methods_keep_the_error_shape(client):
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.delete("/search"), 405)


def test_an_internal_failure_is_a_bare_500_and_details_stay_in_the_log(
    client, retriever, recommender, monkeypatch, caplog
):
    def boom(*args, **kwargs):
        raise RuntimeError("secret path /x")

    monkeypatch.setattr(retriever.model, "search", boom)
    monkeypatch.setattr(recommender.model, "recommend", boom)
    with caplog.at_level(logging.ERROR, logger="lmindexer.serving.app"):
        for response in (
            client.get("/search", params={"q": "anything"}),
            client.post("/recommend", json={"history": [next(iter(recommender.table.sid_map()))]}),
        ):
            assert assert_error(response, 500) == "internal error"
            assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret path /x" in caplog.text and "Traceback" in caplog.text


def test_missing_or_unreachable_components_are_503(retriever, recommender):
    bare = TestClient(create_app(retriever=None, recommender=None, backend=None))
    assert "no retriever" in assert_error(bare.get("/search", params={"q": "x"}), 503)
    assert "no recommender" in assert_error(bare.post("/recommend", json={"history": ["x"]}), 503)
    assert "no search backend" in assert_error(bare.get("/items/x/similar"), 503)
    health = bare.get("/health").json()
    assert health["status"] == "ok" and not health["retriever"]["loaded"] and not health["search"]["configured"]

    models_only = TestClient(create_app(retriever=retriever.model, recommender=None, backend=None))
    assert "blend=true needs the search backend" in assert_error(
        models_only.get("/search", params={"q": "x", "blend": "true"}), 503
    )
    assert "mode=prefix-boost needs the search backend" in assert_error(
        models_only.get("/search", params={"q": "x", "mode": "prefix-boost"}), 503
    )

    config = SearchConfig(hosts=[f"http://127.0.0.1:{free_port()}"], alias="gone", max_retries=0, timeout=2)
    with SearchBackend(config) as unreachable:
        down = TestClient(create_app(retriever=retriever.model, recommender=None, backend=unreachable))
        detail = assert_error(down.get("/items/x/similar"), 503)
        assert detail == "the search backend is unavailable"
        assert assert_error(down.get("/search", params={"q": "x", "blend": "true"}), 503) == detail
        assert assert_error(down.get("/search", params={"q": "x", "mode": "prefix-boost"}), 503) == detail
        assert down.get("/search", params={"q": "x"}).status_code == 200  # the model alone still answers
        health = down.get("/health").json()
        assert health["status"] == "degraded" and health["search"]["reachable"] is False


def test_limits_are_validated_and_applied(retriever, recommender):
    from lmindexer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"default_k \(6\) must not exceed max_k \(5\)"):
        create_app(retriever=None, recommender=None, backend=None, limits={"max_k": 5, "default_k": 6})
    with pytest.raises(ConfigError, match="max_history"):
        create_app(retriever=None, recommender=None, backend=None, limits={"max_history": 0})
    with pytest.raises(ConfigError, match="retriever must be a retrieval model"):
        create_app(retriever=recommender.model, recommender=None, backend=None)
    app = create_app(
        retriever=retriever.model,
        recommender=recommender.model,
        backend=None,
        limits=ServingLimits(max_query_chars=10, max_history=3, max_k=4, default_k=2),
    )
    small = TestClient(app)
    assert len(small.get("/search", params={"q": "physics"}).json()["results"]) == 2
    assert_error(small.get("/search", params={"q": "x" * 11}), 422)
    assert_error(small.get("/search", params={"q": "physics", "k": 5}), 422)
    known = list(recommender.table.sid_map())
    assert "at most 3" in assert_error(small.post("/recommend", json={"history": known[:4]}), 422)
    assert small.get("/health").json()["recommender"]["max_k"] == 4


def test_every_request_limit_is_declared_in_the_openapi_document(retriever, recommender):
    limits = ServingLimits(max_query_chars=40, max_history=7, max_k=4, default_k=2, max_body_bytes=5000)
    spec = create_app(retriever=retriever.model, recommender=recommender.model, backend=None, limits=limits).openapi()
    search = {p["name"]: p["schema"] for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert (search["q"]["minLength"], search["q"]["maxLength"]) == (1, 40)
    assert (search["k"]["type"], search["k"]["minimum"], search["k"]["maximum"], search["k"]["default"]) == (
        "integer",
        1,
        4,
        2,
    )
    similar = {p["name"]: p["schema"] for p in spec["paths"]["/items/{item_id}/similar"]["get"]["parameters"]}
    assert (similar["item_id"]["minLength"], similar["item_id"]["maxLength"]) == (1, MAX_ITEM_ID_LENGTH)
    assert (similar["k"]["type"], similar["k"]["minimum"], similar["k"]["maximum"]) == ("integer", 1, 4)
    body = spec["components"]["schemas"]["RecommendRequest"]
    assert body["additionalProperties"] is False and body["required"] == ["history"]
    history = body["properties"]["history"]
    assert (history["minItems"], history["maxItems"]) == (1, 7)
    assert (history["items"]["minLength"], history["items"]["maxLength"]) == (1, MAX_ITEM_ID_LENGTH)
    k = next(option for option in body["properties"]["k"]["anyOf"] if option["type"] == "integer")
    assert (k["minimum"], k["maximum"]) == (1, 4)
    assert "at most 5000 bytes" in spec["paths"]["/recommend"]["post"]["description"]


def test_every_serving_limit_is_documented():
    """Each ServingLimits field has its row in the limits table of docs/serving.md."""
    docs = (Path(__file__).parents[2] / "docs" / "serving.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in docs.splitlines() if line.startswith("| `")}
    assert set(ServingLimits.model_fields) <= rows


# -- the real server --------------------------------------------------------------------------------------------------


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection (a reset after the answer ends the read too)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def assert_refused_as_too_large(response: bytes, limit: int) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), response[:300]
    assert b"connection: close" in head.lower()
    assert httpx.Response(413, content=body).json() == {"detail": too_large_message(limit)}


def start_server(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def wait_for_health(base: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{base}/health", timeout=5)
        except httpx.TransportError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_lmindexer_serve_answers_over_http(
    retriever, recommender, backend, search_server, dense_index, wiki_items, tmp_path
):
    port = free_port()
    log = tmp_path / "serve.log"
    dense = dense_index.save(tmp_path / "dense")
    command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(retriever.directory)]
    command += ["--recommender", str(recommender.directory), "--search", "--url", search_server.url]
    command += ["--dense", str(dense)]
    command += ["--alias", backend.alias, "--port", str(port), "--max-history", "5", "--max-body-bytes", "65536"]
    process = start_server(command, log)
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(base, process, log)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["search"]["documents"] == len(retriever.table)
        with httpx.Client(base_url=base, timeout=30) as http:
            found = http.get("/search", params={"q": "physics", "k": 3, "blend": True}).json()["results"]
            assert len(found) == 3
            hybrid = http.get("/search", params={"q": "physics", "k": 3, "mode": "hybrid"}).json()["results"]
            assert len(hybrid) == 3 and all(r["source"] in {"text", "generative", "both", "dense"} for r in hybrid)
            assert health.json()["dense"]["items"] == len(wiki_items)
            item_id = found[0]["item_id"]
            assert http.get(f"/items/{item_id}/similar", params={"k": 2}).json()["results"]
            known = list(recommender.table.sid_map())
            assert "at most 5" in http.post("/recommend", json={"history": known[:6]}).json()["detail"]
            assert len(http.post("/recommend", json={"history": known[:5], "k": 2}).json()["results"]) == 2
            assert http.get("/openapi.json").status_code == 200
        limit = 65536  # --max-body-bytes
        post = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        # Declared too large and never sent: the answer does not wait for a byte of the body.
        assert_refused_as_too_large(raw_exchange(port, post + b"Content-Length: 193000000\r\n\r\n"), limit)
        # Chunked, so of unknown length: refused once the bytes received pass the limit.
        piece = b"x" * 65536
        chunks = b"%x\r\n%s\r\n" % (len(piece), piece) * (limit // len(piece) + 1) + b"0\r\n\r\n"
        assert_refused_as_too_large(raw_exchange(port, post + b"Transfer-Encoding: chunked\r\n\r\n" + chunks), limit)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200  # and the server carries on
    finally:
        stop_server(process)
    assert "Uvicorn running on" in log.read_text() or "Application startup complete" in log.read_text()


def test_lmindexer_serve_with_workers_answers_from_each_worker_process(retriever, tmp_path):
    import psutil

    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(retriever.directory)]
    process = start_server([*command, "--port", str(port), "--workers", "2"], log)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_health(base, process, log).status_code == 200
        children = {child.pid for child in psutil.Process(process.pid).children()}
        # Each new connection goes to whichever worker accepts it first: from several clients at once, both answer.
        statuses: set[int] = set()
        workers: set[int] = set()

        def ask() -> None:
            for _ in range(25):
                with httpx.Client(base_url=base, timeout=30) as http:  # a new connection each time
                    statuses.add(http.get("/search", params={"q": "physics", "k": 3}).status_code)
                    workers.add(http.get("/health").json()["process"])

        clients = [threading.Thread(target=ask) for _ in range(4)]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        assert statuses == {200}
        assert len(workers) == 2 and workers <= children, (workers, children, process.pid)
    finally:
        stop_server(process)
    assert process.returncode == 0
    assert "leaked semaphore" not in log.read_text()  # the workers leave nothing behind for the resource tracker
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers)


def test_serve_with_workers_stops_when_a_worker_cannot_load_its_model(tmp_path):
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(tmp_path / "missing"), "--workers"]
    process = start_server([*command, "2", "--port", str(free_port())], log)
    try:
        process.wait(timeout=120)  # a worker that cannot start is not started again and again
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, log.read_text()
    text = log.read_text()
    assert "could not start" in text and str(tmp_path / "missing") in text


def test_serve_refuses_to_start_without_a_model(capsys):
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing to serve") and len(err.strip().splitlines()) == 1
    assert main(["serve", "--retriever", "x", "--url", "http://127.0.0.1:9"]) == 2
    assert "add --search" in capsys.readouterr().err


def test_serve_refuses_a_worker_count_out_of_range_before_loading_anything(capsys):
    for workers in ("0", "65"):
        assert main(["serve", "--retriever", "missing-model", "--workers", workers]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: invalid serving options: workers:") and "missing-model" not in err
