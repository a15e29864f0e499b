"""Compare-and-swap writes of whole objects: a write replaces exactly the version that was read, or it fails.

Several writers may update the same object (two ``lmindexer assign`` runs on one ID table, two pipeline runs on one
pointer). A plain read-modify-write lets the later writer silently drop the earlier one's change; here every read
returns a *version* and every write names the version it replaces:

- **S3**: the version is the object's ETag. The write is one ``PutObject`` with ``If-Match: <etag>`` (or
  ``If-None-Match: *`` when the object did not exist), so S3 itself refuses a write over a version that moved on
  (412 Precondition Failed, or 409 when two conditional writes race).
- **Local files**: the version is the SHA-256 of the file's bytes. The write holds an exclusive ``flock`` on a
  sibling lock file (``.<name>.lock``) while it re-reads the version and renames the new file into place, so the
  check and the swap cannot interleave with another writer on the same machine (or on a file system with working
  POSIX locks).

A refused write raises :class:`VersionConflict`; the caller re-reads and re-applies its change (or gives up with a
one-line error). Readers need no lock: the object is always replaced whole and atomically. The lock file stays
beside the data file (deleting it while another writer waits on it would let two writers in).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lmindexer.storage.s3 import S3Location, StorageError, describe_error, is_s3_uri, shared_s3_client

# S3 answers a failed If-Match/If-None-Match with 412; two conditional writes racing can get 409; If-Match on an
# object deleted in the meantime gets 404.
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"})
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class VersionConflict(StorageError):
    """The object changed between reading and writing it: another writer got there first."""


@dataclass(frozen=True)
class Versioned:
    """The bytes of an object and the version they were read at (``version is None``: there was no object)."""

    data: bytes | None
    version: str | None

    @property
    def exists(self) -> bool:
        return self.version is not None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_versioned(location: str | os.PathLike[str], *, client: Any = None) -> Versioned:
    """The current bytes of ``location`` with their version; an absent object is ``Versioned(None, None)``."""
    if is_s3_uri(location):
        where = S3Location.parse(str(location))
        client = client or shared_s3_client()
        try:
            response = client.get_object(Bucket=where.bucket, Key=where.key)
            data = response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return Versioned(None, None)
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        return Versioned(data, response["ETag"].strip('"'))
    path = Path(location)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Versioned(None, None)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return Versioned(data, _digest(data))


def current_version(location: str | os.PathLike[str], *, client: Any = None) -> str | None:
    """The version ``location`` is at now (``None``: no object), without keeping its bytes."""
    if is_s3_uri(location):
        where = S3Location.parse(str(location))
        client = client or shared_s3_client()
        try:
            head = client.head_object(Bucket=where.bucket, Key=where.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return None
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {where}: {describe_error(exc)}") from exc
        return head["ETag"].strip('"')
    return read_versioned(location).version


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock for writers of ``path`` (held by a sibling file, so the data file can be renamed over)."""
    lock_path = path.with_name(f".{path.name}.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _conflict(where: object, expected: str | None, found: str | None) -> VersionConflict:
    def name(version: str | None) -> str:
        return "absent" if version is None else version[:19]

    return VersionConflict(
        f"{where} changed since it was read (expected version {name(expected)}, found {name(found)}): another "
        "writer updated it first"
    )


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it into place: readers see the old bytes or the new, never a part.
    On any failure (a full disk) the staged file is removed and ``path`` is untouched."""
    with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=path.parent, delete=False) as handle:
        staging = Path(handle.name)
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
    try:
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def write_if_version(data: bytes, location: str | os.PathLike[str], expected: str | None, *, client: Any = None) -> str:
    """Write ``data`` to ``location`` only if it is still at version ``expected`` (``None``: only if absent).

    Returns the new version. Raises :class:`VersionConflict` (nothing written) when another writer changed the
    object since ``expected`` was read.
    """
    if is_s3_uri(location):
        where = S3Location.parse(str(location))
        client = client or shared_s3_client()
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": f'"{expected}"'}
        try:
            response = client.put_object(Bucket=where.bucket, Key=where.key, Body=data, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONFLICT_CODES:
                raise _conflict(where, expected, current_version(location, client=client)) from exc
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        return response["ETag"].strip('"')
    path = Path(location)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            found = read_versioned(path).version
            if found != expected:
                raise _conflict(path, expected, found)
            _replace_atomically(path, data)
    except OSError as exc:
        if exc.filename is None:  # name the file a full or read-only disk refused, not only the error
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return _digest(data)


__all__ = ["VersionConflict", "Versioned", "current_version", "read_versioned", "write_if_version"]
