"""Catalogue drops: the objects that land under ``incoming/`` and wait to be validated and indexed.

A drop is identified by its key *and* its ETag: re-uploading an object under the same key gives it a new ETag, so
it counts as a new drop and is processed again (see :mod:`lmindexer.storage.state`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from lmindexer.errors import CatalogError
from lmindexer.layout import INCOMING_PREFIX
from lmindexer.storage.formats import CatalogFormat, detect_format
from lmindexer.storage.s3 import S3_SCHEME, ObjectInfo, S3Location, StorageError, is_s3_uri, list_objects

DEFAULT_INCOMING_PREFIX = INCOMING_PREFIX
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Drop(ObjectInfo):
    """One catalogue object waiting under the incoming prefix."""

    @property
    def format(self) -> CatalogFormat:
        return detect_format(self.key)

    @property
    def slug(self) -> str:
        """The key as one path segment for per-drop run ids: ``incoming/2024/a b.jsonl`` -> ``incoming-2024-a-b.jsonl``.

        Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``, so two keys that differ only in
        such characters share a slug.
        """
        return _SLUG_UNSAFE.sub("-", self.key.replace("/", "-")).strip("-.") or "drop"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, e.g. to hand a drop from one orchestration task to the next."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "last_modified": self.last_modified.astimezone(dt.UTC).isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Drop:
        stamp = data["last_modified"]
        if isinstance(stamp, str):
            stamp = dt.datetime.fromisoformat(stamp)
        return cls(
            bucket=str(data["bucket"]),
            key=str(data["key"]),
            etag=str(data["etag"]).strip('"'),
            size=int(data["size"]),
            last_modified=stamp,
        )


def _is_catalogue(key: str) -> bool:
    if key.endswith("/"):
        return False  # "folder" placeholder objects created by consoles and sync tools
    try:
        detect_format(key)
    except CatalogError:
        return False
    return True


def list_drops(
    base_uri: str, prefix: str = DEFAULT_INCOMING_PREFIX, *, client: Any = None, page_size: int = 1000
) -> list[Drop]:
    """Catalogue objects under ``base_uri``/``prefix``, oldest first (ties broken by key).

    Only names with a catalogue suffix (``.jsonl``, ``.jsonl.gz``, ``.parquet``, ``.csv``, ...) count: markers such
    as ``_SUCCESS`` or a half-written ``.tmp`` never become drops. ``base_uri`` is the bucket root (``s3://bucket``)
    or a root inside it (``s3://bucket/lake``).
    """
    if not is_s3_uri(base_uri):
        raise StorageError(f"drops are listed from S3; expected an s3:// base URI, got {base_uri!r}")
    root = S3Location.parse(base_uri)
    key_prefix = "/".join(part.strip("/") for part in (root.key, prefix) if part.strip("/"))
    if prefix.endswith("/") and key_prefix:
        key_prefix += "/"  # "incoming/" must not match "incoming-old/"
    listing = list_objects(f"{S3_SCHEME}{root.bucket}/{key_prefix}", client=client, page_size=page_size)
    drops = [
        Drop(obj.bucket, obj.key, obj.etag, obj.size, obj.last_modified) for obj in listing if _is_catalogue(obj.key)
    ]
    drops.sort(key=lambda d: (d.last_modified, d.key))
    return drops
