"""Parquet files in local directories or S3: written whole and atomically, read through a local copy."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
