"""Real components for the serving tests: tiny trained models, saved and loaded as `lmindexer serve` loads them, and
the sample catalogue published to a real local search server (osmem-server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testsupport.downstream_models import RQ_OPTIONS, TINY_GENERATIVE, movielens_subset, snapshot_and_ids
from testsupport.search_server import SearchServer, running_search_server

from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.idtable import IdTable
from lmindexer.search import SearchBackend, SearchConfig, iter_documents


@dataclass
class Trained:
    model: GenerativeModel
    directory: Path
    table: IdTable


@pytest.fixture(scope="session")
def search_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchServer]:
    with running_search_server(tmp_path_factory.mktemp("osmem") / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def retriever(wiki_sample_path, wiki_items, tmp_path_factory) -> Trained:
    """A tiny retriever over the wiki sample (rq-kmeans IDs, L=2, K=8, beam 10), trained on every title.

    The encoder stays frozen (its states are cached): on a busy 2-core machine that trains in seconds instead of
    minutes, and the tests need a real model, not a good one."""
    root = tmp_path_factory.mktemp("serving-retriever")
    snapshot, table = snapshot_and_ids("rq-kmeans", RQ_OPTIONS, wiki_sample_path, root)
    options = {**TINY_GENERATIVE, "train_layers": 0, "indexing_pairs": False, "epochs": 10}
    model = GenerativeModel.create(table, snapshot, options)
    # The items' texts are embedded for the dense prior (on by default); indexing pairs stay off.
    model.fit_retrieval([(item.title, item.item_id) for item in wiki_items], {i.item_id: i.text for i in wiki_items})
    directory = model.save(root / "retriever")
    return Trained(GenerativeModel.load(directory), directory, table)


@pytest.fixture(scope="session")
def dense_index(wiki_items) -> DenseIndex:
    """A dense index of the wiki sample with the packaged encoder (what `lmindexer dense build` writes)."""
    return DenseIndex.build(wiki_items)


@pytest.fixture(scope="session")
def recommender(isolated_cache, tmp_path_factory) -> Trained:
    """A tiny next-item recommender over the 300 most-watched MovieLens movies (beam 10, window 8)."""
    root = tmp_path_factory.mktemp("serving-recommender")
    snapshot, table, sequences, _ = movielens_subset(root)
    options = {**TINY_GENERATIVE, "task": "recommendation", "history_window": 8, "epochs": 1, "batch_size": 128}
    model = GenerativeModel.create(table, snapshot, options)
    # A few hundred next-item steps: enough to make it a trained model in seconds.
    model.fit_recommendation([s[-6:] for s in sequences[:200]])
    directory = model.save(root / "recommender")
    return Trained(GenerativeModel.load(directory), directory, table)


@pytest.fixture(scope="session")
def publish(search_server: SearchServer, wiki_items, retriever) -> Iterator[Callable[..., SearchBackend]]:
    """``publish(deletes=())``: the wiki sample published behind a new alias, minus ``deletes``; closed at the end."""
    made: list[SearchBackend] = []

    def make(deletes: Iterable[str] = ()) -> SearchBackend:
        config = SearchConfig(hosts=[search_server.url], alias=f"s{uuid.uuid4().hex[:10]}", max_retries=1, timeout=10)
        backend = SearchBackend(config)
        made.append(backend)
        version = retriever.table.space.snapshot_version
        backend.publish_full(iter_documents(wiki_items, retriever.table), version, "run-1")
        deletes = list(deletes)
        if deletes:
            backend.publish_incremental(deletes=deletes).check()
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(scope="session")
def backend(publish) -> SearchBackend:
    """The whole wiki sample, live."""
    return publish()
