"""Parquet files in local directories or S3: written whole and atomically, read through a local copy or, for a
few columns of a large file, by byte ranges."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lmindexer.storage.s3 import is_s3_uri, local_copy, upload_file


def write_parquet(table: pa.Table, destination: str | os.PathLike[str]) -> None:
    """Write ``table`` to a local path (staged beside it, then renamed) or an ``s3://`` URI (one upload).
    Readers never see a half-written file."""
    destination = str(destination)
    local_dir = None if is_s3_uri(destination) else Path(destination).parent
    if local_dir is not None:
        local_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=".part-", suffix=".parquet", dir=local_dir, delete=False) as handle:
        staging = Path(handle.name)
    try:
        pq.write_table(table, staging, compression="zstd")
        if local_dir is None:
            upload_file(staging, destination)
        else:
            os.replace(staging, destination)
    finally:
        staging.unlink(missing_ok=True)


def read_parquet(location: str | os.PathLike[str]) -> pa.Table:
    with local_copy(location, suffix=".parquet") as path:
        return pq.read_table(path)


def prefetch_columns(
    handle: Any, parquet: pq.ParquetFile, columns: Sequence[str], row_groups: Iterable[int] | None = None
) -> None:
    """Before reading ``columns`` of ``row_groups`` (all: None) from ``parquet``, opened on ``handle`` by
    :func:`~lmindexer.storage.s3.open_random_access`: have an S3 object's reader fetch their column chunks in as
    few requests as pay, rather than one request per chunk. Nothing to do for a local file."""
    prefetch = getattr(handle, "prefetch", None)
    if prefetch is None:
        return
    metadata = parquet.metadata
    wanted = set(columns)
    ranges = []
    for group in range(metadata.num_row_groups) if row_groups is None else row_groups:
        row_group = metadata.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            if chunk.path_in_schema.split(".")[0] not in wanted:
                continue
            # Where pyarrow starts reading a chunk: its dictionary page, when it has one before the data pages.
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
                start = chunk.dictionary_page_offset
            ranges.append((start, start + chunk.total_compressed_size))
    prefetch(ranges)
