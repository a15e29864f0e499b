"""Publishing semantic IDs to Elasticsearch / OpenSearch (:class:`SearchBackend`: versioned indexes behind an alias,
the alias swap, pruning, rollback) and reading what is live (:class:`SearchReader`: what serving uses)."""

from lmindexer.search.backend import (
    BulkResult,
    DocumentError,
    IndexInfo,
    PublishResult,
    RollbackResult,
    SearchBackend,
    SwapResult,
    TextHit,
    list_alias_indexes,
    rollback_alias,
)
from lmindexer.search.config import SearchConfig, load_search_config
from lmindexer.search.documents import (
    build_document,
    document_mapping,
    index_name,
    index_template,
    iter_documents,
    prefix_field,
)
from lmindexer.search.errors import InvalidDocumentError, PublishError, SearchConfigError, SearchError
from lmindexer.search.reader import SearchReader

__all__ = [
    "BulkResult",
    "DocumentError",
    "IndexInfo",
    "InvalidDocumentError",
    "PublishError",
    "PublishResult",
    "RollbackResult",
    "SearchBackend",
    "SearchConfig",
    "SearchConfigError",
    "SearchError",
    "SearchReader",
    "SwapResult",
    "TextHit",
    "build_document",
    "document_mapping",
    "index_name",
    "index_template",
    "iter_documents",
    "list_alias_indexes",
    "load_search_config",
    "prefix_field",
    "rollback_alias",
]
