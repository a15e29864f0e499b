"""Publishing search documents: full (a new versioned index, made live by one atomic alias swap) or incremental
(upserts and deletes through the alias), with rollback and lookups.

Safety rules, in the order a full publish meets them:

- readers only ever see the alias; it is changed by exactly one ``update_aliases`` request (remove + add), which the
  engine applies atomically, and only after the new index has been loaded, refreshed, counted and sampled;
- a failure before the swap leaves the alias where it was; the new index is deleted when the engine can confirm it is
  not live, and otherwise left (never deleted blind) and removed by the next successful publish;
- every index records in its mapping ``_meta`` which alias it belongs to, when it was created and whether it was
  verified, so pruning and rollback only touch this alias's indexes and only roll back to verified ones;
- every document outcome is counted: ``attempted = indexed + deleted + not_found + failed`` once a bulk run is
  complete, each failure kept with its id, status, error type and reason.

One publisher per alias at a time: the orchestrator serialises publishes of an alias (an Airflow pool of one slot,
or ``max_active_runs=1``).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lmindexer.downstream.fusion import PrefixBoosts, prefix_terms
from lmindexer.errors import UserError
from lmindexer.search.clients import Engine, connect
from lmindexer.search.config import SearchConfig, load_search_config
from lmindexer.search.documents import (
    MAPPING_VERSION,
    MAX_PREFIX_LEVELS,
    META_KEY,
    TEXT_FIELDS,
    index_name,
    index_template,
    parse_prefix,
    prefix_field,
    template_name,
)
from lmindexer.search.errors import PublishError, SearchError

logger = logging.getLogger(__name__)

MAX_LOOKUP_SIZE = 10_000
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


def _now() -> str:
    # Microseconds keep two publishes of one second apart; ISO strings in UTC sort in time order.
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class _Sample:
    """A uniform sample of the documents sent (reservoir sampling), to read back before going live."""

    def __init__(self, size: int, seed: str) -> None:
        self.size = size
        self.seen = 0
        self.docs: dict[str, Any] = {}
        self._keys: list[str] = []
        self._random = random.Random(seed)  # noqa: S311 - sampling, not security

    def offer(self, item_id: str, doc: Any) -> None:
        self.seen += 1
        if self.size <= 0:
            return
        if len(self._keys) < self.size:
            self._keys.append(item_id)
            self.docs[item_id] = doc
            return
        slot = self._random.randrange(self.seen)
        if slot < self.size:
            del self.docs[self._keys[slot]]
            self._keys[slot] = item_id
            self.docs[item_id] = doc


class SearchBackend:
    """Publishes to one alias on one engine. Use as a context manager, or call :meth:`close`."""

    def __init__(self, config: SearchConfig | Mapping[str, Any] | None = None, *, client: Any = None) -> None:
        self.config = load_search_config(config)
        self.engine: Engine = connect(self.config, client)

    @property
    def alias(self) -> str:
        return self.config.alias

    @property
    def client(self) -> Any:
        """The underlying ``OpenSearch`` / ``Elasticsearch`` client."""
        return self.engine.client

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> SearchBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def server_info(self) -> dict[str, Any]:
        """The engine's root endpoint (name, version); a cheap connectivity check."""
        with self.engine.translate(f"connecting to {self.config.describe()}"):
            return self.engine.info()

    # -- indexes of the alias --------------------------------------------------------------------------------------

    def install_template(self) -> None:
        """Create or update the index template for ``<alias>-*`` (every full publish does this first)."""
        body = index_template(
            self.alias,
            number_of_shards=self.config.number_of_shards,
            number_of_replicas=self.config.number_of_replicas,
        )
        with self.engine.translate(f"installing index template {template_name(self.alias)}"):
            self.engine.put_index_template(template_name(self.alias), body)

    def live_index(self) -> str | None:
        """The index the alias points at, ``None`` if the alias does not exist."""
        targets = self._alias_targets()
        if len(targets) > 1:
            raise SearchError(f"alias {self.alias!r} points at several indexes ({', '.join(targets)}); expected one")
        return targets[0] if targets else None

    def list_indexes(self, *, doc_counts: bool = True) -> list[IndexInfo]:
        """This alias's indexes, newest first, with document counts and which one is live."""
        live = set(self._alias_targets())
        infos = []
        for name, meta in self._managed_indexes():
            count = None
            if doc_counts:
                with self.engine.translate(f"counting documents of {name}"):
                    count = self.engine.count(name)
            infos.append(
                IndexInfo(
                    name=name,
                    live=name in live,
                    verified=bool(meta.get("verified")),
                    created_at=str(meta.get("created_at", "")),
                    snapshot_version=meta.get("snapshot_version"),
                    run_id=meta.get("run_id"),
                    doc_count=count,
                )
            )
        return infos

    def _alias_targets(self) -> list[str]:
        with self.engine.translate(f"reading alias {self.alias!r}"):
            return self.engine.alias_targets(self.alias)

    def _managed_indexes(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, our _meta) of the indexes created for this alias, newest first.

        ``<alias>-*`` also matches indexes of a longer alias (``catalog-eu-...``) and indexes made by others; only
        the ``_meta`` record says which ones are ours.
        """
        with self.engine.translate(f"listing indexes of alias {self.alias!r}"):
            indexes = self.engine.get_indexes(f"{self.alias}-*")
        managed = []
        for name, description in indexes.items():
            meta = ((description.get("mappings") or {}).get("_meta") or {}).get(META_KEY)
            if isinstance(meta, Mapping) and meta.get("alias") == self.alias:
                managed.append((name, dict(meta)))
        managed.sort(key=lambda entry: (str(entry[1].get("created_at", "")), entry[0]), reverse=True)
        return managed

    def _index_meta(self, index: str) -> dict[str, Any]:
        with self.engine.translate(f"reading the mapping of {index}"):
            mapping = self.engine.get_mapping(index)
        meta = (mapping.get("_meta") or {}).get(META_KEY)
        return dict(meta) if isinstance(meta, Mapping) else {}

    # -- full publish ----------------------------------------------------------------------------------------------

    def publish_full(
        self,
        docs: Iterable[Mapping[str, Any]],
        version: str,
        run_id: str,
        *,
        progress: bool = False,
        total: int | None = None,
        live: bool = True,
    ) -> PublishResult:
        """Load ``docs`` into a new index (named by :func:`~lmindexer.search.documents.index_name`), verify it,
        make it live with one atomic alias swap and prune old indexes down to ``keep_indexes``. With ``live=False``
        the verified index is left beside the live one, for :meth:`swap_alias` to make live as a step of its own.

        Raises :class:`PublishError` (alias untouched) when loading or verification fails. Rerunning with the same
        version and run id replaces a leftover index of a failed attempt; if that index is already live, the
        publish is reported as done (``already_live``) without loading anything.
        """
        alias = self.alias
        index = index_name(alias, version, run_id)
        previous = self.live_index()
        if previous == index:
            logger.warning("index %s is already live behind %s; nothing to publish", index, alias)
            with self.engine.translate(f"counting documents of {index}"):
                count = self.engine.count(index)
            return PublishResult(alias, index, None, version, run_id, BulkResult(), count, 0, already_live=True)
        with self.engine.translate(f"preparing index {index}"):
            if previous is None and self.engine.index_exists(alias):
                raise SearchError(
                    f"{alias!r} is an index, not an alias; readers must use an alias, so choose another alias name "
                    "or move that index away"
                )
        self.install_template()
        with self.engine.translate(f"creating index {index}"):
            if self.engine.index_exists(index):
                logger.warning("index %s is left from an attempt that did not go live; replacing it", index)
                self.engine.delete_index(index)
            meta = {
                "alias": alias,
                "snapshot_version": version,
                "run_id": run_id,
                "created_at": _now(),
                "mapping_version": MAPPING_VERSION,
                "verified": False,
            }
            # Refreshing during a bulk load only costs time; the index is refreshed once before verification.
            self.engine.create_index(
                index, settings={"index": {"refresh_interval": "-1"}}, mappings={"_meta": {META_KEY: meta}}
            )
        logger.info("created %s for alias %s (previous: %s)", index, alias, previous)

        result = BulkResult()
        sample = _Sample(self.config.verify_sample_size, seed=index)
        try:
            self._check_template_applied(index)
            self._bulk(self._index_actions(docs, index, result, sample), result, progress=progress, total=total)
            doc_count, sample_checked = self._verify(index, result, sample)
            self.engine.put_meta(index, {META_KEY: {**meta, "verified": True, "documents": doc_count}})
            if live:
                self._swap(index, previous)
        except Exception as exc:
            failure = self._abandon(index, previous, result, exc)
            if isinstance(exc, (UserError, *self.engine.client_errors())):
                raise failure from exc
            raise  # a defect, not a user's problem: keep its traceback (the cleanup above has run and logged)
        except BaseException:
            self._abandon(index, previous, result, None)
            raise
        if not live:
            logger.info("%s is loaded and verified (%s); alias %s still points at %s", index, result.summary(), alias,
                        previous)  # fmt: skip
            return PublishResult(alias, index, previous, version, run_id, result, doc_count, sample_checked, live=False)
        logger.info("alias %s now points at %s (%s)", alias, index, result.summary())

        pruned, prune_error = self._prune(cutoff=meta["created_at"])
        return PublishResult(
            alias=alias,
            index=index,
            previous_index=previous,
            snapshot_version=version,
            run_id=run_id,
            bulk=result,
            doc_count=doc_count,
            sample_checked=sample_checked,
            pruned=pruned,
            prune_error=prune_error,
        )

    def _check_template_applied(self, index: str) -> None:
        mapping = self.engine.get_mapping(index)
        properties = mapping.get("properties") or {}
        if (properties.get(prefix_field(1)) or {}).get("type") != "keyword" or mapping.get("dynamic") != "strict":
            raise SearchError(
                f"index template {template_name(self.alias)} was not applied to {index}; another template with a "
                f"higher priority matches {self.alias}-*"
            )

    def _index_actions(
        self, docs: Iterable[Mapping[str, Any]], index: str, result: BulkResult, sample: _Sample
    ) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        for doc in docs:
            item_id = doc.get("item_id") if isinstance(doc, Mapping) else None
            if not isinstance(item_id, str) or not item_id:
                result.reject(None, "index", "invalid_document", "the document has no item_id")
                continue
            if item_id in seen:
                # A second document with the same _id would silently replace the first and break the count check.
                result.reject(item_id, "index", "duplicate_id", "another document of this publish has the same id")
                continue
            seen.add(item_id)
            result.attempted += 1
            sample.offer(item_id, doc)
            yield {"_op_type": "index", "_index": index, "_id": item_id, "_source": doc}

    def _bulk(
        self, actions: Iterable[dict[str, Any]], result: BulkResult, *, progress: bool, total: int | None
    ) -> None:
        from tqdm.auto import tqdm

        config = self.config
        responses = self.engine.streaming_bulk(
            actions,
            chunk_size=config.chunk_size,
            max_chunk_bytes=config.max_chunk_bytes,
            raise_on_error=False,
            # A request that fails as a whole (engine gone, 5xx after transport retries) stops the run: carrying on
            # would only mark every later document failed.
            raise_on_exception=True,
            max_retries=config.bulk_max_retries,
            initial_backoff=config.initial_backoff,
            max_backoff=config.max_backoff,
            yield_ok=True,
        )
        with tqdm(total=total, desc=f"publishing to {self.alias}", unit="doc", disable=not progress) as bar:
            for ok, response in responses:
                result.record(ok, response)
                bar.update(1)

    def _verify(self, index: str, result: BulkResult, sample: _Sample) -> tuple[int, int]:
        passing = [error for error in result.errors if not error.refused]
        if passing:
            # An index missing documents that a retry would have indexed must never go live.
            shown = "; ".join(error.describe() for error in passing[:_ERRORS_IN_MESSAGES])
            raise SearchError(f"{_documents(len(passing))} failed for a reason that may pass on a retry: {shown}")
        if result.failed > self.config.max_failed_documents:
            raise SearchError(
                f"{_documents(result.failed)} failed (max_failed_documents is {self.config.max_failed_documents}): "
                f"{result.describe_errors()}"
            )
        if result.indexed == 0 and not self.config.allow_empty:
            raise SearchError("no documents were indexed; an empty index does not go live unless allow_empty is set")
        self.engine.put_settings(index, {"index": {"refresh_interval": None}})
        self.engine.refresh(index)
        doc_count = self.engine.count(index)
        if doc_count != result.indexed:
            raise SearchError(f"{index} holds {doc_count} documents but {result.indexed} were indexed")
        failed_ids = {error.item_id for error in result.errors}
        # Compare with what the client's own JSON encoding makes of each document (tuples become lists, ...).
        normalise = self.engine.round_trip()
        expected = {item_id: normalise(doc) for item_id, doc in sample.docs.items() if item_id not in failed_ids}
        if expected:
            stored = self.engine.mget(index, sorted(expected))
            differing = sorted(item_id for item_id, doc in expected.items() if stored.get(item_id) != doc)
            if differing:
                raise SearchError(
                    f"{len(differing)} of {len(expected)} sampled documents read back different from what was sent "
                    f"(e.g. {differing[:5]})"
                )
        return doc_count, len(expected)

    def swap_alias(self, index: str) -> SwapResult:
        """Make ``index``, a verified index of this alias (from ``publish_full(..., live=False)``), live in one atomic
        request, then prune old indexes down to ``keep_indexes``. Idempotent: if ``index`` is live already, nothing
        changes. Refuses an index this alias did not publish, or one whose load was not verified."""
        previous = self.live_index()
        if previous == index:
            logger.info("alias %s already points at %s", self.alias, index)
            return SwapResult(self.alias, index, previous, swapped=False)
        with self.engine.translate(f"checking index {index}"):
            exists = self.engine.index_exists(index)
        meta = self._index_meta(index) if exists else {}
        if meta.get("alias") != self.alias or not meta.get("verified"):
            reason = "does not exist" if not exists else "is not a verified index of this alias"
            raise SearchError(
                f"cannot point alias {self.alias!r} at {index}: it {reason}; the alias still points at "
                f"{previous or 'nothing'}"
            )
        with self.engine.translate(f"moving alias {self.alias!r} from {previous or 'nothing'} to {index}"):
            self._swap(index, previous)
        logger.info("alias %s now points at %s (was %s)", self.alias, index, previous)
        pruned, prune_error = self._prune(cutoff=str(meta.get("created_at") or ""))
        return SwapResult(self.alias, index, previous, swapped=True, pruned=pruned, prune_error=prune_error)

    def _swap(self, index: str, previous: str | None) -> None:
        actions: list[dict[str, Any]] = []
        if previous is not None:
            actions.append({"remove": {"index": previous, "alias": self.alias}})
        actions.append({"add": {"index": index, "alias": self.alias}})
        try:
            self.engine.update_aliases(actions)
        except self.engine.client_errors():
            # The change may have been applied with only the response lost; the alias itself is the truth.
            try:
                if self.engine.alias_targets(self.alias) == [index]:
                    return
            except self.engine.client_errors():
                pass
            raise

    def _abandon(self, index: str, previous: str | None, result: BulkResult, exc: Exception | None) -> PublishError:
        """Clean up after a full publish that failed before going live, and say exactly where things stand."""
        if exc is None:
            reason = "interrupted"
        elif isinstance(exc, SearchError):
            reason = str(exc)
        elif isinstance(exc, self.engine.client_errors()):
            reason = self.engine.describe(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        deleted = False
        try:
            targets: list[str] | None = self.engine.alias_targets(self.alias)
        except self.engine.client_errors():
            targets = None
            fate = "was left in place (the engine could not be asked whether it is live, so it was not deleted)"
        if targets is not None and index in targets:
            fate = "is live after all (the alias swap was applied); nothing was deleted"
        elif targets is not None:
            try:
                self.engine.delete_index(index)
                deleted = True
                fate = "was deleted"
            except self.engine.client_errors() as delete_exc:
                fate = f"was left in place (could not delete it: {self.engine.describe(delete_exc)})"
        if not deleted and (targets is None or index not in targets):
            fate += "; the next successful publish removes it"
        if targets is None:
            where = (
                f"Alias {self.alias!r} could not be read now; it pointed at {previous or 'nothing (it did not exist)'} "
                "before this publish and is changed only by one atomic request"
            )
        elif index in targets:
            where = f"Alias {self.alias!r} points at the new index: the swap was applied although an error was reported"
        else:
            now = ", ".join(targets) or "nothing (it does not exist yet)"
            where = f"Alias {self.alias!r} was not changed: it points at {now}"
        message = (
            f"full publish to alias {self.alias!r} failed before going live: {reason}. {where}. "
            f"The new index {index} {fate}. Documents: {result.summary()}."
        )
        logger.error("%s", message)
        return PublishError(
            message, index=index, alias=self.alias, live_index=previous, index_deleted=deleted, result=result
        )

    def prune(self) -> list[str]:
        """Delete this alias's indexes beyond the newest ``keep_indexes`` (never the live one). Returns the names."""
        live = self.live_index()
        cutoff = None
        if live is not None:
            cutoff = self._index_meta(live).get("created_at")
        deleted, error = self._prune(cutoff=cutoff)
        if error:
            raise SearchError(error)
        return deleted

    def _prune(self, cutoff: str | None) -> tuple[list[str], str | None]:
        """Keep the live index and the newest ``keep_indexes`` verified ones; delete other verified ones and
        unverified leftovers created before ``cutoff``. Failures are reported, not raised: the publish is live."""
        try:
            live = set(self._alias_targets())
            managed = self._managed_indexes()
        except SearchError as exc:
            return [], f"pruning skipped: {exc}"
        verified = [name for name, meta in managed if meta.get("verified")]
        keep = live | set(verified[: self.config.keep_indexes])
        doomed = [
            name
            for name, meta in managed
            if name not in keep
            and (meta.get("verified") or (cutoff is not None and str(meta.get("created_at", "")) < cutoff))
        ]
        deleted, problems = [], []
        for name in doomed:
            try:
                self.engine.delete_index(name)
                deleted.append(name)
            except self.engine.client_errors() as exc:
                problems.append(f"{name}: {self.engine.describe(exc)}")
        if deleted:
            logger.info("pruned %s", ", ".join(deleted))
        error = f"could not delete old indexes: {'; '.join(problems)}" if problems else None
        if error:
            logger.warning("%s", error)
        return deleted, error

    # -- rollback --------------------------------------------------------------------------------------------------

    def rollback(self) -> RollbackResult:
        """Point the alias at the newest verified index older than the live one, in one atomic request."""
        live = self.live_index()
        if live is None:
            raise SearchError(f"alias {self.alias!r} does not exist; there is nothing to roll back")
        managed = self._managed_indexes()
        created = {name: str(meta.get("created_at", "")) for name, meta in managed}
        if live not in created:
            raise SearchError(f"alias {self.alias!r} points at {live}, which was not published by lmindexer")
        older = [name for name, meta in managed if meta.get("verified") and created[name] < created[live]]
        if not older:
            kept = ", ".join(created) or "none"
            raise SearchError(f"no earlier verified index of alias {self.alias!r} to roll back to (indexes: {kept})")
        target = older[0]
        with self.engine.translate(f"moving alias {self.alias!r} from {live} to {target}"):
            self.engine.update_aliases(
                [{"remove": {"index": live, "alias": self.alias}}, {"add": {"index": target, "alias": self.alias}}]
            )
            count = self.engine.count(target)
        logger.info("rolled alias %s back from %s to %s", self.alias, live, target)
        return RollbackResult(alias=self.alias, from_index=live, to_index=target, doc_count=count)

    # -- incremental publish ---------------------------------------------------------------------------------------

    def publish_incremental(
        self,
        upserts: Iterable[Mapping[str, Any]] = (),
        deletes: Iterable[str] = (),
        *,
        refresh: bool = True,
        progress: bool = False,
    ) -> BulkResult:
        """Index (create or replace) ``upserts`` and then delete ``deletes`` through the alias.

        The alias must exist (a full publish comes first). Deleting a missing document is counted as
        ``not_found``, not as a failure. Documents of another snapshot version than the live index are refused
        per document, since they would mix two ID spaces. Both operations are idempotent, so after a
        :class:`PublishError` (engine gone mid-run) a rerun with the same input completes the job.
        """
        live = self.live_index()
        if live is None:
            raise SearchError(f"alias {self.alias!r} does not exist yet; run a full publish first")
        live_version = self._index_meta(live).get("snapshot_version")
        result = BulkResult()
        actions = self._change_actions(upserts, deletes, live_version, result)
        try:
            self._bulk(actions, result, progress=progress, total=None)
            if refresh:
                self.engine.refresh(self.alias)
        except self.engine.client_errors() as exc:
            raise PublishError(
                f"incremental publish to alias {self.alias!r} stopped: {self.engine.describe(exc)}. "
                f"Documents: {result.summary()}. Upserts and deletes are idempotent: rerun with the same input.",
                alias=self.alias,
                live_index=live,
                result=result,
            ) from exc
        logger.info("incremental publish to %s (%s): %s", self.alias, live, result.summary())
        return result

    def _change_actions(
        self,
        upserts: Iterable[Mapping[str, Any]],
        deletes: Iterable[str],
        live_version: str | None,
        result: BulkResult,
    ) -> Iterator[dict[str, Any]]:
        for doc in upserts:
            item_id = doc.get("item_id") if isinstance(doc, Mapping) else None
            if not isinstance(item_id, str) or not item_id:
                result.reject(None, "index", "invalid_document", "the document has no item_id")
                continue
            version = doc.get("snapshot_version")
            if live_version is not None and version != live_version:
                result.reject(
                    item_id,
                    "index",
                    "snapshot_version_mismatch",
                    f"document is from snapshot {version!r} but the live index holds {live_version!r}",
                )
                continue
            result.attempted += 1
            yield {"_op_type": "index", "_index": self.alias, "_id": item_id, "_source": doc}
        for item_id in deletes:
            if not isinstance(item_id, str) or not item_id:
                result.reject(None, "delete", "invalid_id", f"not an item id: {item_id!r}")
                continue
            result.attempted += 1
            yield {"_op_type": "delete", "_index": self.alias, "_id": item_id}

    # -- lookups ---------------------------------------------------------------------------------------------------

    def get(self, item_id: str) -> dict[str, Any] | None:
        """The live document of an item, ``None`` if there is none."""
        with self.engine.translate(f"reading {item_id!r} from alias {self.alias!r}"):
            return self.engine.get(self.alias, item_id)

    def get_many(self, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The live documents of those items that have one, by item_id (one request)."""
        wanted = sorted({item_id for item_id in item_ids if isinstance(item_id, str) and item_id})
        if not wanted:
            return {}
        with self.engine.translate(f"reading {len(wanted)} documents from alias {self.alias!r}"):
            return self.engine.mget(self.alias, wanted)

    def search_text(self, query: str, size: int = 10) -> list[TextHit]:
        """Live documents matching free text on their title and text, best first (the engine's BM25 relevance).

        The text goes into a structured ``multi_match`` query as data: query-string operators, field names and
        wildcards in it are analysed as words, never interpreted.
        """
        self._check_text_search(query, size)
        body = self._text_query(query)
        with self.engine.translate(f"searching alias {self.alias!r} for text"):
            hits = self.engine.search_hits(
                self.alias, query=body, size=size, sort=["_score", {"item_id": "asc"}], track_scores=True
            )
        return [TextHit(dict(hit["_source"]), float(hit.get("_score") or 0.0)) for hit in hits]

    def _text_query(self, query: str) -> dict[str, Any]:
        return {
            "multi_match": {
                "query": query,
                "fields": [f"{name}^{boost:g}" for name, boost in TEXT_FIELDS.items()],
                "type": "best_fields",
                # A document matching in both fields ranks above one matching as well in only one of them.
                "tie_breaker": 0.3,
            }
        }

    def search_boosted(self, query: str, boosts: PrefixBoosts, size: int = 10) -> BoostedSearch:
        """The text search with the generative model's prefix boosts added (:mod:`lmindexer.downstream.fusion`).

        Two requests: the plain text search's best score sets the scale, then one ``bool`` query adds, for each
        boosted prefix, a ``constant_score`` ``term`` query on its ``sid_prefix_<level>`` field worth that prefix's
        boost times the scale. A document matching no word of the query but a boosted prefix is a hit too. The
        prefixes are values in the query body, like the text.
        """
        self._check_text_search(query, size)
        if boosts.levels > MAX_PREFIX_LEVELS:
            raise SearchError(f"prefix boosts name {boosts.levels} levels; at most {MAX_PREFIX_LEVELS} are published")
        best = self.search_text(query, size=1)
        scale = best[0].score if best and best[0].score > 0 else 1.0
        clauses: list[dict[str, Any]] = [self._text_query(query)]
        clauses += [
            {"constant_score": {"filter": {"term": {prefix_field(level): prefix}}, "boost": boost}}
            for level, prefix, boost in prefix_terms(boosts, scale)
        ]
        body = {"bool": {"should": clauses, "minimum_should_match": 1}}
        with self.engine.translate(f"searching alias {self.alias!r} for text with ID-prefix boosts"):
            hits = self.engine.search_hits(
                self.alias, query=body, size=size, sort=["_score", {"item_id": "asc"}], track_scores=True
            )
        return BoostedSearch([TextHit(dict(hit["_source"]), float(hit.get("_score") or 0.0)) for hit in hits], scale)

    def _check_text_search(self, query: str, size: int) -> None:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("a text search needs a non-empty query")
        if not 1 <= size <= MAX_LOOKUP_SIZE:
            raise SearchError(f"size must be between 1 and {MAX_LOOKUP_SIZE}, got {size}")

    def items_sharing_prefix(self, sid: str, level: int, size: int = 10) -> list[dict[str, Any]]:
        """Live documents whose semantic ID shares the first ``level`` codes of ``sid``, ordered by sid."""
        if not 1 <= size <= MAX_LOOKUP_SIZE:
            raise SearchError(f"size must be between 1 and {MAX_LOOKUP_SIZE}, got {size}")
        prefix = parse_prefix(sid, level)
        with self.engine.translate(f"searching alias {self.alias!r} for prefix {prefix!r}"):
            return self.engine.search(
                self.alias,
                query={"term": {prefix_field(level): prefix}},
                size=size,
                sort=[{"sid": "asc"}, {"item_id": "asc"}],
            )

    def count(self) -> int:
        """Documents behind the alias."""
        with self.engine.translate(f"counting documents of alias {self.alias!r}"):
            return self.engine.count(self.alias)


def rollback_alias(config: SearchConfig | Mapping[str, Any] | None = None) -> RollbackResult:
    """Roll the configured alias back to its previous verified index (what ``lmindexer search rollback`` runs)."""
    with SearchBackend(config) as backend:
        return backend.rollback()


def list_alias_indexes(config: SearchConfig | Mapping[str, Any] | None = None) -> list[IndexInfo]:
    """The configured alias's indexes, newest first, with document counts and which one is live."""
    with SearchBackend(config) as backend:
        return backend.list_indexes()
