"""S3 access: one client factory and streaming helpers.

Endpoint and credentials come from the standard AWS chain (environment, profile, instance role), so the same code
talks to Amazon S3 and to a local S3 server (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` or ``endpoint_url``).
Transient errors are retried by botocore's standard retry mode.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lmindexer.errors import SnapshotError, UserError
from lmindexer.layout import S3_SCHEME, is_s3_uri


class StorageError(UserError):
    """An object store location cannot be read or written."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith(S3_SCHEME):
            raise StorageError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise StorageError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


_default_client_options: dict[str, Any] = {}


def configure_default_client(**options: Any) -> None:
    """Options every :func:`s3_client` call of this process starts from (endpoint, region, credentials), e.g. from
    an orchestrator's connection. Explicit arguments still win; with none set, the AWS configuration chain applies."""
    _default_client_options.clear()
    _default_client_options.update({k: v for k, v in options.items() if v is not None})


def s3_client(
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    max_attempts: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    **session_kwargs: Any,
) -> Any:
    """A boto3 S3 client with standard retries. ``endpoint_url=None`` defers to the AWS configuration chain."""
    defaults = dict(_default_client_options)
    endpoint_url = endpoint_url or defaults.pop("endpoint_url", None)
    region_name = region_name or defaults.pop("region_name", None)
    defaults.pop("endpoint_url", None)
    defaults.pop("region_name", None)
    session_kwargs = {**defaults, **session_kwargs}
    config = Config(
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = boto3.session.Session(**session_kwargs)
    region = region_name or session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


# Building a boto3 client costs a few tenths of a second (it loads the service model), and a pipeline step touches
# S3 dozens of times: the library's own calls share one client per configuration. Clients are thread-safe; the
# key holds everything a client is built from (the AWS_* environment included), so a changed configuration gets
# a client of its own. Credentials that expire are refreshed by the client itself.
_shared_clients: dict[tuple[Any, ...], Any] = {}
_shared_lock = threading.Lock()


def shared_s3_client() -> Any:
    """The client the library's own S3 calls use when none is passed: :func:`s3_client`, built once per
    configuration and process. Callers that customise a client (event hooks) should build their own."""
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), tuple(sorted((k, repr(v)) for k, v in _default_client_options.items())), environment)
    with _shared_lock:
        client = _shared_clients.get(key)
        if client is None:
            client = s3_client()
            _shared_clients.clear()  # a new configuration replaces the old one; keep no stale clients around
            _shared_clients[key] = client
        return client


class _StreamingBodyReader(io.RawIOBase):
    """Adapts a botocore StreamingBody to ``io`` so it can be buffered, gunzipped and read line by line."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def readall(self) -> bytes:
        # The rest of the body in one read: io's default loops over 8 KB reads (a 40 MB object: ~5,000 of them,
        # 0.2 s more than one read).
        return self._body.read()

    def close(self) -> None:
        self._body.close()
        super().close()


def describe_error(exc: Exception) -> str:
    """One line for an S3 client error: the service's code and message, or the first line of anything else."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextmanager
