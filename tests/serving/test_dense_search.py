"""/search mode=dense and mode=hybrid against a real dense index of the sample catalogue, a real tiny retriever and a
real local search server: what they return, that hybrid is exactly the fusion the benchmarks measure, and what
happens when a component is missing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lmindexer.downstream.fusion import prefix_boosts, reciprocal_rank_fusion, score_fusion
from lmindexer.serving import create_app


@pytest.fixture(scope="module")
def client(retriever, backend, dense_index):
    app = create_app(retriever=retriever.model, recommender=None, backend=backend, dense=dense_index)
    with TestClient(app) as test_client:
        yield test_client


def _search(client: TestClient, query: str, mode: str, k: int = 10) -> list[dict]:
    response = client.get("/search", params={"q": query, "k": k, "mode": mode})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == mode and body["k"] == k and body["blend"] is False
    return body["results"]


def test_dense_search_returns_the_nearest_live_items_with_their_live_ids(retriever, dense_index, publish, wiki_items):
    query = "the history of astronomy and the planets"
    nearest = dense_index.search([query], k=20)[0]
    deleted = {item_id for item_id, _ in nearest[:3]}
    partial = publish(deletes=deleted)
    app = create_app(retriever=retriever.model, recommender=None, backend=partial, dense=dense_index)
    with TestClient(app) as partial_client:
        results = _search(partial_client, query, "dense")
    expected = [(item_id, score) for item_id, score in nearest if item_id not in deleted][:10]
    assert [r["item_id"] for r in results] == [item_id for item_id, _ in expected]
    assert [r["score"] for r in results] == pytest.approx([score for _, score in expected], abs=1e-5)
    sids = retriever.table.sid_map()
    assert all(r["source"] == "dense" and r["sid"] == sids[r["item_id"]] for r in results)


def test_dense_search_without_a_backend_answers_from_the_index_as_built(retriever, dense_index):
    app = create_app(retriever=retriever.model, recommender=None, backend=None, dense=dense_index)
    with TestClient(app) as no_backend:
        results = _search(no_backend, "rivers of europe", "dense", k=5)
    nearest = dense_index.search(["rivers of europe"], k=5)[0]
    assert [r["item_id"] for r in results] == [item_id for item_id, _ in nearest]
    sids = retriever.table.sid_map()
    assert all(r["sid"] == sids[r["item_id"]] for r in results)


def test_hybrid_is_the_score_fusion_of_the_boosted_text_search_and_live_dense_retrieval(
    client, retriever, backend, dense_index, wiki_items
):
    """mode=hybrid fuses the engine's prefix-boosted text search and dense retrieval by their standardised scores,
    each 100 deep (the depth benchmarks/downstream.py fuses at): the row "score fusion(BM25 + ID-prefix boost,
    dense)"."""
    sids = retriever.table.sid_map()
    differs_from_rank_fusion = []
    for item in wiki_items[:8]:
        query = item.title
        results = _search(client, query, "hybrid")
        beam = retriever.model.search([query], k=retriever.model.config.beam_size)[0]
        boosts = prefix_boosts([(sids[item_id], score) for item_id, score in beam])
        boosted_hits = [(hit.item_id, hit.score) for hit in backend.search_boosted(query, boosts, size=100).hits]
        nearest_scored = dense_index.search([query], k=100)[0]
        boosted, nearest = [i for i, _ in boosted_hits], [i for i, _ in nearest_scored]
        expected = score_fusion([boosted_hits, nearest_scored], k=10)
        assert [(r["item_id"], r["score"]) for r in results] == [(i, pytest.approx(s, abs=1e-5)) for i, s in expected]
        rank_fused = [i for i, _ in reciprocal_rank_fusion([boosted, nearest], k=10)]
        differs_from_rank_fusion.append([r["item_id"] for r in results] != rank_fused)
        assert all(r["sid"] == sids[r["item_id"]] for r in results)
        for r in results:
            in_boosted, in_dense = r["item_id"] in boosted, r["item_id"] in nearest
            assert r["source"] == ("both" if in_boosted and in_dense else "dense" if in_dense else r["source"])
            assert r["source"] != "dense" or not in_boosted
        # Fusion changes the ranking: hybrid is neither leg alone.
        assert [r["item_id"] for r in results] not in (boosted[:10], nearest[:10])
    # Scores, not ranks (the fusion the benchmarks found weaker), decide: some rankings differ from rank fusion's.
    assert any(differs_from_rank_fusion)


def test_hybrid_returns_only_live_items(retriever, dense_index, publish):
    query = "the history of astronomy and the planets"
    nearest = [item_id for item_id, _ in dense_index.search([query], k=6)[0]]
    deleted, first_live = nearest[:5], nearest[5]
    partial = publish(deletes=deleted)
    # The deleted items are the dense leg's best: if they were not dropped, their scores would carry them in.
    app = create_app(retriever=retriever.model, recommender=None, backend=partial, dense=dense_index)
    with TestClient(app) as partial_client:
        results = _search(partial_client, query, "hybrid")
    ids = [r["item_id"] for r in results]
    assert len(ids) == 10 and not set(deleted) & set(ids)
    assert all(partial.get(item_id) is not None for item_id in ids)
    # The best live dense result leads the dense leg: deleted items take no one's place.
    assert first_live in ids


def test_dense_and_hybrid_say_which_component_is_missing(retriever, backend, dense_index):
    cases = [
        ({"retriever": retriever.model, "backend": backend}, "dense", "no dense index is loaded on this server"),
        ({"retriever": retriever.model, "backend": backend}, "hybrid", "mode=hybrid needs a dense index"),
        ({"retriever": retriever.model, "dense": dense_index}, "hybrid", "mode=hybrid needs the search backend"),
        ({"dense": dense_index, "backend": backend}, "hybrid", "no retriever is loaded on this server"),
        ({"dense": dense_index, "backend": backend}, "generative", "no retriever is loaded on this server"),
    ]
    for components, mode, detail in cases:
        app = create_app(**{"retriever": None, "recommender": None, "backend": None, **components})
        with TestClient(app) as partial_client:
            response = partial_client.get("/search", params={"q": "physics", "mode": mode})
        assert response.status_code == 503 and response.json()["detail"].startswith(detail), (mode, response.text)
    # A dense index alone still answers dense search.
    app = create_app(retriever=None, recommender=None, backend=backend, dense=dense_index)
    with TestClient(app) as dense_only:
        assert len(_search(dense_only, "physics", "dense", k=3)) == 3


def test_health_reports_the_dense_index(client, dense_index, retriever, backend):
    dense = client.get("/health").json()["dense"]
    assert dense == {
        "loaded": True,
        "items": len(dense_index),
        "encoder": dense_index.config.encoder,
        "built_at": dense_index.built_at,
    }
    app = create_app(retriever=retriever.model, recommender=None, backend=backend)
    with TestClient(app) as without:
        assert without.get("/health").json()["dense"]["loaded"] is False
