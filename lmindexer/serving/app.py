"""The HTTP API: generative search and recommendation, items sharing an ID prefix, and health.

Any of the three components may be missing; an endpoint that needs a missing one answers 503, the others keep
working. Every error body is ``{"detail": "<message>"}``: 4xx messages say what was wrong with the request, and an
unexpected failure is a bare ``500 internal error`` whose details (exception, traceback) go to the server log only.

Endpoints are plain functions, so FastAPI runs them in its threadpool. Each model has one worker thread that
gathers the concurrent requests for it into one batched beam search (:mod:`lmindexer.serving.batching`; bounded
wait, bounded batch, bounded queue): one batched forward pass fills the cores far better than requests taking turns,
a Hugging Face fast tokenizer fails ("Already borrowed") when two threads use it at once, and concurrent forward
passes would only compete for the same CPU cores.

Every request limit is a field of :class:`ServingLimits` and is declared in the OpenAPI document (maxLength,
maximum, maxItems), so clients and contract tests see the same bounds the server applies. Typed input is strict: in
a JSON body a string or a boolean where an integer belongs is refused, not coerced; in a query string (text by
nature) an integer must be written in plain digits.

Annotations here are evaluated when the endpoints are defined (no ``from __future__ import annotations``): the
endpoints' parameter types carry the limits of the app being built, which are local to :func:`create_app`.
"""

import logging
import re
import threading
import unicodedata
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Self

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmindexer.catalog.items import MAX_ITEM_ID_LENGTH
from lmindexer.downstream.fusion import (
    PREFIX_BOOST_WEIGHT,
    RRF_K,
    PrefixBoosts,
    prefix_boosts,
    reciprocal_rank_fusion,
)
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.errors import ConfigError
from lmindexer.options import parse_config
from lmindexer.search.errors import SearchError
from lmindexer.search.reader import SearchReader
from lmindexer.search.results import BoostedSearch, TextHit
from lmindexer.serving.batching import Closed, MicroBatcher, Overloaded
from lmindexer.serving.body_limit import RequestBodyLimit

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"
BACKEND_UNAVAILABLE = "the search backend is unavailable"
# /items/{id}/similar needs no model, so no beam size bounds its k.
SIMILAR_MAX_K = 100
_MAX_PROBLEMS = 5

Source = Literal["generative", "text", "both"]
SearchMode = Literal["generative", "rrf", "prefix-boost"]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ITEM_ID_LENGTH)]


