from __future__ import annotations

import pytest
from testsupport.downstream_models import RQ_OPTIONS, TINY_GENERATIVE, movielens_subset, snapshot_and_ids
from testsupport.lm import TINY_LM

__all__ = ["TINY_GENERATIVE"]  # test modules here import it from this conftest


@pytest.fixture(scope="session")
def rq_ids(wiki_sample_path, tmp_path_factory):
    """rq-kmeans snapshot and ID table of the real sample catalogue (L=2, K=8)."""
    root = tmp_path_factory.mktemp("downstream-rq")
    return snapshot_and_ids("rq-kmeans", RQ_OPTIONS, wiki_sample_path, root)


@pytest.fixture(scope="session")
def lm_ids(wiki_sample_path, tmp_path_factory):
    """A tiny LMIndexer snapshot and its ID table of the real sample catalogue (L=3, K=8)."""
    root = tmp_path_factory.mktemp("downstream-lm")
    return snapshot_and_ids("lmindexer", TINY_LM, wiki_sample_path, root)


@pytest.fixture(scope="session")
def title_pairs(wiki_items):
    """(title, item_id): a real query for each item, its title, which its text does not start with verbatim."""
    return [(item.title, item.item_id) for item in wiki_items]


@pytest.fixture(scope="session")
def item_texts(wiki_items):
    return {item.item_id: item.text for item in wiki_items}


@pytest.fixture(scope="session")
def movielens_subset_parts(isolated_cache, tmp_path_factory):
    """MovieLens-100k cut to its 300 most-watched movies: rq-kmeans snapshot and IDs (L=2, K=8), each user's last 30
    views, and the cut catalogue's path."""
    return movielens_subset(tmp_path_factory.mktemp("downstream-ml"))


@pytest.fixture(scope="session")
def movielens_small(movielens_subset_parts):
    """The MovieLens subset's snapshot, ID table and histories."""
    snapshot, table, sequences, _ = movielens_subset_parts
    return snapshot, table, sequences
