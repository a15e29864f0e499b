"""``GET /health``: the loaded components and their state."""

import logging

from fastapi import APIRouter

from lmindexer.search.errors import SearchError
from lmindexer.search.reader import SearchReader
from lmindexer.serving.schemas import DenseHealth, HealthResponse, ModelHealth, SearchHealth
from lmindexer.serving.state import ServingStateDependency

# The server logs under one name, the one docs/serving.md gives operators.
logger = logging.getLogger("lmindexer.serving.app")

router = APIRouter()


@router.get("/health", response_model=HealthResponse, tags=["health"], summary="Loaded components and their state")
def health(state: ServingStateDependency) -> HealthResponse:
    warnings: list[str] = []
    search_health = _search_health(state.backend, warnings)
    for role, served in (("retriever", state.retriever), ("recommender", state.recommender)):
        version = served.model.vocabulary.snapshot_version if served else None
        live_version = search_health.snapshot_version
        if version and live_version and version != live_version:
            warnings.append(f"the {role} writes IDs of snapshot {version}; the live index holds {live_version}")
    return HealthResponse(
        status="degraded" if search_health.reachable is False else "ok",
        retriever=state.retriever.health() if state.retriever else ModelHealth(loaded=False),
        recommender=state.recommender.health() if state.recommender else ModelHealth(loaded=False),
        search=search_health,
        dense=state.dense.health() if state.dense else DenseHealth(loaded=False),
        warnings=warnings,
    )


def _search_health(backend: SearchReader | None, warnings: list[str]) -> SearchHealth:
    """The search backend's state; a warning added to ``warnings`` when nothing is published yet."""
    search_health = SearchHealth(configured=backend is not None)
    if backend is None:
        return search_health
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
    return search_health
