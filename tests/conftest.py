"""Shared fixtures: an isolated cache, a real sample catalogue, and a local S3 server."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# `make test` runs the suite in two worker processes (pytest-xdist), one per core. Each worker then runs torch and
# the BLAS libraries on one thread, and so do the processes the tests start (they inherit this), so two workers
# never fight over the cores: oversubscribed threads run several times slower than one thread each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["LMINDEXER_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

from lmindexer.catalog import Item, read_items  # after the thread settings above

SAMPLE_SIZE = 320


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep embeddings and downloads of the test session out of the user's cache (shared across tests, and across
    the workers of one run: the data sets are written atomically and the embedding cache is SQLite)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "lmindexer-cache"
    path.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("LMINDEXER_CACHE_DIR")
    os.environ["LMINDEXER_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("LMINDEXER_CACHE_DIR", None)
    else:
        os.environ["LMINDEXER_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def wiki_dir(isolated_cache: Path) -> Path:
    """The wiki-topics data set, fetched by the project's own loader."""
    from lmindexer import datasets

    return datasets.fetch("wiki-topics", progress=False)


@pytest.fixture(scope="session")
def wiki_sample_path(wiki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred real items spread over every topic (every 31st line), as a JSONL catalogue."""
    lines = (wiki_dir / "items.jsonl").read_text().splitlines()
    picked = lines[:: max(1, len(lines) // SAMPLE_SIZE)][:SAMPLE_SIZE]
    path = tmp_path_factory.mktemp("catalogue") / "wiki-sample.jsonl"
    path.write_text("\n".join(picked) + "\n")
    return path


@pytest.fixture(scope="session")
def wiki_items(wiki_sample_path: Path) -> list[Item]:
    items, summary = read_items(wiki_sample_path)
    assert summary.rejected == 0
    return items


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real local S3 server (moto) on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS configuration chain at the local S3 server, as a deployment would."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    import uuid

    from lmindexer.storage.s3 import s3_client

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def cpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU does or does not compute bfloat16 natively: ``cpu_bf16(True)`` / ``cpu_bf16(False)``."""
    import torch

    def pretend(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    return pretend
