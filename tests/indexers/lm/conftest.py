from __future__ import annotations

import pytest
from testsupport.lm import TINY_LM

from lmindexer.indexers import create_indexer


@pytest.fixture(scope="session")
def tiny_lm(wiki_items):
    indexer = create_indexer("lmindexer", TINY_LM)
    indexer.fit(wiki_items, progress=False)
    return indexer
