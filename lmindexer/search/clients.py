"""Thin adapters over the two official clients, so the backend speaks one vocabulary.

Each adapter uses its client's documented API: ``opensearch-py`` takes request bodies, ``elasticsearch`` 8/9 takes
one keyword argument per body field. Client exceptions are turned into :class:`SearchError` messages here, in one
place, so every operation reports an unreachable engine, a refused credential or a rejected request the same way.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lmindexer.search.config import SearchConfig
from lmindexer.search.errors import SearchError

BulkResponse = Iterator[tuple[bool, dict[str, Any]]]


def _body(response: Any) -> Any:
    """The decoded body of a response (the elasticsearch client wraps it, opensearch-py does not)."""
    return getattr(response, "body", response)


def _error_summary(body: Any) -> str:
    """``type: reason`` of an engine error body, or the body itself."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            causes = error.get("root_cause") or []
            cause = causes[0] if causes and isinstance(causes[0], Mapping) else error
            return f"{cause.get('type', 'error')}: {cause.get('reason', '')}".rstrip(": ")
        return str(error)
    return str(body)


class Engine(ABC):
    """The operations the backend needs, on one client."""

    name: str

    def __init__(self, config: SearchConfig, client: Any = None) -> None:
        self.config = config
        self.client = client if client is not None else self._connect()

    @abstractmethod
    def _connect(self) -> Any: ...

    # -- errors ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def client_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions the client raises for transport and API failures."""

    @abstractmethod
    def status_of(self, exc: BaseException) -> int | None:
        """The HTTP status of a client exception, ``None`` for connection-level failures."""

    @abstractmethod
    def body_of(self, exc: BaseException) -> Any: ...

    def is_not_found(self, exc: BaseException) -> bool:
        return isinstance(exc, self.client_errors()) and self.status_of(exc) == 404

    def describe(self, exc: BaseException) -> str:
        status = self.status_of(exc)
        if status is None:
            return f"cannot reach {self.config.describe()}: {type(exc).__name__}: {exc}"
        detail = _error_summary(self.body_of(exc))
        if status == 401:
            return f"authentication failed (401) at {self.config.describe()}; check the credentials: {detail}"
        if status == 403:
            return f"not authorised (403) at {self.config.describe()}; check the role's permissions: {detail}"
        return f"{status} {detail}"

    @contextmanager
    def translate(self, doing: str) -> Iterator[None]:
        """Re-raise client exceptions as :class:`SearchError` saying what was being done."""
        try:
            yield
        except SearchError:
            raise
        except self.client_errors() as exc:
            raise SearchError(f"{doing} failed: {self.describe(exc)}") from exc

    # -- operations ------------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return dict(_body(self.client.info()))

    @abstractmethod
    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def create_index(self, index: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None: ...

    def get_indexes(self, pattern: str) -> dict[str, Any]:
        """``GET <pattern>``: aliases, mappings and settings of each matching index (none: empty)."""
        try:
            return dict(_body(self.client.indices.get(index=pattern)))
        except self.client_errors() as exc:
            if self.is_not_found(exc):
                return {}
            raise

    def alias_targets(self, alias: str) -> list[str]:
        """Indexes the alias points at (none if the alias does not exist)."""
        try:
            return sorted(_body(self.client.indices.get_alias(name=alias)))
        except self.client_errors() as exc:
            if self.is_not_found(exc):
                return []
            raise

    def index_exists(self, index: str) -> bool:
        return bool(self.client.indices.exists(index=index))

    @abstractmethod
    def update_aliases(self, actions: list[dict[str, Any]]) -> None: ...

    def delete_index(self, index: str) -> None:
        self.client.indices.delete(index=index)

    def refresh(self, index: str) -> None:
        self.client.indices.refresh(index=index)

    @abstractmethod
    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None: ...

    def get_mapping(self, index: str) -> dict[str, Any]:
        response = dict(_body(self.client.indices.get_mapping(index=index)))
        return dict(next(iter(response.values()), {}).get("mappings", {}))

    def count(self, index: str) -> int:
        return int(_body(self.client.count(index=index))["count"])

    def get(self, index: str, item_id: str) -> dict[str, Any] | None:
        try:
            response = _body(self.client.get(index=index, id=item_id))
        except self.client_errors() as exc:
            # A missing document is "found": false; a missing index carries an error body and is a real failure.
            body = self.body_of(exc)
            if self.is_not_found(exc) and isinstance(body, Mapping) and "error" not in body:
                return None
            raise
        return dict(response["_source"])

    @abstractmethod
    def mget(self, index: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Sources of the documents found, by id."""

    def search(self, index: str, *, query: Mapping[str, Any], size: int, sort: list[Any]) -> list[dict[str, Any]]:
        """Sources of the hits, in order."""
        return [hit["_source"] for hit in self.search_hits(index, query=query, size=size, sort=sort)]

    @abstractmethod
    def search_hits(
        self, index: str, *, query: Mapping[str, Any], size: int, sort: list[Any], track_scores: bool = False
    ) -> list[dict[str, Any]]:
        """The hits as the engine returns them (``_id``, ``_score``, ``_source``), in order."""

    @abstractmethod
    def streaming_bulk(self, actions: Iterable[dict[str, Any]], **options: Any) -> BulkResponse: ...

    @abstractmethod
    def round_trip(self) -> Callable[[Any], Any]:
        """A function mapping a document to what the engine will hand back (the client's own JSON encoding)."""

    def close(self) -> None:
        self.client.close()

    # -- shared helpers --------------------------------------------------------------------------------------------

    def basic_auth(self) -> tuple[str, str] | None:
        if self.config.username is None:
            return None
        password = self.config.password.get_secret_value() if self.config.password is not None else ""
        return (self.config.username, password)


class OpenSearchEngine(Engine):
    """``opensearch-py``: OpenSearch and Amazon OpenSearch Service (basic auth or SigV4)."""

    name = "opensearch"

    def _connect(self) -> Any:
        from opensearchpy import OpenSearch

        config = self.config
        options: dict[str, Any] = {
            "verify_certs": config.verify_certs,
            "timeout": config.timeout,
            "max_retries": config.max_retries,
            "retry_on_timeout": True,
        }
        if config.ca_certs is not None:
            options["ca_certs"] = config.ca_certs
        if config.aws_auth == "sigv4":
            options["http_auth"] = self._sigv4()
        elif (auth := self.basic_auth()) is not None:
            options["http_auth"] = auth
        return OpenSearch(hosts=list(config.hosts), **options)

    def _sigv4(self) -> Any:
        import boto3
        from opensearchpy import Urllib3AWSV4SignerAuth

        session = boto3.Session()
        credentials = session.get_credentials()
        region = self.config.aws_region or session.region_name
        if credentials is None:
            raise SearchError("aws_auth 'sigv4': no AWS credentials found in the standard AWS configuration chain")
        if not region:
            raise SearchError("aws_auth 'sigv4' needs a region: set aws_region or AWS_DEFAULT_REGION")
        return Urllib3AWSV4SignerAuth(credentials, region, self.config.aws_service)

    def client_errors(self) -> tuple[type[BaseException], ...]:
        from opensearchpy.exceptions import OpenSearchException

        return (OpenSearchException,)

    def status_of(self, exc: BaseException) -> int | None:
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) else None

    def body_of(self, exc: BaseException) -> Any:
        info = getattr(exc, "info", None)
        return info if isinstance(info, Mapping) else getattr(exc, "error", str(exc))

    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None:
        self.client.indices.put_index_template(name=name, body=dict(body))

    def create_index(self, index: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        self.client.indices.create(index=index, body={"settings": dict(settings), "mappings": dict(mappings)})

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        self.client.indices.update_aliases(body={"actions": actions})

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self.client.indices.put_settings(index=index, body=dict(settings))

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        self.client.indices.put_mapping(index=index, body={"_meta": dict(meta)})

    def mget(self, index: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        response = self.client.mget(index=index, body={"ids": ids})
        return {doc["_id"]: doc["_source"] for doc in response["docs"] if doc.get("found")}

    def search_hits(
        self, index: str, *, query: Mapping[str, Any], size: int, sort: list[Any], track_scores: bool = False
    ) -> list[dict[str, Any]]:
        body = {"query": dict(query), "size": size, "sort": sort, "track_scores": track_scores}
        return list(self.client.search(index=index, body=body)["hits"]["hits"])

    def streaming_bulk(self, actions: Iterable[dict[str, Any]], **options: Any) -> BulkResponse:
        from opensearchpy.helpers import streaming_bulk

        return streaming_bulk(self.client, actions, **options)

    def round_trip(self) -> Callable[[Any], Any]:
        import json

        serializer = self.client.transport.serializer
        return lambda doc: json.loads(serializer.dumps(doc))


# Elasticsearch's versioned media types, e.g. "application/vnd.elasticsearch+x-ndjson; compatible-with=9".
_VENDOR_MIMETYPE = re.compile(r"application/vnd\.elasticsearch\+([a-z0-9.-]+)(\s*;\s*compatible-with=\d+)?")


def _plain_mimetype_node_class() -> type:
    """A urllib3 node that sends ``application/json`` / ``application/x-ndjson`` instead of the vendor types.

    The 8/9 client rewrites every Accept and Content-Type header into its versioned media type after merging the
    caller's headers, so ``headers=`` cannot undo it; the node is the documented extension point that sees the final
    headers. Servers that speak the OpenSearch dialect answer the vendor types with 406.
    """
    from elastic_transport import HttpHeaders, Urllib3HttpNode
    from elastic_transport.client_utils import DEFAULT

    class PlainMimetypeNode(Urllib3HttpNode):
        def perform_request(
            self,
            method: str,
            target: str,
            body: bytes | None = None,
            headers: Any = None,
            request_timeout: Any = DEFAULT,
        ) -> Any:
            if headers:
                headers = HttpHeaders(headers)
                for name in ("accept", "content-type"):
                    value = headers.get(name)
                    if value:
                        headers[name] = _VENDOR_MIMETYPE.sub(r"application/\1", value)
            return super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout)

    return PlainMimetypeNode


class ElasticsearchEngine(Engine):
    """``elasticsearch`` 8/9: Elasticsearch, or with ``compatibility_headers`` off an OpenSearch-compatible server."""

    name = "elasticsearch"

    def _connect(self) -> Any:
        from elasticsearch import Elasticsearch

        config = self.config
        options: dict[str, Any] = {
            "verify_certs": config.verify_certs,
            "request_timeout": config.timeout,
            "max_retries": config.max_retries,
            "retry_on_timeout": True,
            # 429 is left to the bulk helper, which backs off exponentially per document.
            "retry_on_status": (502, 503, 504),
        }
        if config.ca_certs is not None:
            options["ca_certs"] = config.ca_certs
        if (auth := self.basic_auth()) is not None:
            options["basic_auth"] = auth
        if not config.compatibility_headers:
            options["node_class"] = _plain_mimetype_node_class()
        return Elasticsearch(hosts=list(config.hosts), **options)

    def client_errors(self) -> tuple[type[BaseException], ...]:
        from elasticsearch import ApiError, SerializationError, TransportError

        return (ApiError, TransportError, SerializationError)

    def status_of(self, exc: BaseException) -> int | None:
        from elasticsearch import ApiError

        return int(exc.meta.status) if isinstance(exc, ApiError) else None

    def body_of(self, exc: BaseException) -> Any:
        return getattr(exc, "body", str(exc))

    def describe(self, exc: BaseException) -> str:
        message = super().describe(exc)
        if self.status_of(exc) == 406 and self.config.compatibility_headers:
            message += (
                "; the server does not accept Elasticsearch's versioned media types: for an OpenSearch-compatible "
                "server set compatibility_headers to false or use engine 'opensearch'"
            )
        return message

    def put_index_template(self, name: str, body: Mapping[str, Any]) -> None:
        self.client.indices.put_index_template(
            name=name,
            index_patterns=body["index_patterns"],
            priority=body["priority"],
            template=body["template"],
            meta=body.get("_meta"),
        )

    def create_index(self, index: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        self.client.indices.create(index=index, settings=dict(settings), mappings=dict(mappings))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        self.client.indices.update_aliases(actions=actions)

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self.client.indices.put_settings(index=index, settings=dict(settings))

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        self.client.indices.put_mapping(index=index, meta=dict(meta))

    def mget(self, index: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        response = self.client.mget(index=index, ids=ids)
        return {doc["_id"]: doc["_source"] for doc in response["docs"] if doc.get("found")}

    def search_hits(
        self, index: str, *, query: Mapping[str, Any], size: int, sort: list[Any], track_scores: bool = False
    ) -> list[dict[str, Any]]:
        response = self.client.search(index=index, query=dict(query), size=size, sort=sort, track_scores=track_scores)
        return list(_body(response)["hits"]["hits"])

    def streaming_bulk(self, actions: Iterable[dict[str, Any]], **options: Any) -> BulkResponse:
        from elasticsearch.helpers import streaming_bulk

        return streaming_bulk(self.client, actions, **options)

    def round_trip(self) -> Callable[[Any], Any]:
        import json

        serializer = self.client.transport.serializers.get_serializer("application/json")
        return lambda doc: json.loads(serializer.dumps(doc))


def connect(config: SearchConfig, client: Any = None) -> Engine:
    """The adapter for ``config.engine``; ``client`` substitutes a ready client of that engine."""
    engine_class = OpenSearchEngine if config.engine == "opensearch" else ElasticsearchEngine
    try:
        return engine_class(config, client)
    except SearchError:
        raise
    except Exception as exc:
        # The clients validate hosts and TLS options at construction, each with its own exception types.
        raise SearchError(f"cannot create the {config.engine} client for {config.describe()}: {exc}") from exc
