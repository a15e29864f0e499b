"""A real search server for the search tests, and a proxy in front of it that injects faults.

The server is ``osmem-server`` (an in-memory, OpenSearch-compatible server whose binary ships in its wheel), started
once per session on a free loopback port and stopped by PID. The proxy forwards every request unchanged unless told
to answer bulk items with 429 (throttling) or to drop connections (the engine going away mid-publish); it also
records the headers clients send.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from testsupport.fault_proxy import FaultProxy
from testsupport.search_docs import make_docs

from lmindexer.search import SearchBackend, SearchConfig

STARTUP_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SearchServer:
    url: str
    pid: int


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"osmem-server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.02)
    raise RuntimeError(f"osmem-server did not answer at {url} within {STARTUP_TIMEOUT_S} s")


def _stop(pid: int, process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchServer]:
    """osmem-server on a free loopback port, for the whole session; each test uses its own alias."""
    from osmem_server import resolve_binary

    port = _free_port()
    log = tmp_path_factory.mktemp("osmem") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                resolve_binary(),
                "--addr",
                f"127.0.0.1:{port}",
                "--no-ja",
                "--no-stdin-watch",
                # The server exits by itself if the test process dies without running the teardown.
                "--parent-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process, log)
        yield SearchServer(url=url, pid=process.pid)
    finally:
        _stop(process.pid, process)


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
