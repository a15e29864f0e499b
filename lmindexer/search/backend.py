"""Publishing search documents: full (a new versioned index, made live by one atomic alias swap) or incremental
(upserts and deletes through the alias), with pruning and rollback. :class:`SearchBackend` is the writer; it reads
too, through :class:`~lmindexer.search.reader.SearchReader`, which serving uses on its own.

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
from typing import Any

from lmindexer.errors import UserError
from lmindexer.search.config import SearchConfig
from lmindexer.search.documents import (
    MAPPING_VERSION,
    META_KEY,
    index_name,
    index_template,
    prefix_field,
    template_name,
)
from lmindexer.search.errors import PublishError, SearchError
from lmindexer.search.reader import MAX_LOOKUP_SIZE, SearchReader
from lmindexer.search.results import (
    _ERRORS_IN_MESSAGES,
    BoostedSearch,
    BulkResult,
    DocumentError,
    IndexInfo,
    PublishResult,
    RollbackResult,
    SwapResult,
    TextHit,
    _documents,
)

logger = logging.getLogger(__name__)


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


class SearchBackend(SearchReader):
    """Publishes to one alias on one engine (and reads it, as :class:`SearchReader`). Use as a context manager, or
    call :meth:`close`."""

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
        meta = self._create_index(index, version, run_id, previous)
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
        return PublishResult(alias, index, previous, version, run_id, result, doc_count, sample_checked, pruned,
                             prune_error)  # fmt: skip

    def _create_index(self, index: str, version: str, run_id: str, previous: str | None) -> dict[str, Any]:
        """Create ``index`` empty and unverified, from the alias's template; returns the ``_meta`` it records."""
        alias = self.alias
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
        return meta

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


def rollback_alias(config: SearchConfig | Mapping[str, Any] | None = None) -> RollbackResult:
    """Roll the configured alias back to its previous verified index (what ``lmindexer search rollback`` runs)."""
    with SearchBackend(config) as backend:
        return backend.rollback()


def list_alias_indexes(config: SearchConfig | Mapping[str, Any] | None = None) -> list[IndexInfo]:
    """The configured alias's indexes, newest first, with document counts and which one is live."""
    with SearchBackend(config) as backend:
        return backend.list_indexes()


__all__ = [
    "MAX_LOOKUP_SIZE",
    "BoostedSearch",
    "BulkResult",
    "DocumentError",
    "IndexInfo",
    "PublishResult",
    "RollbackResult",
    "SearchBackend",
    "SearchReader",
    "SwapResult",
    "TextHit",
    "list_alias_indexes",
    "rollback_alias",
]
