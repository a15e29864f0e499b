"""A real search server for the search tests, and a proxy in front of it that injects faults.

The server is ``osmem-server`` (an in-memory, OpenSearch-compatible server whose binary ships in its wheel), started
once per session on a free loopback port and stopped by PID. The proxy forwards every request unchanged unless told
to answer bulk items with 429 (throttling) or to drop connections (the engine going away mid-publish); it also
records the headers clients send.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from testsupport.fault_proxy import FaultProxy
from testsupport.search_docs import make_docs
from testsupport.search_server import SearchServer, running_search_server

from lmindexer.search import SearchBackend, SearchConfig


@pytest.fixture(scope="session")
def search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchServer]:
    """osmem-server on a free loopback port, for the whole session; each test uses its own alias."""
    with running_search_server(tmp_path_factory.mktemp("osmem") / "server.log") as server:
        yield server


@pytest.fixture
def proxy(search_server: SearchServer) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(search_server.url)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
def alias() -> str:
    """An alias of this test's own, so tests share the server without sharing state."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["opensearch", "elasticsearch"])
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


def engine_options(engine: str) -> dict[str, Any]:
    # osmem-server speaks the OpenSearch dialect: the elasticsearch client must send plain application/json.
    return {"compatibility_headers": False} if engine == "elasticsearch" else {}


@pytest.fixture
def make_backend(search_server: SearchServer, alias: str) -> Iterator[Callable[..., SearchBackend]]:
    """``make_backend(engine, url=None, **options)``: a backend on this test's alias; closed at the end."""
    made: list[SearchBackend] = []

    def make(engine: str = "opensearch", url: str | None = None, **options: Any) -> SearchBackend:
        values: dict[str, Any] = {
            "engine": engine,
            "hosts": [url or search_server.url],
            "alias": alias,
            "initial_backoff": 0.01,
            "max_backoff": 0.05,
            "max_retries": 1,
            "timeout": 10,
            **engine_options(engine),
            **options,
        }
        backend = SearchBackend(SearchConfig(**values))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def docs_factory() -> Callable[..., list[dict[str, Any]]]:
    return make_docs
