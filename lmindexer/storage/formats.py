"""Catalogue file formats, told by an object's name.

Declared here, in the storage layer, because both layers need it: drop discovery (:mod:`lmindexer.storage.drops`)
must tell a catalogue object from a marker such as ``_SUCCESS`` while listing, and the catalogue readers pick their
parser by it. Storage must not import the catalogue layer (the readers read through storage), so the knowledge
lives below both.
"""

from __future__ import annotations

import os
from enum import StrEnum

from lmindexer.errors import CatalogError


class CatalogFormat(StrEnum):
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    PARQUET = "parquet"
    CSV = "csv"
    CSV_GZ = "csv.gz"


_SUFFIXES = {
    ".jsonl": CatalogFormat.JSONL,
    ".ndjson": CatalogFormat.JSONL,
    ".jsonl.gz": CatalogFormat.JSONL_GZ,
    ".ndjson.gz": CatalogFormat.JSONL_GZ,
    ".parquet": CatalogFormat.PARQUET,
    ".pq": CatalogFormat.PARQUET,
    ".csv": CatalogFormat.CSV,
    ".csv.gz": CatalogFormat.CSV_GZ,
}


def detect_format(location: str | os.PathLike[str]) -> CatalogFormat:
    """The catalogue format implied by a file name."""
    name = str(location).lower().rstrip("/")
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    known = ", ".join(sorted(_SUFFIXES))
    raise CatalogError(
        f"cannot tell the format of {location} from its name: a catalogue's name ends in one of {known}; rename the "
        "file (or copy it) to end in the suffix of its format"
    )
