"""Catalogue records, the Item contract and streaming readers."""

from lmindexer.catalog.items import Item, RowError, Rule
from lmindexer.catalog.readers import CatalogReader, ReadSummary, read_items
from lmindexer.storage.formats import CatalogFormat, detect_format

__all__ = [
    "CatalogFormat",
    "CatalogReader",
    "Item",
    "ReadSummary",
    "RowError",
    "Rule",
    "detect_format",
    "read_items",
]
