"""``POST /recommend``: next items for a user's history, from the generative recommender."""

import unicodedata
from collections.abc import Sequence

from fastapi import APIRouter, HTTPException

from lmindexer.errors import ConfigError
from lmindexer.serving.limits import ServingLimits
from lmindexer.serving.schemas import RecommendResponse, ResultItem, error_responses, recommend_request
from lmindexer.serving.state import Ranked, ServingStateDependency, required


def recommend_router(limits: ServingLimits, k_cap: int) -> APIRouter:
    """``/recommend``, its history at most ``limits.max_history`` items long and its k at most ``k_cap``."""
    router = APIRouter()
    RecommendRequest = recommend_request(limits.max_history, k_cap)

    @router.post(
        "/recommend",
        response_model=RecommendResponse,
        responses=error_responses(400, 422, 503),
        tags=["recommendation"],
        summary="Next items for a user's history, decoded by the generative recommender",
        description=f"1 to {limits.max_history} history items (send the most recent ones); k up to "
        f"{k_cap}; a body of at most {limits.max_body_bytes} bytes. Items the recommender does not know are "
        "skipped and listed in unknown_items; a history with no known item is refused (422). Items of the history "
        "are not recommended unless exclude_seen is false.",
    )
    def recommend(body: RecommendRequest, state: ServingStateDependency) -> RecommendResponse:
        served = required(state.recommender, "no recommender is loaded on this server")
        # Catalogue ids are stored in NFC, so a client's NFD spelling of "café" names the same item.
        history: list[str] = [unicodedata.normalize("NFC", item_id) for item_id in body.history]  # type: ignore[attr-defined]
        requested: int | None = body.k  # type: ignore[attr-defined]
        exclude_seen: bool = body.exclude_seen  # type: ignore[attr-defined]
        k = served.default_k if requested is None else requested
        trie = served.model.trie
        known = [item_id for item_id in history if item_id in trie]
        unknown = _unique([item_id for item_id in history if item_id not in trie])
        if not known:
            raise HTTPException(
                status_code=422,
                detail=f"none of the {len(history)} history items is known to the recommender: "
                "nothing to recommend from",
            )
        try:
            beam: Ranked = served.batcher.submit((tuple(known), exclude_seen))
        except ConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return RecommendResponse(
            k=k,
            results=[ResultItem(item_id=i, sid=sid, score=s, source="generative") for i, s, sid in beam[:k]],
            unknown_items=unknown,
            items_used=min(len(known), served.model.config.history_window),
        )

    return router


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))
