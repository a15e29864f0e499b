"""What the search engine's publisher and reader hand back: per-document accounting of a bulk run, the outcome of
a full publish, an alias swap or a rollback, an alias's indexes, and search hits. Plain data, JSON-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lmindexer.search.errors import PublishError

_ERRORS_IN_MESSAGES = 5


@dataclass(frozen=True)
class DocumentError:
    """One document the engine (or the backend, before sending) refused."""

    item_id: str | None
    operation: str
    status: int | None
    error_type: str
    reason: str

    @property
    def refused(self) -> bool:
        """The document was refused for what it holds: by the engine with a 4xx answer (e.g. a field of the wrong
        type), or by the backend before sending (no id, a duplicate id, another snapshot's document). Sending it
        again changes nothing. Throttling (429), timeouts (408) and server errors are not refusals: they may pass
        on a retry."""
        if self.status is None:
            return True
        return 400 <= self.status < 500 and self.status not in (408, 429)

    def describe(self) -> str:
        status = "" if self.status is None else f" ({self.status})"
        return f"{self.operation} {self.item_id!r}{status}: {self.error_type}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BulkResult:
    """What happened to every document of one bulk run.

    ``attempted`` counts every document handed in; once the run completed, ``attempted == succeeded + failed``.
    A run cut short (the engine went away) has ``unconfirmed > 0``: documents sent without an answer.
    """

    attempted: int = 0
    indexed: int = 0
    deleted: int = 0
    not_found: int = 0
    failed: int = 0
    errors: list[DocumentError] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return self.indexed + self.deleted + self.not_found

    @property
    def unconfirmed(self) -> int:
        return self.attempted - self.succeeded - self.failed

    @property
    def reconciles(self) -> bool:
        return self.unconfirmed == 0 and self.failed == len(self.errors)

    def reject(self, item_id: str | None, operation: str, error_type: str, reason: str) -> None:
        """A document refused before it was sent (counts as attempted and failed)."""
        self.attempted += 1
        self.failed += 1
        self.errors.append(DocumentError(item_id, operation, None, error_type, reason))

    def record(self, ok: bool, response: Mapping[str, Any]) -> None:
        """One item of a bulk response, as the client helpers yield it (``{op: info}``)."""
        operation, info = next(iter(response.items()))
        status = info.get("status")
        if ok:
            if operation == "delete":
                self.deleted += 1
            else:
                self.indexed += 1
            return
        error = info.get("error")
        if operation == "delete" and status == 404 and error is None:
            # Deleting what is not there leaves the index as intended; it is counted, not failed.
            self.not_found += 1
            return
        self.failed += 1
        if isinstance(error, Mapping):
            error_type = str(error.get("type", "error"))
            reason = str(error.get("reason", ""))
            cause = error.get("caused_by")
            if isinstance(cause, Mapping) and cause.get("reason"):
                reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        else:
            error_type, reason = "error", str(error)
        self.errors.append(
            DocumentError(info.get("_id"), operation, status if isinstance(status, int) else None, error_type, reason)
        )

    def summary(self) -> str:
        parts = [f"{self.attempted} attempted", f"{self.indexed} indexed"]
        if self.deleted or self.not_found:
            parts += [f"{self.deleted} deleted", f"{self.not_found} deletes of missing documents"]
        parts.append(f"{self.failed} failed")
        if self.unconfirmed:
            parts.append(f"{self.unconfirmed} unconfirmed (the run stopped before the engine answered for them)")
        return ", ".join(parts)

    def describe_errors(self, limit: int = _ERRORS_IN_MESSAGES) -> str:
        shown = "; ".join(error.describe() for error in self.errors[:limit])
        more = len(self.errors) - limit
        return shown + (f"; and {more} more" if more > 0 else "")

    def check(self, max_failed: int = 0) -> BulkResult:
        """Raise :class:`PublishError` when more than ``max_failed`` documents failed; return ``self`` otherwise."""
        if self.failed > max_failed:
            message = f"{_documents(self.failed)} failed ({self.summary()}): {self.describe_errors()}"
            raise PublishError(message, result=self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "indexed": self.indexed,
            "deleted": self.deleted,
            "not_found": self.not_found,
            "failed": self.failed,
            "unconfirmed": self.unconfirmed,
            "errors": [error.to_dict() for error in self.errors],
        }


@dataclass(frozen=True)
class IndexInfo:
    """One versioned index of an alias."""

    name: str
    live: bool
    verified: bool
    created_at: str
    snapshot_version: str | None
    run_id: str | None
    doc_count: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PublishResult:
    """The outcome of a full publish: a new, verified index, live unless it was built with ``live=False``."""

    alias: str
    index: str
    previous_index: str | None
    snapshot_version: str
    run_id: str
    bulk: BulkResult
    doc_count: int
    sample_checked: int
    pruned: list[str] = field(default_factory=list)
    prune_error: str | None = None
    already_live: bool = False
    live: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bulk"] = self.bulk.to_dict()
        return data


@dataclass(frozen=True)
class SwapResult:
    """The alias moved to ``index`` (``swapped``), or found already there; and the old indexes then pruned."""

    alias: str
    index: str
    previous_index: str | None
    swapped: bool
    pruned: list[str] = field(default_factory=list)
    prune_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TextHit:
    """One hit of a free-text search: the live document and its relevance score."""

    document: dict[str, Any]
    score: float

    @property
    def item_id(self) -> str:
        return str(self.document["item_id"])


@dataclass(frozen=True)
class BoostedSearch:
    """The hits of a prefix-boosted text search and the scale its boosts were multiplied by (the plain text search's
    best score; 1.0 when no document matched a word)."""

    hits: list[TextHit]
    text_scale: float


@dataclass(frozen=True)
class RollbackResult:
    alias: str
    from_index: str
    to_index: str
    doc_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _documents(count: int) -> str:
    return f"{count} document" if count == 1 else f"{count} documents"
