"""``GET /search``: items for a text query, from the generative retriever, dense retrieval, the engine's text
search, or fusions of them."""

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from lmindexer.downstream.fusion import PrefixBoosts, prefix_boosts, reciprocal_rank_fusion, score_fusion
from lmindexer.search.reader import SearchReader
from lmindexer.search.results import BoostedSearch, TextHit
from lmindexer.serving.limits import ServingLimits
from lmindexer.serving.schemas import ResultItem, SearchMode, SearchResponse, Source, error_responses, query_k
from lmindexer.serving.state import Ranked, Scored, ServingState, ServingStateDependency, required

ModeParameter = Annotated[
    SearchMode | None,
    Query(
        description="generative (default): the retriever's IDs; rrf: its beam and the engine's BM25 text "
        "search fused by reciprocal rank, live items only; prefix-boost: the engine's text search with a boost "
        "for documents whose ID prefixes the retriever predicts (term queries on the published prefix fields); "
        "dense: the dense index's nearest items (live items only when the search backend is configured); hybrid: "
        "prefix-boost and dense fused by their standardised scores (equal weights), live items only",
    ),
]

NO_RETRIEVER = "no retriever is loaded on this server"
NO_DENSE = "no dense index is loaded on this server (lmindexer serve --dense)"


def search_router(limits: ServingLimits, k_cap: int) -> APIRouter:
    """``/search``, its query at most ``limits.max_query_chars`` long and its k at most ``k_cap``."""
    router = APIRouter()
    SearchK = query_k(k_cap)
    default_k = limits.default_k_within(k_cap)

    @router.get(
        "/search",
        response_model=SearchResponse,
        responses=error_responses(422, 503),
        tags=["retrieval"],
        summary="Items for a text query: generative, dense, or fused with the engine's text search",
    )
    def search(
        state: ServingStateDependency,
        q: str = Query(..., min_length=1, max_length=limits.max_query_chars, description="the query text"),
        k: SearchK = default_k,
        mode: ModeParameter = None,
        blend: bool = Query(False, description="the older name of mode=rrf"),
    ) -> SearchResponse:
        text = q.strip()
        if not text:
            raise HTTPException(status_code=422, detail="query parameter 'q' must contain text, not only spaces")
        if blend and mode not in (None, "rrf"):
            detail = f"blend=true means mode=rrf; it cannot be used with mode={mode}"
            raise HTTPException(status_code=422, detail=detail)
        chosen: SearchMode = "rrf" if blend else mode or "generative"

        def answer(results: list[ResultItem]) -> SearchResponse:
            return SearchResponse(query=text, k=k, mode=chosen, blend=chosen == "rrf", results=results)

        if chosen == "dense":
            return answer(_dense(state, text, k=k))
        served = required(state.retriever, NO_RETRIEVER)
        if chosen == "generative":
            beam: Ranked = served.batcher.submit(text)
            return answer([ResultItem(item_id=i, sid=sid, score=s, source="generative") for i, s, sid in beam[:k]])
        # Checked before decoding: a request that can only end in 503 costs no beam search.
        dense = required(state.dense, f"mode=hybrid needs a dense index: {NO_DENSE}") if chosen == "hybrid" else None
        backend = required(
            state.backend,
            f"{'blend=true' if blend else f'mode={chosen}'} needs the search backend, which is not configured",
        )
        # The query is embedded on the dense index's worker while the beam search and the engine requests run.
        embedding = dense.batcher.submit_nowait(text) if dense is not None else None
        # The beam up to the cap: items that turn out deleted must not leave the fused list short, and every
        # predicted prefix gets its share of the beam's mass.
        beam = served.batcher.submit(text)[: served.cap]
        weight = state.limits.prefix_boost_weight
        if chosen == "prefix-boost":
            return answer(_prefix_boosted(backend, text, beam, k=k, weight=weight))
        if embedding is not None:
            # Both legs as deep as the benchmarks fuse them (blend_candidates); the dense leg holds live items only.
            depth = state.limits.blend_candidates
            boosted_leg = _prefix_boosted(backend, text, beam, k=depth, weight=weight)
            nearest = _live_nearest(backend, embedding.result(), depth)
            return answer(fuse_hybrid(boosted_leg, nearest, k=k))
        return answer(_rank_fused(backend, text, beam, k=k, limits=state.limits))

    return router


def _dense(state: ServingState, text: str, *, k: int) -> list[ResultItem]:
    """The dense index's ``k`` nearest items: live ones only, with their live sids, when a backend is configured;
    otherwise as indexed, with the retriever's sids where it has them."""
    dense = required(state.dense, NO_DENSE)
    nearest: Scored = dense.batcher.submit(text)
    if state.backend is not None:
        live = _live_nearest(state.backend, nearest, k)
        return [ResultItem(item_id=i, sid=str(doc.get("sid", "")), score=s, source="dense") for i, s, doc in live]
    model = state.retriever.model if state.retriever else None
    return [
        ResultItem(item_id=i, sid=(model.sid_of(i) if model else None) or "", score=s, source="dense")
        for i, s in nearest[:k]
    ]