class ServingLimits(BaseModel):
    """Bounds on what one request may ask for: the one place each request limit is declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="largest request body, in bytes; a larger one is refused (413) before it is read. The default "
        "holds a /recommend body of 200 item_ids of 256 characters even at 4 bytes of UTF-8 each",
    )
    max_query_chars: int = Field(512, ge=1, le=100_000, description="longest /search query, in characters")
    max_history: int = Field(200, ge=1, le=100_000, description="most items a /recommend history may hold")
    max_k: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="most results a request may ask for; each model's beam size caps it further (None: the beam "
        f"size; /items/.../similar: {SIMILAR_MAX_K})",
    )
    default_k: int = Field(10, ge=1, le=1000, description="results returned when a request gives no k")
    blend_candidates: int = Field(50, ge=1, le=1000, description="text-search hits fused into a blended /search")
    rrf_k: int = Field(RRF_K, ge=1, le=10_000, description="reciprocal rank fusion constant: 1 / (rrf_k + rank)")
    batch_max_size: int = Field(
        16, ge=1, le=1024, description="most concurrent requests for one model decoded as one batched beam search"
    )
    batch_max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="longest a request waits for others to share its batch (requests that queued while the previous "
        "batch ran join at once)",
    )
    max_pending_requests: int = Field(
        256, ge=1, le=100_000, description="requests that may wait for one model; one more is refused with 503"
    )
    prefix_boost_weight: float = Field(
        PREFIX_BOOST_WEIGHT,
        ge=0,
        le=100,
        description="mode=prefix-boost: what a document whose every ID prefix holds all of the beam's mass gains, in "
        "units of the query's best text score",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_k is not None and self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self

    def k_cap(self, beam_size: int | None) -> int:
        """The largest k an endpoint accepts: max_k, bounded by the beam size of the model answering it."""
        if beam_size is None:
            return self.max_k or SIMILAR_MAX_K
        return min(self.max_k or beam_size, beam_size)


# -- request and response bodies --------------------------------------------------------------------------------------


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong")


class ResultItem(BaseModel):
    item_id: str
    sid: str = Field(description="the item's semantic ID")
    score: float = Field(
        description="mode=generative: log-probability of the ID (<= 0); mode=rrf: reciprocal rank fusion score; "
        "mode=prefix-boost: the engine's text score plus the prefix boost"
    )
    source: Source = Field(
        description="which ranking found the item: generative, text (BM25) or both; with mode=prefix-boost, "
        "generative means a boosted ID prefix and no matching word"
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
            "With it on, fewer than k results come back when the model's beam holds mostly seen items",
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


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: a configured component cannot be reached")
    retriever: ModelHealth
    recommender: ModelHealth
    search: SearchHealth
    warnings: list[str] = Field(default_factory=list)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "malformed request (e.g. invalid JSON)"),
        (404, "unknown item"),
        (413, "the request body is larger than the server's max_body_bytes"),
        (422, "invalid input"),
        (500, "internal error (details in the server log)"),
        (503, "a component this endpoint needs is not configured or not reachable"),
    )
}


# -- the served models ------------------------------------------------------------------------------------------------


# An item of a model's whole beam: (item_id, log-probability, semantic ID).
Ranked = list[tuple[str, float, str]]


@dataclass
class _Served:
    """A model with the bounds on k for it, the lock that serialises its use, and the batcher that feeds it."""

    model: GenerativeModel
    cap: int
    default_k: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: MicroBatcher | None = None

    def _with_sids(self, found: Sequence[Sequence[tuple[str, float]]]) -> list[Ranked]:
        return [[(item_id, score, self.model.sid_of(item_id) or "") for item_id, score in r] for r in found]

    def search_batch(self, texts: Sequence[str]) -> list[Ranked]:
        """The whole beam for each query: every k a request may ask for is a prefix of it."""
        with self.lock:
            return self._with_sids(self.model.search(list(texts), k=self.model.config.beam_size))

    def recommend_batch(self, requests: Sequence[tuple[tuple[str, ...], bool]]) -> list[Ranked]:
        """The whole beam for each (history, exclude_seen), the history's items left out where asked."""
        found: list[Ranked] = [[] for _ in requests]
        with self.lock:
            for exclude_seen in (False, True):
                rows = [n for n, (_, flag) in enumerate(requests) if flag is exclude_seen]
                if not rows:
                    continue
                histories = [list(requests[n][0]) for n in rows]
                beams = self.model.recommend(histories, k=self.model.config.beam_size, exclude_seen=exclude_seen)
                for n, ranked in zip(rows, self._with_sids(beams), strict=True):
                    found[n] = ranked
        return found

    def health(self) -> ModelHealth:
        vocabulary = self.model.vocabulary
        return ModelHealth(
            loaded=True,
            snapshot_version=vocabulary.snapshot_version,
            id_method=vocabulary.method,
            items=len(self.model.trie),
            beam_size=self.model.config.beam_size,
            max_k=self.cap,
        )


def _served(model: GenerativeModel | None, task: str, role: str, limits: ServingLimits) -> _Served | None:
    if model is None:
        return None
    if model.config.task != task:
        raise ConfigError(f"the {role} must be a {task} model; the one given is a {model.config.task} model")
    cap = limits.k_cap(model.config.beam_size)
    served = _Served(model, cap, min(limits.default_k, cap))
    served.batcher = MicroBatcher(
        served.search_batch if task == "retrieval" else served.recommend_batch,
        max_batch=limits.batch_max_size,
        max_wait_s=limits.batch_max_wait_ms / 1000,
        max_pending=limits.max_pending_requests,
        name=f"lmindexer-{role}",
    )
    return served


def _need(component: Any, message: str) -> Any:
    if component is None:
        raise HTTPException(status_code=503, detail=message)
    return component


def _unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _shared_levels(codes: Sequence[int], other: Sequence[int]) -> int:
    shared = 0
    for a, b in zip(codes, other, strict=False):
        if a != b:
            break
        shared += 1
    return shared


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


# -- error handling ---------------------------------------------------------------------------------------------------

_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie"}


