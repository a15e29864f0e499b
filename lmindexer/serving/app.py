"""The HTTP API: generative search and recommendation, items sharing an ID prefix, and health.

Any of the three components may be missing; an endpoint that needs a missing one answers 503, the others keep
working. Every error body is ``{"detail": "<message>"}``: 4xx messages say what was wrong with the request, and an
unexpected failure is a bare ``500 internal error`` whose details (exception, traceback) go to the server log only.

:func:`create_app` assembles the application: the components in one :class:`~lmindexer.serving.state.ServingState`,
the endpoints from the routers of :mod:`lmindexer.serving.routes`, the body limit and the error handling. Endpoints
are plain functions, so FastAPI runs them in its threadpool; each model's requests are batched by one worker thread
(:mod:`lmindexer.serving.state`).

Every request limit is a field of :class:`ServingLimits` and is declared in the OpenAPI document (maxLength,
maximum, maxItems), so clients and contract tests see the same bounds the server applies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.options import parse_config
from lmindexer.search.errors import SearchError
from lmindexer.search.reader import SearchReader
from lmindexer.serving.batching import Closed, Overloaded
from lmindexer.serving.body_limit import RequestBodyLimit
from lmindexer.serving.limits import ServingLimits
from lmindexer.serving.routes import health
from lmindexer.serving.routes.items import items_router
from lmindexer.serving.routes.recommend import recommend_router
from lmindexer.serving.routes.search import fuse, search_router
from lmindexer.serving.schemas import (
    HealthResponse,
    RecommendResponse,
    ResultItem,
    SearchResponse,
    SimilarResponse,
    error_responses,
    query_k,
    recommend_request,
)
from lmindexer.serving.state import ServingState

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"
BACKEND_UNAVAILABLE = "the search backend is unavailable"
_MAX_PROBLEMS = 5


def create_app(
    *,
    retriever: GenerativeModel | None,
    recommender: GenerativeModel | None,
    backend: SearchReader | None,
    limits: ServingLimits | Mapping[str, Any] | None = None,
    dense: DenseIndex | None = None,
) -> FastAPI:
    """The API over whichever components are given. The caller owns them (and closes the backend)."""
    limits = parse_config(ServingLimits, limits, what="serving limits")
    state = ServingState.build(
        retriever=retriever, recommender=recommender, backend=backend, limits=limits, dense=dense
    )
    app = FastAPI(
        lifespan=_lifespan,
        title="lmindexer",
        summary="Generative retrieval and recommendation over semantic IDs, hybrid search with the engine's text "
        "search and dense retrieval, and items sharing an ID prefix.",
        version="1",
        # Any request may be refused for its size, and any may fail unexpectedly.
        responses=error_responses(413, 500),
    )
    # Added first, so it runs inside InternalErrors: a failure in it is still a bare 500.
    app.add_middleware(RequestBodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(InternalErrors)
    _install_error_handlers(app)
    app.state.serving = state
    # Views of the state under the names callers read before it existed (load tests read the batchers' stats).
    app.state.limits = limits
    app.state.batchers = state.batchers()
    app.include_router(search_router(limits, state.k_cap(state.retriever)))
    app.include_router(recommend_router(limits, state.k_cap(state.recommender)))
    app.include_router(items_router(limits))
    app.include_router(health.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.serving.close()


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
]
