"""The HTTP API's request and response bodies, and the types of its bounded parameters.

Typed input is strict: in a JSON body a string or a boolean where an integer belongs is refused, not coerced; in a
query string (text by nature) an integer must be written in plain digits. The bounded types are built per
application (:func:`query_k`, :func:`recommend_request`) from its :class:`~lmindexer.serving.limits.ServingLimits`,
so the OpenAPI document declares the same bounds (maxLength, maximum, maxItems) the server applies.

No ``from __future__ import annotations`` here: the bounds inside the annotations of :func:`recommend_request`'s
model are local to that call, and must be evaluated where it defines the model.
"""

import os
import re
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH

Source = Literal["generative", "text", "both", "dense"]
SearchMode = Literal["generative", "rrf", "prefix-boost", "dense", "hybrid"]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_LENGTH)]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong")


class ResultItem(BaseModel):
    item_id: str
    sid: str = Field(description="the item's semantic ID")
    score: float = Field(
        description="mode=generative: log-probability of the ID (<= 0); mode=rrf: reciprocal rank fusion score; "
        "mode=hybrid: score fusion (the mean of the two legs' standardised scores); mode=prefix-boost: the engine's "
        "text score plus the prefix boost; mode=dense: cosine similarity of the query's and the item's embeddings"
    )
    source: Source = Field(
        description="which ranking found the item: generative, text (BM25) or both; with mode=prefix-boost, "
        "generative means a boosted ID prefix and no matching word; dense: dense retrieval alone found it (with "
        "mode=hybrid, both means dense retrieval and the prefix-boosted text search found it, and otherwise the "
        "source is what that search says)"
    )


class SearchResponse(BaseModel):
    query: str
    k: int
    mode: SearchMode
    blend: bool = Field(description="true when mode is rrf (the older name of that mode)")
    results: list[ResultItem] = Field(description="best first")


_DIGITS = re.compile(r"-?[0-9]+")


def _written_in_digits(value: Any) -> Any:
    """Query-string integers: plain decimal digits only, so ``true``, ``5.0``, `` 5`` or ``1_0`` are not read as
    numbers (pydantic's lax integer parsing would take all but the first)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise PydanticCustomError("int_parsing", "Input should be a valid integer, written in digits")
    return value


def query_k(cap: int, description: str = "results wanted") -> Any:
    """The type of a ``k`` query parameter between 1 and ``cap``.

    The bounds come before the digits check: applied after a validator, pydantic would publish them in the OpenAPI
    document as ``ge``/``le`` instead of ``minimum``/``maximum``.
    """
    return Annotated[int, Field(ge=1, le=cap), BeforeValidator(_written_in_digits), Query(description=description)]


def recommend_request(max_history: int, k_cap: int) -> type[BaseModel]:
    """The /recommend body, its bounds those of the app. Strict: a string or a boolean is not an integer."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        history: list[ItemId] = Field(
            min_length=1, max_length=max_history, description="the user's item_ids, most recent last"
        )
        k: Annotated[int, Field(ge=1, le=k_cap)] | None = Field(
            None, description="results wanted (default: the server's default k)"
        )
        exclude_seen: bool = Field(
            True,
            description="leave out the items of the history (default); false lets the model recommend one again. "
            "With it on, the beam search itself skips them: k unseen items come back whenever the catalogue has them",
        )

    return RecommendRequest


class RecommendResponse(BaseModel):
    k: int
    results: list[ResultItem] = Field(description="best first")
    unknown_items: list[str] = Field(description="history items the recommender does not know; they were skipped")
    items_used: int = Field(description="known history items the model read (its most recent window)")


class SimilarItem(BaseModel):
    item_id: str
    sid: str
    shared_levels: int = Field(description="leading codes the item's ID shares with the requested item's")
    title: str | None = None


class SimilarResponse(BaseModel):
    item_id: str
    sid: str
    results: list[SimilarItem] = Field(description="longest shared prefix first, then by sid")


class ModelHealth(BaseModel):
    loaded: bool
    snapshot_version: str | None = Field(None, description="the ID space (snapshot) the model writes IDs of")
    id_method: str | None = Field(None, description="the indexer method of that ID space")
    items: int | None = Field(None, description="items the model can return")
    beam_size: int | None = None
    max_k: int | None = Field(None, description="the largest k a request may ask this model for")


class SearchHealth(BaseModel):
    configured: bool
    reachable: bool | None = None
    alias: str | None = None
    live_index: str | None = None
    snapshot_version: str | None = Field(None, description="the ID space of the live index")
    documents: int | None = Field(None, description="documents behind the alias")


class DenseHealth(BaseModel):
    loaded: bool
    items: int | None = Field(None, description="items the dense index holds")
    encoder: str | None = Field(None, description="the sentence encoder that embeds items and queries")
    built_at: str | None = Field(None, description="when the index was built (items added since are not in it)")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: a configured component cannot be reached")
    retriever: ModelHealth
    recommender: ModelHealth
    search: SearchHealth
    dense: DenseHealth = Field(default_factory=lambda: DenseHealth(loaded=False))
    warnings: list[str] = Field(default_factory=list)
    process: int = Field(
        default_factory=os.getpid, description="the serving process that answered (one of `lmindexer serve --workers`)"
    )


_ERROR_DESCRIPTIONS = {
    400: "malformed request (e.g. invalid JSON)",
    404: "unknown item",
    413: "the request body is larger than the server's max_body_bytes",
    422: "invalid input",
    500: "internal error (details in the server log)",
    503: "a component this endpoint needs is not configured or not reachable",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses, each with the :class:`ErrorResponse` body."""
    return {status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}