def _where(loc: Sequence[Any]) -> str:
    if not loc:
        return "request"
    kind, rest = loc[0], list(loc[1:])
    if kind == "body":
        if not rest:
            return "request body"
        name = str(rest[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest[1:])
        return f"body field {name!r}"
    return f"{_LOCATIONS.get(str(kind), str(kind))} {'.'.join(str(p) for p in rest)!r}"


def describe_request_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str]:
    """(status, message) for FastAPI's validation errors: 400 for a body that is not JSON, else 422.

    The messages never echo the input back: it may be large, and it is the caller's own data anyway.
    """
    problems = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error")
            return 400, "the request body is not valid JSON" + (f": {reason}" if reason else "")
        problems.append(f"{_where(error.get('loc') or ())}: {error.get('msg', 'invalid')}")
    more = len(problems) - _MAX_PROBLEMS
    message = "; ".join(problems[:_MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
    return 422, message or "invalid request"


class InternalErrors:
    """Turns any exception that escapes the application into a bare 500; the details go to the log only.

    Starlette's own handler for ``Exception`` re-raises after answering (so servers log it twice and test clients
    raise); this middleware answers and logs once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            logger.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # the status line is out; only the server can end this response
            await JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = describe_request_errors(exc.errors())
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Overloaded)
    @app.exception_handler(Closed)
    async def model_busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"the server is busy: {exc}; retry shortly"}, status_code=503)

    @app.exception_handler(SearchError)
    async def search_unavailable(request: Request, exc: SearchError) -> JSONResponse:
        # The message names hosts, indexes and engine errors: useful in the log, not to a caller.
        logger.warning("search backend error serving %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": BACKEND_UNAVAILABLE}, status_code=503)


def serving_threads(models: int, threads: int | None = None) -> int:
    """Set and return torch's threads for a process serving ``models`` models. Each model decodes one request at a
    time, under its own lock, so up to ``models`` requests compute at once: each gets ``threads`` if given, else its
    share of the cores (``LMINDEXER_THREADS``, else the process's cores divided by ``models``; see
    :mod:`lmindexer.threads`)."""
    from lmindexer.threads import set_threads, threads_per_task

    chosen = threads if threads is not None else threads_per_task(max(1, models))
    set_threads(chosen)
    return chosen


# -- the application --------------------------------------------------------------------------------------------------


def create_app(
    *,
    retriever: GenerativeModel | None,
    recommender: GenerativeModel | None,
    backend: SearchReader | None,
    limits: ServingLimits | Mapping[str, Any] | None = None,
) -> FastAPI:
    """The API over whichever components are given. The caller owns them (and closes the backend)."""
    limits = parse_config(ServingLimits, limits, what="serving limits")
    searcher = _served(retriever, "retrieval", "retriever", limits)
    advisor = _served(recommender, "recommendation", "recommender", limits)
    search_cap = searcher.cap if searcher else limits.k_cap(None)
    search_default = searcher.default_k if searcher else min(limits.default_k, search_cap)
    similar_cap = limits.k_cap(None)
    similar_default = min(limits.default_k, similar_cap)
    recommend_cap = advisor.cap if advisor else limits.k_cap(None)
    RecommendRequest = recommend_request(limits.max_history, recommend_cap)
    SearchK = query_k(search_cap)
    SimilarK = query_k(similar_cap)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for served in (searcher, advisor):
            if served is not None and served.batcher is not None:
                served.batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="lmindexer",
        summary="Generative retrieval and recommendation over semantic IDs, and items sharing an ID prefix.",
        version="1",
        # Any request may be refused for its size, and any may fail unexpectedly.
        responses={status: _ERRORS[status] for status in (413, 500)},
    )
    # Added first, so it runs inside InternalErrors: a failure in it is still a bare 500.
    app.add_middleware(RequestBodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(InternalErrors)
    _install_error_handlers(app)
    app.state.limits = limits
    app.state.batchers = {role: s.batcher for role, s in (("retriever", searcher), ("recommender", advisor)) if s}

    @app.get(
        "/search",
        response_model=SearchResponse,
        responses={status: _ERRORS[status] for status in (422, 503)},
        tags=["retrieval"],
        summary="Items for a text query, decoded by the generative retriever",
    )
    def search(
        q: str = Query(..., min_length=1, max_length=limits.max_query_chars, description="the query text"),
        k: SearchK = search_default,
        mode: Annotated[
            SearchMode | None,
            Query(
                description="generative (default): the retriever's IDs; rrf: its beam and the engine's BM25 text "
                "search fused by reciprocal rank, live items only; prefix-boost: the engine's text search with a boost "
                "for documents whose ID prefixes the retriever predicts (term queries on the published prefix fields)",
            ),
        ] = None,
        blend: bool = Query(False, description="the older name of mode=rrf"),
    ) -> SearchResponse:
        served: _Served = _need(searcher, "no retriever is loaded on this server")
        text = q.strip()
        if not text:
            raise HTTPException(status_code=422, detail="query parameter 'q' must contain text, not only spaces")
        if blend and mode not in (None, "rrf"):
            detail = f"blend=true means mode=rrf; it cannot be used with mode={mode}"
            raise HTTPException(status_code=422, detail=detail)
        chosen: SearchMode = "rrf" if blend else mode or "generative"
        if chosen == "generative":
            beam: Ranked = served.batcher.submit(text)
            results = [ResultItem(item_id=i, sid=sid, score=s, source="generative") for i, s, sid in beam[:k]]
            return SearchResponse(query=text, k=k, mode=chosen, blend=False, results=results)
        # Checked before decoding: a request that can only end in 503 costs no beam search.
        search_backend: SearchReader = _need(
            backend, f"{'blend=true' if blend else f'mode={chosen}'} needs the search backend, which is not configured"
        )
        beam = served.batcher.submit(text)
        # The beam up to the cap: items that turn out deleted must not leave the fused list short, and every
        # predicted prefix gets its share of the beam's mass.
        ranked = [(item_id, score) for item_id, score, _ in beam[: served.cap]]
        sids = {item_id: sid for item_id, _, sid in beam[: served.cap]}
        if chosen == "prefix-boost":
            boosts = prefix_boosts([(sids[i], s) for i, s in ranked if sids[i]], weight=limits.prefix_boost_weight)
            results = boosted(search_backend.search_boosted(text, boosts, size=k), boosts)
            return SearchResponse(query=text, k=k, mode=chosen, blend=False, results=results)
        hits = search_backend.search_text(text, size=max(k, limits.blend_candidates))
        live = search_backend.get_many(item_id for item_id, _ in ranked)
        live.update({hit.item_id: hit.document for hit in hits})
        results = fuse(ranked, hits, live, k=k, rrf_k=limits.rrf_k)
        return SearchResponse(query=text, k=k, mode=chosen, blend=True, results=results)

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={status: _ERRORS[status] for status in (400, 422, 503)},
        tags=["recommendation"],
        summary="Next items for a user's history, decoded by the generative recommender",
        description=f"1 to {limits.max_history} history items (send the most recent ones); k up to "
        f"{recommend_cap}; a body of at most {limits.max_body_bytes} bytes. Items the recommender does not know are "
        "skipped and listed in unknown_items; a history with no known item is refused (422). Items of the history "
        "are not recommended unless exclude_seen is false.",
    )
    def recommend(body: RecommendRequest) -> RecommendResponse:
        served: _Served = _need(advisor, "no recommender is loaded on this server")
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

    @app.get(
        "/items/{item_id:path}/similar",
        response_model=SimilarResponse,
        responses={status: _ERRORS[status] for status in (404, 422, 503)},
        tags=["search"],
        summary="Live items whose semantic ID shares the longest prefix with this item's",
    )
    def similar(
        item_id: str = PathParam(..., min_length=1, max_length=MAX_ITEM_ID_LENGTH, description="the item"),
        k: SimilarK = similar_default,
    ) -> SimilarResponse:
        search_backend: SearchReader = _need(backend, "no search backend is configured on this server")
        item_id = unicodedata.normalize("NFC", item_id)  # catalogue ids are stored in NFC
        document = search_backend.get(item_id)
        if document is None:
            raise HTTPException(status_code=404, detail=f"item {item_id!r} is not in the live search index")
        sid = str(document["sid"])
        codes = [int(c) for c in document["codes"]]
        found: dict[str, SimilarItem] = {}
        for level in range(len(codes), 0, -1):
            # Sorted by sid, the first k + 1 + len(found) documents of this prefix hold the k first new ones: at
            # most len(found) + 1 of them (found earlier, or the item itself) are skipped.
            for other in search_backend.items_sharing_prefix(sid, level, size=k + 1 + len(found)):
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
        results = sorted(found.values(), key=lambda r: (-r.shared_levels, r.sid, r.item_id))
        return SimilarResponse(item_id=item_id, sid=sid, results=results)

    @app.get("/health", response_model=HealthResponse, tags=["health"], summary="Loaded components and their state")
    def health() -> HealthResponse:
        warnings: list[str] = []
        search_health = SearchHealth(configured=backend is not None)
        if backend is not None:
            search_health.alias = backend.alias
            try:
                live = next((info for info in backend.list_indexes(doc_counts=False) if info.live), None)
                search_health.live_index = live.name if live else backend.live_index()
                search_health.snapshot_version = live.snapshot_version if live else None
                search_health.documents = backend.count() if search_health.live_index else None
                search_health.reachable = True
            except SearchError as exc:
                logger.warning("health: %s", exc)
                search_health.reachable = False
            if search_health.reachable and search_health.live_index is None:
                warnings.append(f"alias {backend.alias!r} does not exist yet: nothing is published")
        models = {"retriever": searcher, "recommender": advisor}
        for role, served in models.items():
            version = served.model.vocabulary.snapshot_version if served else None
            live_version = search_health.snapshot_version
            if version and live_version and version != live_version:
                warnings.append(f"the {role} writes IDs of snapshot {version}; the live index holds {live_version}")
        return HealthResponse(
            status="degraded" if search_health.reachable is False else "ok",
            retriever=searcher.health() if searcher else ModelHealth(loaded=False),
            recommender=advisor.health() if advisor else ModelHealth(loaded=False),
            search=search_health,
            warnings=warnings,
        )

    return app


__all__ = [
    "HealthResponse",
    "RecommendResponse",
    "ResultItem",
    "SearchResponse",
    "ServingLimits",
    "SimilarResponse",
    "create_app",
    "fuse",
    "query_k",
    "recommend_request",
    "serving_threads",
]
