"""``GET /items/{item_id}/similar``: live items whose semantic ID shares the longest prefix with an item's."""

import unicodedata
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH
from lmindexer.search.reader import SearchReader
from lmindexer.serving.limits import ServingLimits
from lmindexer.serving.schemas import SimilarItem, SimilarResponse, error_responses, query_k
from lmindexer.serving.state import ServingStateDependency, required


def items_router(limits: ServingLimits) -> APIRouter:
    """``/items/{item_id}/similar``, its k bounded by ``limits`` alone: no model answers it."""
    router = APIRouter()
    k_cap = limits.k_cap(None)
    SimilarK = query_k(k_cap)
    default_k = limits.default_k_within(k_cap)

    @router.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarResponse,
        responses=error_responses(404, 422, 503),
        tags=["search"],
        summary="Live items whose semantic ID shares the longest prefix with this item's",
    )
    def similar(
        state: ServingStateDependency,
        item_id: str = PathParam(..., min_length=1, max_length=MAX_ITEM_ID_LENGTH, description="the item"),
        k: SimilarK = default_k,
    ) -> SimilarResponse:
        backend = required(state.backend, "no search backend is configured on this server")
        item_id = unicodedata.normalize("NFC", item_id)  # catalogue ids are stored in NFC
        document = backend.get(item_id)
        if document is None:
            raise HTTPException(status_code=404, detail=f"item {item_id!r} is not in the live search index")
        results = _sharing_longest_prefix(backend, item_id, document, k)
        return SimilarResponse(item_id=item_id, sid=str(document["sid"]), results=results)

    return router


def _sharing_longest_prefix(backend: SearchReader, item_id: str, document: dict[str, Any], k: int) -> list[SimilarItem]:
    """Up to ``k`` other live items, longest prefix shared with ``document``'s ID first, then by sid."""
    sid = str(document["sid"])
    codes = [int(c) for c in document["codes"]]
    found: dict[str, SimilarItem] = {}
    for level in range(len(codes), 0, -1):
        # Sorted by sid, the first k + 1 + len(found) documents of this prefix hold the k first new ones: at
        # most len(found) + 1 of them (found earlier, or the item itself) are skipped.
        for other in backend.items_sharing_prefix(sid, level, size=k + 1 + len(found)):
            other_id = str(other["item_id"])
            if other_id == item_id or other_id in found:
                continue
            found[other_id] = SimilarItem(
                item_id=other_id,
                sid=str(other["sid"]),
                shared_levels=_shared_levels(codes, [int(c) for c in other["codes"]]),
                title=other.get("title"),
            )
            if len(found) == k:
                break
        if len(found) == k:
            break
    return sorted(found.values(), key=lambda r: (-r.shared_levels, r.sid, r.item_id))


def _shared_levels(codes: Sequence[int], other: Sequence[int]) -> int:
    shared = 0
    for a, b in zip(codes, other, strict=False):
        if a != b:
            break
        shared += 1
    return shared
