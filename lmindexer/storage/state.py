"""What has been processed: one small JSON object in S3 that makes nightly reruns idempotent.

The object (``state/processed.json`` by default) records every drop that went through the pipeline, by key *and*
ETag, with the run that processed it, when, that run's summary counts, and its status: ``processed`` (its valid rows
went into the catalogue) or ``rejected`` (quarantined whole, with the reason). A drop whose (key, ETag) is recorded is
skipped either way; an object re-uploaded under the same key with other content has a new ETag and is processed
again. The object carries a SHA-256 checksum of its records, verified on every read, so a damaged state is an
error rather than a reason to reprocess (or skip) drops.

Updates are a read-modify-write guarded by the object's ETag: the new version is written with ``If-Match`` (or
``If-None-Match: *`` when the object does not exist yet), so two runs updating the state at the same time cannot
silently overwrite each other. The loser of such a race re-reads the state, re-applies its additions (recording a
drop is a set union, so this is always safe) and tries again. For S3-compatible stores without conditional writes,
``conditional_writes=False`` compares the ETag just before writing instead, which narrows the race window to the
length of one PUT but cannot close it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lmindexer.layout import STATE_PREFIX
from lmindexer.storage.drops import Drop
from lmindexer.storage.s3 import S3_SCHEME, S3Location, StorageError, describe_error, is_s3_uri, shared_s3_client

STATE_FORMAT_VERSION = 1
PROCESSED = "processed"
REJECTED = "rejected"
_CHECKSUM_KEY = "checksum"
DEFAULT_STATE_PREFIX = STATE_PREFIX  # the name this module has always exported
DEFAULT_STATE_NAME = "processed.json"
# S3 answers a failed If-Match/If-None-Match with 412; two conditional writes racing can also get 409, and If-Match
# on an object deleted in the meantime gets 404.
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}


def _records_checksum(records: Any) -> str:
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


class StateConflict(StorageError):
    """The state object changed between reading and writing it (another run updated it)."""


@dataclass(frozen=True)
class ProcessedDrop:
    """One recorded drop: which object (key + ETag), which run processed it, when, and the run's counts."""

    key: str
    etag: str
    size: int
    last_modified: str
    run_id: str
    processed_at: str
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = PROCESSED
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "last_modified": self.last_modified,
            "run_id": self.run_id,
            "processed_at": self.processed_at,
            "summary": self.summary,
            "status": self.status,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessedDrop:
        return cls(
            key=str(data["key"]),
            etag=str(data["etag"]),
            size=int(data.get("size", 0)),
            last_modified=str(data.get("last_modified", "")),
            run_id=str(data.get("run_id", "")),
            processed_at=str(data.get("processed_at", "")),
            summary=dict(data.get("summary") or {}),
            status=str(data.get("status") or PROCESSED),
            reason=data.get("reason"),
        )


