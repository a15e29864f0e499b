"""Reading what is live behind an alias: documents by item id, items sharing an ID prefix, free-text and
prefix-boosted search, counts. What serving needs, and nothing that changes an index (see
:mod:`lmindexer.search.backend` for publishing, the alias swap, pruning and rollback)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

from lmindexer.downstream.fusion import PrefixBoosts, prefix_terms
from lmindexer.search.clients import Engine, connect
from lmindexer.search.config import SearchConfig, load_search_config
from lmindexer.search.documents import MAX_PREFIX_LEVELS, META_KEY, TEXT_FIELDS, parse_prefix, prefix_field
from lmindexer.search.errors import SearchError
from lmindexer.search.results import BoostedSearch, IndexInfo, TextHit

MAX_LOOKUP_SIZE = 10_000


class SearchReader:
    """Reads one alias on one engine. Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: SearchConfig | Mapping[str, Any] | None = None, *, client: Any = None) -> None:
        self.config = load_search_config(config)
        self.engine: Engine = connect(self.config, client)

    @property
    def alias(self) -> str:
        return self.config.alias

    @property
    def client(self) -> Any:
        """The underlying ``OpenSearch`` / ``Elasticsearch`` client."""
        return self.engine.client

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server_info(self) -> dict[str, Any]:
        """The engine's root endpoint (name, version); a cheap connectivity check."""
        with self.engine.translate(f"connecting to {self.config.describe()}"):
            return self.engine.info()

    def live_index(self) -> str | None:
        """The index the alias points at, ``None`` if the alias does not exist."""
        targets = self._alias_targets()
        if len(targets) > 1:
            raise SearchError(f"alias {self.alias!r} points at several indexes ({', '.join(targets)}); expected one")
        return targets[0] if targets else None

    def _alias_targets(self) -> list[str]:
        with self.engine.translate(f"reading alias {self.alias!r}"):
            return self.engine.alias_targets(self.alias)

    def list_indexes(self, *, doc_counts: bool = True) -> list[IndexInfo]:
        """This alias's indexes, newest first, with document counts and which one is live."""
        live = set(self._alias_targets())
        infos = []
        for name, meta in self._managed_indexes():
            count = None
            if doc_counts:
                with self.engine.translate(f"counting documents of {name}"):
                    count = self.engine.count(name)
            infos.append(
                IndexInfo(
                    name=name,
                    live=name in live,
                    verified=bool(meta.get("verified")),
                    created_at=str(meta.get("created_at", "")),
                    snapshot_version=meta.get("snapshot_version"),
                    run_id=meta.get("run_id"),
                    doc_count=count,
                )
            )
        return infos

    def _managed_indexes(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, our _meta) of the indexes created for this alias, newest first.

        ``<alias>-*`` also matches indexes of a longer alias (``catalog-eu-...``) and indexes made by others; only
        the ``_meta`` record says which ones are ours.
        """
        with self.engine.translate(f"listing indexes of alias {self.alias!r}"):
            indexes = self.engine.get_indexes(f"{self.alias}-*")
        managed = []
        for name, description in indexes.items():
            meta = ((description.get("mappings") or {}).get("_meta") or {}).get(META_KEY)
            if isinstance(meta, Mapping) and meta.get("alias") == self.alias:
                managed.append((name, dict(meta)))
        managed.sort(key=lambda entry: (str(entry[1].get("created_at", "")), entry[0]), reverse=True)
        return managed

    def _index_meta(self, index: str) -> dict[str, Any]:
        with self.engine.translate(f"reading the mapping of {index}"):
            mapping = self.engine.get_mapping(index)
        meta = (mapping.get("_meta") or {}).get(META_KEY)
        return dict(meta) if isinstance(meta, Mapping) else {}

    # -- lookups ---------------------------------------------------------------------------------------------------

    def get(self, item_id: str) -> dict[str, Any] | None:
        """The live document of an item, ``None`` if there is none."""
        with self.engine.translate(f"reading {item_id!r} from alias {self.alias!r}"):
            return self.engine.get(self.alias, item_id)

    def get_many(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The live documents of those items that have one, by item_id (one request)."""
        wanted = sorted({item_id for item_id in item_ids if isinstance(item_id, str) and item_id})
        if not wanted:
            return {}
        with self.engine.translate(f"reading {len(wanted)} documents from alias {self.alias!r}"):
            return self.engine.mget(self.alias, wanted)

    def search_text(self, query: str, size: int = 10) -> list[TextHit]:
        """Live documents matching free text on their title and text, best first (the engine's BM25 relevance).

        The text goes into a structured ``multi_match`` query as data: query-string operators, field names and
        wildcards in it are analysed as words, never interpreted.
        """
        self._check_text_search(query, size)
        body = self._text_query(query)
        with self.engine.translate(f"searching alias {self.alias!r} for text"):
            hits = self.engine.search_hits(
                self.alias, query=body, size=size, sort=["_score", {"item_id": "asc"}], track_scores=True
            )
        return [TextHit(dict(hit["_source"]), float(hit.get("_score") or 0.0)) for hit in hits]

    def _text_query(self, query: str) -> dict[str, Any]:
        return {
            "multi_match": {
                "query": query,
                "fields": [f"{name}^{boost:g}" for name, boost in TEXT_FIELDS.items()],
                "type": "best_fields",
                # A document matching in both fields ranks above one matching as well in only one of them.
                "tie_breaker": 0.3,
            }
        }

    def search_boosted(self, query: str, boosts: PrefixBoosts, size: int = 10) -> BoostedSearch:
        """The text search with the generative model's prefix boosts added (:mod:`lmindexer.downstream.fusion`).

        Two requests: the plain text search's best score sets the scale, then one ``bool`` query adds, for each
        boosted prefix, a ``constant_score`` ``term`` query on its ``sid_prefix_<level>`` field worth that prefix's
        boost times the scale. A document matching no word of the query but a boosted prefix is a hit too. The
        prefixes are values in the query body, like the text.
        """
        self._check_text_search(query, size)
        if boosts.levels > MAX_PREFIX_LEVELS:
            raise SearchError(f"prefix boosts name {boosts.levels} levels; at most {MAX_PREFIX_LEVELS} are published")
        best = self.search_text(query, size=1)
        scale = best[0].score if best and best[0].score > 0 else 1.0
        clauses: list[dict[str, Any]] = [self._text_query(query)]
        clauses += [
            {"constant_score": {"filter": {"term": {prefix_field(level): prefix}}, "boost": boost}}
            for level, prefix, boost in prefix_terms(boosts, scale)
        ]
        body = {"bool": {"should": clauses, "minimum_should_match": 1}}
        with self.engine.translate(f"searching alias {self.alias!r} for text with ID-prefix boosts"):
            hits = self.engine.search_hits(
                self.alias, query=body, size=size, sort=["_score", {"item_id": "asc"}], track_scores=True
            )
        return BoostedSearch([TextHit(dict(hit["_source"]), float(hit.get("_score") or 0.0)) for hit in hits], scale)

    def _check_text_search(self, query: str, size: int) -> None:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("a text search needs a non-empty query")
        if not 1 <= size <= MAX_LOOKUP_SIZE:
            raise SearchError(f"size must be between 1 and {MAX_LOOKUP_SIZE}, got {size}")

    def items_sharing_prefix(self, sid: str, level: int, size: int = 10) -> list[dict[str, Any]]:
        """Live documents whose semantic ID shares the first ``level`` codes of ``sid``, ordered by sid."""
        if not 1 <= size <= MAX_LOOKUP_SIZE:
            raise SearchError(f"size must be between 1 and {MAX_LOOKUP_SIZE}, got {size}")
        prefix = parse_prefix(sid, level)
        with self.engine.translate(f"searching alias {self.alias!r} for prefix {prefix!r}"):
            return self.engine.search(
                self.alias,
                query={"term": {prefix_field(level): prefix}},
                size=size,
                sort=[{"sid": "asc"}, {"item_id": "asc"}],
            )

    def count(self) -> int:
        """Documents behind the alias."""
        with self.engine.translate(f"counting documents of alias {self.alias!r}"):
            return self.engine.count(self.alias)
