"""Catalogue records, the Item contract and streaming readers."""

from lmindexer.catalog.items import Item, RowError, Rule
from lmindexer.catalog.readers import CatalogFormat, CatalogReader, ReadSummary, detect_format, read_items

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
