"""The Assets the DAGs produce and consume, defined once: a producer's outlet and a consumer's schedule must name the
same Asset, and two definitions would drift apart silently."""

from __future__ import annotations

from airflow.sdk import Asset

# catalog_reindex's commit: a new current pointer (snapshot, ID table, catalogue).
SEMANTIC_IDS = Asset(name="lmindexer_semantic_ids", uri="lmindexer://semantic-ids")
# catalog_reindex's publish: the search alias now serves the run's IDs.
SEARCH_INDEX = Asset(name="lmindexer_search_index", uri="lmindexer://search-index")
# retriever_refresh's promote or sync: a new live generative retriever.
RETRIEVER = Asset(name="lmindexer_retriever", uri="lmindexer://retriever")
