from __future__ import annotations

import pytest

from lmindexer.indexers import create_indexer

TINY = {"levels": 3, "codebook_size": 8}
TINY_OPTIONS = {
    "rq-kmeans": {},
    "hkmeans": {},
    "rqvae": {"epochs": 40, "batch_size": 64, "hidden_dims": [128, 64], "latent_dim": 16},
}


@pytest.fixture(scope="session")
def fitted(wiki_items):
    """Each baseline fitted once on the real sample catalogue (tiny sizes)."""
    indexers = {}
    for method, options in TINY_OPTIONS.items():
        indexer = create_indexer(method, {**TINY, **options})
        indexer.fit(wiki_items, progress=False)
        indexers[method] = indexer
    return indexers