class ProcessingState:
    """The processed-drops record under ``base_uri``/``prefix``/``name``.

    ``unprocessed(drops)`` filters a listing down to the drops still to do; ``mark_processed(...)`` records drops
    once they are done. Both read the current object first, so one instance can be kept for a whole run.
    """

    def __init__(
        self,
        base_uri: str,
        *,
        prefix: str = DEFAULT_STATE_PREFIX,
        name: str = DEFAULT_STATE_NAME,
        client: Any = None,
        conditional_writes: bool = True,
    ) -> None:
        if not is_s3_uri(base_uri):
            raise StorageError(f"the processing state lives in S3; expected an s3:// base URI, got {base_uri!r}")
        root = S3Location.parse(base_uri)
        key = "/".join(part.strip("/") for part in (root.key, prefix, name) if part.strip("/"))
        self.location = S3Location(root.bucket, key)
        self.conditional_writes = conditional_writes
        self._client = client
        self._records: dict[tuple[str, str], ProcessedDrop] = {}
        self._etag: str | None = None
        self._loaded = False

    @property
    def uri(self) -> str:
        return str(self.location)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = shared_s3_client()
        return self._client

    @property
    def etag(self) -> str | None:
        """The ETag of the version last read or written (``None``: no state object exists yet)."""
        return self._etag

    @property
    def records(self) -> list[ProcessedDrop]:
        self._ensure_loaded()
        return [self._records[k] for k in sorted(self._records)]

    # -- reading -------------------------------------------------------------------------------------------------

    def load(self) -> ProcessingState:
        """Read the current state object (an absent object is an empty state)."""
        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                self._records, self._etag, self._loaded = {}, None, True
                return self
            raise StorageError(f"cannot read {self.location}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {self.location}: {describe_error(exc)}") from exc
        body = response["Body"].read()
        self._records = self._parse(body)
        self._etag = response["ETag"].strip('"')
        self._loaded = True
        return self

    def _parse(self, body: bytes) -> dict[tuple[str, str], ProcessedDrop]:
        # A broken state object must stop the run: treating it as empty would reprocess every drop ever seen.
        try:
            data = json.loads(body)
            if not isinstance(data, Mapping) or data.get("version") != STATE_FORMAT_VERSION:
                raise ValueError(f"expected an object with version {STATE_FORMAT_VERSION}")
            stored = data.get(_CHECKSUM_KEY)
            if stored is not None and stored != _records_checksum(data.get("processed", [])):
                raise ValueError("its records do not match its checksum (changed or damaged after it was written)")
            records = [ProcessedDrop.from_dict(entry) for entry in data.get("processed", [])]
        except (ValueError, TypeError, KeyError) as exc:
            raise StorageError(
                f"{self.location} is not a readable processing state ({exc}); restore a previous version of it "
                "rather than deleting it, or every drop will be processed again"
            ) from exc
        return {(r.key, r.etag): r for r in records}

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def is_processed(self, drop: Drop) -> bool:
        self._ensure_loaded()
        return (drop.key, drop.etag) in self._records

    def unprocessed(self, drops: Iterable[Drop], *, refresh: bool = True) -> list[Drop]:
        """The drops whose (key, ETag) is not recorded, in the order given. ``refresh`` re-reads the state first."""
        if refresh or not self._loaded:
            self.load()
        return [d for d in drops if (d.key, d.etag) not in self._records]

    # -- writing -------------------------------------------------------------------------------------------------

    def mark_processed(
        self,
        drops: Drop | Iterable[Drop],
        run_id: str,
        *,
        summary: Mapping[str, Any] | None = None,
        status: str = PROCESSED,
        reason: str | None = None,
        retries: int = 5,
        now: dt.datetime | None = None,
    ) -> list[Drop]:
        """Record ``drops`` as done by ``run_id`` (with ``summary`` counts, JSON-safe), as ``processed`` or as
        ``rejected`` with a ``reason``; returns the drops newly recorded. Drops already recorded keep their original
        record, so rerunning a run is a no-op and writes nothing.

        A concurrent update by another run is merged by re-reading and retrying up to ``retries`` times; after that
        :class:`StateConflict` is raised and nothing of this call is recorded.
        """
        if status not in (PROCESSED, REJECTED):
            raise ValueError(f"a drop is recorded as {PROCESSED!r} or {REJECTED!r}, not {status!r}")
        wanted = [drops] if isinstance(drops, Drop) else list(drops)
        stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat()
        details = json.loads(json.dumps(dict(summary or {}), default=str))  # detach and prove it is JSON-safe
        for attempt in range(retries + 1):
            self.load()
            fresh = [d for d in dict.fromkeys(wanted) if (d.key, d.etag) not in self._records]
            if not fresh:
                return []
            records = dict(self._records)
            for drop in fresh:
                records[(drop.key, drop.etag)] = ProcessedDrop(
                    key=drop.key,
                    etag=drop.etag,
                    size=drop.size,
                    last_modified=drop.last_modified.astimezone(dt.UTC).isoformat(),
                    run_id=run_id,
                    processed_at=stamp,
                    summary=details,
                    status=status,
                    reason=reason,
                )
            try:
                self._write(records)
            except StateConflict:
                if attempt == retries:
                    raise
                continue
            return fresh
        raise AssertionError("unreachable")  # the loop either returns or raises

    def _serialise(self, records: Mapping[tuple[str, str], ProcessedDrop]) -> bytes:
        processed = [records[k].to_dict() for k in sorted(records)]
        data = {"version": STATE_FORMAT_VERSION, "processed": processed, _CHECKSUM_KEY: _records_checksum(processed)}
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()

    def _write(self, records: Mapping[tuple[str, str], ProcessedDrop]) -> None:
        """Write ``records`` if the object is still the version read last; raise :class:`StateConflict` if not."""
        body = self._serialise(records)
        where = self.location
        kwargs: dict[str, Any] = {
            "Bucket": where.bucket,
            "Key": where.key,
            "Body": body,
            "ContentType": "application/json",
        }
        if self.conditional_writes:
            if self._etag is None:
                kwargs["IfNoneMatch"] = "*"
            else:
                kwargs["IfMatch"] = f'"{self._etag}"'
        else:
            current = self._current_etag()
            if current != self._etag:
                raise StateConflict(
                    f"{where} changed since it was read (ETag {self._etag} -> {current}); another run updated it"
                )
        try:
            response = self.client.put_object(**kwargs)
        except ClientError as exc:
            if self.conditional_writes and exc.response.get("Error", {}).get("Code") in _CONFLICT_CODES:
                raise StateConflict(
                    f"{where} changed since it was read (ETag {self._etag}); another run updated it "
                    f"({describe_error(exc)})"
                ) from exc
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot write {where}: {describe_error(exc)}") from exc
        self._records = dict(records)
        self._etag = response["ETag"].strip('"')

    def _current_etag(self) -> str | None:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=self.location.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StorageError(f"cannot read {self.location}: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {self.location}: {describe_error(exc)}") from exc
        return head["ETag"].strip('"')

    def __repr__(self) -> str:
        return f"ProcessingState({S3_SCHEME}{self.location.bucket}/{self.location.key})"