def open_binary(location: str | os.PathLike[str], *, client: Any = None) -> Iterator[BinaryIO]:
    """Open a local file or an ``s3://`` object for streaming binary reads."""
    if is_s3_uri(location):
        where = S3Location.parse(str(location))
        client = client or shared_s3_client()
        try:
            response = client.get_object(Bucket=where.bucket, Key=where.key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        stream = io.BufferedReader(_StreamingBodyReader(response["Body"]), buffer_size=1 << 20)
        try:
            yield stream  # type: ignore[misc]
        finally:
            stream.close()
        return
    path = Path(location)
    if not path.is_file():
        raise StorageError(f"no such file: {path}")
    with path.open("rb") as handle:
        yield handle


# A reader that knows which byte ranges it is about to read (a Parquet reader's column chunks) fetches ranges closer
# together than COALESCE_GAP_BYTES in one request: skipping a gap costs a new request's first-byte latency, about
# 100 ms on S3 ("Performance design patterns for Amazon S3"), in which one connection transfers about 8.5 MiB at its
# ~85 MiB/s. A request stays under LARGEST_REQUEST_BYTES, where that latency is under a tenth of the transfer.
# (pyarrow.CacheOptions.from_network_metrics(100, 85) derives the same two limits.)
COALESCE_GAP_BYTES = 17 * 2**19  # 8.5 MiB
LARGEST_REQUEST_BYTES = 64 * 2**20


def coalesce_ranges(
    ranges: Iterable[tuple[int, int]], *, gap: int = COALESCE_GAP_BYTES, largest: int = LARGEST_REQUEST_BYTES
) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges merged into as few requests as pay: in order, a range joins the one before when
    the gap between them is at most ``gap`` bytes and the joined range at most ``largest`` bytes (a single range
    longer than ``largest`` stays whole). Empty ranges, and ranges inside an earlier request, are dropped; every
    byte of every range stays covered."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and end <= merged[-1][1]:
            continue  # inside the request before
        if merged and start - merged[-1][1] <= gap and max(end, merged[-1][1]) - merged[-1][0] <= largest:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class _RangedObjectReader(io.RawIOBase):
    """A seekable read-only view of one S3 object that fetches only the byte ranges read (``Range`` GETs), so a
    Parquet reader reads the footer and the column chunks it needs, not the whole object. Each read is one request
    (unbuffered: pyarrow reads a column chunk whole), unless it falls in a range fetched ahead by :meth:`prefetch`.
    Pinned to the object's ETag at open: a replacement between two ranges is an error, never a mix of two objects."""

    def __init__(self, client: Any, where: S3Location) -> None:
        self._client, self._where, self._position = client, where, 0
        self._blocks: list[tuple[int, memoryview]] = []  # (start, bytes) fetched ahead
        try:
            head = client.head_object(Bucket=where.bucket, Key=where.key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        self._size, self._etag = int(head["ContentLength"]), head["ETag"]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch ``(start, end)`` byte ranges ahead of the reads that will ask for them, in as few requests as pay
        (:func:`coalesce_ranges`); reads inside them are then answered from memory until the reader is closed.
        Ranges already fetched are not fetched again."""
        wanted = [(max(0, start), min(end, self._size)) for start, end in ranges]
        missing = [r for r in wanted if not any(s <= r[0] and r[1] <= s + len(b) for s, b in self._blocks)]
        for start, end in coalesce_ranges(missing, gap=COALESCE_GAP_BYTES, largest=LARGEST_REQUEST_BYTES):
            self._blocks.append((start, memoryview(self._get(start, end))))

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the position on (short only at the end of the object): from ranges fetched ahead
        where they hold the position, else with one request for the rest of the read."""
        end = min(self._position + len(buffer), self._size)
        view = memoryview(buffer).cast("B")
        filled = 0
        while self._position < end:
            held = next(((s, b) for s, b in self._blocks if s <= self._position < s + len(b)), None)
            if held is None:
                chunk: bytes | memoryview = self._get(self._position, end)
            else:
                start, block = held
                chunk = block[self._position - start : min(end, start + len(block)) - start]
            if not chunk:
                break
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self._position += len(chunk)
        return filled

    def readall(self) -> bytes:
        """The rest of the object in one request."""
        if self._position >= self._size:
            return b""
        chunk = self._get(self._position, self._size)
        self._position += len(chunk)
        return chunk

    def close(self) -> None:
        self._blocks = []
        super().close()

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object as it was at open."""
        try:
            response = self._client.get_object(
                Bucket=self._where.bucket, Key=self._where.key, Range=f"bytes={start}-{end - 1}", IfMatch=self._etag
            )
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {self._where}: {describe_error(exc)}") from exc


@contextmanager
def open_random_access(location: str | os.PathLike[str], *, client: Any = None) -> Iterator[BinaryIO]:
    """A seekable binary file for a local path or an ``s3://`` object, for formats that read a few parts of a
    large file (a Parquet footer and some column chunks): an S3 object is read range by range, never downloaded
    whole, and its ``prefetch(ranges)`` fetches ranges a reader is about to ask for in as few requests as pay
    (:func:`lmindexer.storage.parquet.prefetch_columns`). A local file has no ``prefetch``."""
    if not is_s3_uri(location):
        path = Path(location)
        if not path.is_file():
            raise StorageError(f"no such file: {path}")
        with path.open("rb") as handle:
            yield handle
        return
    # Unbuffered: pyarrow reads each column chunk it needs in one read (pre-buffering, its default), so a buffer
    # would only add a request per read for the bytes after it.
    with _RangedObjectReader(client or shared_s3_client(), S3Location.parse(str(location))) as reader:
        yield reader  # type: ignore[misc]


@contextmanager
def local_copy(location: str | os.PathLike[str], *, client: Any = None, suffix: str = "") -> Iterator[Path]:
    """A local path for a file that needs random access (Parquet). S3 objects are downloaded to a temporary file,
    so memory use stays bounded whatever the object's size."""
    if not is_s3_uri(location):
        path = Path(location)
        if not path.is_file():
            raise StorageError(f"no such file: {path}")
        yield path
        return
    where = S3Location.parse(str(location))
    client = client or shared_s3_client()
    with tempfile.TemporaryDirectory(prefix="lmindexer-s3-") as tmp:
        target = Path(tmp) / ("object" + suffix)
        try:
            client.download_file(where.bucket, where.key, str(target))
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        yield target


@contextmanager
def local_directory(location: str | os.PathLike[str], *, prefix: str = "lmindexer-") -> Iterator[Path]:
    """A local directory holding what ``location`` holds: the directory itself, or a temporary copy of an ``s3://``
    prefix, removed after the block. A :class:`SnapshotError` raised in the block names ``location``, not the copy."""
    if not is_s3_uri(str(location)):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        download_prefix(str(location), Path(tmp))
        try:
            yield Path(tmp)
        except SnapshotError as exc:
            raise SnapshotError(str(exc).replace(tmp, str(location).rstrip("/"))) from exc


def upload_file(path: str | os.PathLike[str], destination: str, *, client: Any = None) -> None:
    """Copy a local file to a local path or an ``s3://`` URI (local writes are atomic)."""
    if is_s3_uri(destination):
        where = S3Location.parse(destination)
        client = client or shared_s3_client()
        try:
            client.upload_file(str(path), where.bucket, where.key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            # The transfer manager wraps a failed transfer (e.g. 503 Slow Down after botocore's retries) in
            # boto3's own S3UploadFailedError, which is neither a ClientError nor a BotoCoreError.
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        return
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)


def upload_tree(source: str | os.PathLike[str], destination: str, *, client: Any = None) -> None:
    """Copy every file under a local directory to the same relative paths under a local directory or ``s3://``
    prefix, in path order."""
    root = Path(source)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            upload_file(path, f"{destination.rstrip('/')}/{path.relative_to(root).as_posix()}", client=client)


def exists(location: str | os.PathLike[str], *, client: Any = None) -> bool:
    if not is_s3_uri(location):
        return Path(location).exists()
    where = S3Location.parse(str(location))
    client = client or shared_s3_client()
    try:
        client.head_object(Bucket=where.bucket, Key=where.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
    return True


def download_prefix(uri: str, destination: Path, *, client: Any = None) -> int:
    """Copy every object under an ``s3://`` prefix into ``destination``; returns the number of objects."""
    where = S3Location.parse(uri.rstrip("/") + "/")
    client = client or shared_s3_client()
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.key):
            for entry in page.get("Contents", []):
                relative = entry["Key"][len(where.key) :]
                if not relative or relative.endswith("/"):
                    continue
                target = (destination / relative).resolve()
                if destination.resolve() not in target.parents:
                    raise StorageError(f"refusing to write {entry['Key']} outside {destination}")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(where.bucket, entry["Key"], str(target))
                count += 1
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
    if count == 0:
        raise StorageError(f"no objects under {where}")
    return count


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object. ``etag`` is unquoted; it changes whenever the object is rewritten."""

    bucket: str
    key: str
    etag: str
    size: int
    last_modified: dt.datetime

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


def list_objects(uri: str, *, client: Any = None, page_size: int = 1000) -> Iterator[ObjectInfo]:
    """Every object under an ``s3://`` prefix, in key order, fetched ``page_size`` keys per request (S3 caps it at
    1000), so a prefix of any size is listed in bounded memory."""
    if not 1 <= page_size <= 1000:
        raise StorageError(f"page size must be between 1 and 1000, got {page_size}")
    where = S3Location.parse(uri)
    client = client or shared_s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=where.bucket, Prefix=where.key, PaginationConfig={"PageSize": page_size}
    )
    try:
        for page in pages:
            for entry in page.get("Contents", []):
                yield ObjectInfo(
                    bucket=where.bucket,
                    key=entry["Key"],
                    etag=entry["ETag"].strip('"'),
                    size=int(entry["Size"]),
                    last_modified=entry["LastModified"],
                )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list {where}: {describe_error(exc)}") from exc


def read_bytes(location: str | os.PathLike[str], *, client: Any = None) -> bytes:
    """The whole content of a small local file or ``s3://`` object."""
    with open_binary(location, client=client) as stream:
        return stream.read()


def write_bytes(data: bytes, destination: str | os.PathLike[str], *, client: Any = None) -> None:
    """Write a small object to a local path (atomically) or an ``s3://`` URI (a single PUT)."""
    if is_s3_uri(destination):
        where = S3Location.parse(str(destination))
        client = client or shared_s3_client()
        try:
            client.put_object(Bucket=where.bucket, Key=where.key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        return
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def remove(location: str | os.PathLike[str], *, client: Any = None) -> None:
    """Delete a local file or an ``s3://`` object; a missing one is not an error."""
    if not is_s3_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    where = S3Location.parse(str(location))
    client = client or shared_s3_client()
    try:
        client.delete_object(Bucket=where.bucket, Key=where.key)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot delete {where}: {describe_error(exc)}") from exc