def _live_nearest(backend: SearchReader, nearest: Scored, depth: int) -> list[tuple[str, float, Mapping[str, Any]]]:
    """The first ``depth`` of ``nearest`` that are live behind the alias, with their documents."""
    live = backend.get_many(item_id for item_id, _ in nearest)
    return [(item_id, score, live[item_id]) for item_id, score in nearest if item_id in live][:depth]


def fuse_hybrid(
    boosted_leg: Sequence[ResultItem],
    nearest: Sequence[tuple[str, float, Mapping[str, Any]]],
    *,
    k: int,
) -> list[ResultItem]:
    """Score fusion (:func:`lmindexer.downstream.fusion.score_fusion`, equal weights) of the prefix-boosted text
    search and dense retrieval (both of live items): each leg's scores standardised over its own hits, averaged.

    The source is ``dense`` for an item only dense retrieval found, ``both`` for one both legs found, and otherwise
    what the boosted search says of it (text, generative or both)."""
    by_boost = {result.item_id: result for result in boosted_leg}
    by_dense = {item_id: document for item_id, _, document in nearest}
    legs = [[(result.item_id, result.score) for result in boosted_leg], [(i, score) for i, score, _ in nearest]]
    results = []
    for item_id, score in score_fusion(legs, k=k):
        boosted_result = by_boost.get(item_id)
        if boosted_result is None:
            sid, source = str(by_dense[item_id].get("sid", "")), "dense"
        else:
            sid, source = boosted_result.sid, "both" if item_id in by_dense else boosted_result.source
        results.append(ResultItem(item_id=item_id, sid=sid, score=score, source=source))
    return results


def _prefix_boosted(backend: SearchReader, text: str, beam: Ranked, *, k: int, weight: float) -> list[ResultItem]:
    """The engine's text search for ``text``, boosted for the ID prefixes of ``beam`` by their share of its mass."""
    sids = {item_id: sid for item_id, _, sid in beam}
    ranked = [(item_id, score) for item_id, score, _ in beam]
    boosts = prefix_boosts([(sids[i], s) for i, s in ranked if sids[i]], weight=weight)
    return boosted(backend.search_boosted(text, boosts, size=k), boosts)


def _rank_fused(backend: SearchReader, text: str, beam: Ranked, *, k: int, limits: ServingLimits) -> list[ResultItem]:
    """``beam`` and the engine's text search for ``text`` fused by reciprocal rank, live items only."""
    ranked = [(item_id, score) for item_id, score, _ in beam]
    hits = backend.search_text(text, size=max(k, limits.blend_candidates))
    live = backend.get_many(item_id for item_id, _ in ranked)
    live.update({hit.item_id: hit.document for hit in hits})
    return fuse(ranked, hits, live, k=k, rrf_k=limits.rrf_k)


def fuse(
    generative: Sequence[tuple[str, float]],
    text: Sequence[TextHit],
    live: Mapping[str, Mapping[str, Any]],
    *,
    k: int,
    rrf_k: int,
) -> list[ResultItem]:
    """Reciprocal rank fusion of the generative ranking and the text ranking, live items only.

    Each list adds ``1 / (rrf_k + rank)`` for the items it ranks; a generative result without a live document
    (deleted since the model was trained) is dropped before ranks are counted, so it takes no one's place. The sid
    is the live document's: the index is what is live now.
    """
    generated = [item_id for item_id, _ in generative if item_id in live]
    matched = [hit.item_id for hit in text]
    documents = {**{hit.item_id: hit.document for hit in text}, **{i: live[i] for i in generated}}
    in_generated, in_matched = set(generated), set(matched)
    results = []
    for item_id, score in reciprocal_rank_fusion([generated, matched], k=k, rrf_k=rrf_k):
        both = item_id in in_generated and item_id in in_matched
        source: Source = "both" if both else "generative" if item_id in in_generated else "text"
        sid = str(documents[item_id].get("sid", ""))
        results.append(ResultItem(item_id=item_id, sid=sid, score=score, source=source))
    return results


def boosted(found: BoostedSearch, boosts: PrefixBoosts) -> list[ResultItem]:
    """Engine hits of a prefix-boosted search as results; the source says what earned each its place."""
    results = []
    for hit in found.hits:
        added = found.text_scale * boosts.of([int(c) for c in hit.document.get("codes", [])])
        # Engine scores are float32: what is left of the score after the boost counts as text above a small margin.
        matched_words = hit.score - added > 1e-4 * max(hit.score, 1e-12)
        source: Source = "text" if added <= 0 else "both" if matched_words else "generative"
        results.append(
            ResultItem(item_id=hit.item_id, sid=str(hit.document.get("sid", "")), score=hit.score, source=source)
        )
    return results
