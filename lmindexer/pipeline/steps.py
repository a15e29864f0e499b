"""The reindex pipeline as plain functions, one per step, in pipeline order; the Airflow DAG only wires them.

discover -> validate -> merge -> decide -> (train) -> plan shards -> assign shard (mapped) -> reduce -> check
-> publish -> commit -> confirm. Every step takes and returns the typed results of :mod:`lmindexer.pipeline.results`
(small frozen records; the data lives in the store, under the run's own keys), stores its result under
``state/runs/<run>/``, and returns that stored result when it is run again, so a retried task or a rerun of the whole
run repeats no work and works on the same drops. Nothing becomes current before ``commit``.

What keeps data safe when runs overlap or are rerun:

- ``discover`` is remembered like every other step: the set of drops a run works on is fixed the first time it
  is discovered, so clearing or rerunning the run later never picks up a drop that landed in between (the next
  run takes it). ``commit`` marks as processed exactly the drops that this run validated.
- ``merge`` records the version of ``state/current.json`` it merged onto. ``decide``, ``publish`` and ``commit``
  refuse to go on (:class:`StaleRun`) once another run has committed since, and ``commit`` moves the pointer
  compare-and-swap against that version, so two runs can never both commit (nor count the same items twice).
- The ID table is only ever written compare-and-swap (:func:`~lmindexer.idtable.store_allocation`): concurrent
  runs in the same ID space both keep their IDs, and an ID once handed out never changes owner.
- One bad drop never blocks the others: a drop over the invalid-row threshold, or one that cannot be read as a
  catalogue at all, is quarantined whole and recorded as rejected; the run carries on with the other drops and
  ``confirm`` fails it at the end, so the rejection is seen. Documents the search engine refuses are quarantined
  with the engine's reason, within the same threshold.

The modules a step needs beyond storage and Arrow (the indexers and torch, the metrics, the search clients) are
imported inside that step, so a task that only validates or publishes does not load a model stack.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmindexer.assign import code_items, read_candidates, write_candidates
from lmindexer.cache import cache_root
from lmindexer.catalog.items import Item
from lmindexer.catalog.store import SCHEMA as CATALOG_SCHEMA
from lmindexer.catalog.store import catalog_file, items_from_table, merge_into_version, read_catalog_table
from lmindexer.errors import CatalogError, UserError
from lmindexer.idtable import (
    IdSpace,
    IdTable,
    id_stability,
    read_for_check,
    read_id_rows,
    store_allocation,
    stored_item_ids,
)
from lmindexer.pipeline.config import Mode, PipelineConfig, safe_run_id
from lmindexer.pipeline.records import current as current_record
from lmindexer.pipeline.records import current_versioned, processing_state, remembered, set_current
from lmindexer.pipeline.results import (
    Checked,
    Confirmed,
    Decision,
    IdQuality,
    LiveVersion,
    Merged,
    Published,
    Reduced,
    Shard,
    ShardCodes,
    Snapshot,
    Swapped,
    ValidatedDrop,
    accepted,
)
from lmindexer.storage.drops import Drop
from lmindexer.storage.parquet import read_parquet, write_parquet
from lmindexer.storage.s3 import exists, upload_tree, write_bytes
from lmindexer.storage.versioned import VersionConflict
from lmindexer.threads import limited_threads, threads_per_task
from lmindexer.training.launch import TrainingFailed, accelerate_command, run_training

if TYPE_CHECKING:  # the metrics load scikit-learn, which a task that only validates or publishes must not
    from lmindexer.metrics import Labels

log = logging.getLogger(__name__)

ENGINE_REJECTED = "engine_rejected"  # the rule of a document the search engine refused
_ENGINE_FIELD = re.compile(r"field \[([^\]]+)\]")


class QualityGateFailed(UserError):
    """A new ID table failed a check; nothing was published."""


class StaleRun(UserError):
    """Another run committed after this one merged its drops: this run can no longer publish or commit."""


class DropsRejected(UserError):
    """Drops of the run were quarantined whole (over the invalid-row threshold, or not readable as catalogues)."""


class DocumentsRefused(UserError):
    """The search engine refused more documents than the invalid-row threshold allows."""


def live_version(config: PipelineConfig) -> LiveVersion | None:
    """What ``state/current.json`` says is live (None: nothing committed yet)."""
    record = current_record(config)
    return None if record is None else LiveVersion.from_xcom(record)


# -- steps, in pipeline order -------------------------------------------------------------------------------------


def discover(config: PipelineConfig, run_id: str) -> list[Drop]:
    """Catalogue drops under the incoming prefix that have not been processed (by key and ETag), oldest first.

    Remembered per run: a retried task, a cleared run or a rerun of the whole run works on exactly the drops its
    first attempt found. A drop that lands later waits for the next run."""
    from lmindexer.storage.drops import list_drops

    def compute() -> dict[str, Any]:
        drops = list_drops(config.base_uri, config.incoming_prefix)
        state = processing_state(config)
        return {"drops": [drop.to_dict() for drop in state.unprocessed(drops)]}

    return [Drop.from_dict(entry) for entry in remembered(config, run_id, "discover", compute)["drops"]]


def validate_drops(config: PipelineConfig, run_id: str, drops: Sequence[Drop]) -> list[ValidatedDrop]:
    """Validate each drop: bad rows to ``quarantine/<run>/<drop>/`` with their rule, good rows to ``staged/``.

    A drop whose invalid share exceeds the threshold, or that cannot be read as a catalogue at all (unknown format,
    unreadable file, no item_id column, ...), is quarantined whole: its result says ``accepted: false`` and why, and
    the other drops go on. Every result names its drop, so ``commit`` records exactly these drops."""
    from lmindexer.validation import ValidationFailed, validate_drop
    from lmindexer.validation.common import RunLayout, dumps_document

    discovered = discover(config, run_id)
    if list(drops) != discovered:
        raise UserError(f"run {run_id} was asked to validate other drops than it discovered; refusing")

    def compute() -> dict[str, Any]:
        results = []
        for number, drop in enumerate(discovered):
            validation_run = f"{run_id}/{number:03d}-{drop.slug}"
            try:
                outcome = validate_drop(
                    drop.uri,
                    validation_run,
                    base_uri=config.base_uri,
                    threshold=config.max_invalid_share,
                    staged_prefix=config.staged_prefix,
                    quarantine_prefix=config.quarantine_prefix,
                )
            except ValidationFailed as exc:
                log.warning("drop %s rejected: %s", drop.key, exc)
                results.append({"drop": drop.to_dict(), "accepted": False, "reason": str(exc), **exc.summary.to_dict()})
                continue
            except CatalogError as exc:
                # The file as a whole is not a catalogue: there are no rows to count, so the drop is quarantined
                # whole, with the reason, and its object stays where it landed.
                log.warning("drop %s rejected: %s", drop.key, exc)
                layout = RunLayout(config.base_uri, validation_run, config.staged_prefix, config.quarantine_prefix)
                record = {
                    "source": drop.uri, "run_id": validation_run, "rows_in": 0, "staged": 0, "quarantined": 0,
                    "tombstones": 0, "rejections_by_rule": {"unreadable_file": 1}, "success": False,
                    "staged_uri": None, "quarantine_uri": layout.summary, "summary_uri": layout.summary,
                }  # fmt: skip
                write_bytes(dumps_document({**record, "reason": str(exc)}), layout.summary)
                results.append({"drop": drop.to_dict(), "accepted": False, "reason": str(exc), **record})
                continue
            results.append({"drop": drop.to_dict(), "accepted": True, **outcome.to_dict()})
        return {"drops": results}

    return ValidatedDrop.many(remembered(config, run_id, "validate", compute)["drops"])


def merge(config: PipelineConfig, run_id: str, validated: Sequence[ValidatedDrop]) -> Merged:
    """Apply the accepted drops (in order) to the current catalogue and write the run's catalogue version.

    Records which committed version it merged onto (``base_version``): the later steps refuse to go on once
    another run has committed since, because this run's catalogue would then lack that run's changes."""

    def compute() -> dict[str, Any]:
        live_record, version = current_versioned(config)
        live = None if live_record is None else LiveVersion.from_xcom(live_record)
        drops = [read_catalog_rows(_staged(entry)) for entry in accepted(validated)]
        written, delta = merge_into_version(
            live.catalog_uri if live else None, drops, config.uri(config.catalog_prefix, run_id),
            max_parts=config.catalog_max_parts,
        )  # fmt: skip
        delta_uri = config.uri(config.staged_prefix, run_id, "delta.parquet")
        kinds = (["new"] * len(delta.new)) + (["changed"] * len(delta.changed)) + (["deleted"] * len(delta.deleted))
        write_parquet(pa.table({"item_id": delta.new + delta.changed + delta.deleted, "change": kinds}), delta_uri)
        # The catalogue rows of the items this run added or changed: what the later steps encode and publish, read
        # without resolving the whole catalogue version.
        upserts_uri = config.uri(config.staged_prefix, run_id, "upserts.parquet")
        write_parquet(written.upserts, upserts_uri)
        log.info("catalogue version %s: %d items in %d parts%s", written.uri, written.items, written.parts,
                 " (compacted)" if written.compacted else "")  # fmt: skip
        return Merged(
            catalog_uri=written.uri,
            delta_uri=delta_uri,
            upserts_uri=upserts_uri,
            items=written.items,
            previous_items=written.items - len(delta.new) + len(delta.deleted),
            base_run_id=live.run_id if live else None,
            base_version=version,
            **delta.counts(),
        ).to_xcom()

    return Merged.from_xcom(remembered(config, run_id, "merge", compute))


def decide(config: PipelineConfig, run_id: str, merged: Merged, mode: Mode = "auto") -> Decision:
    """Apply the current snapshot, or retrain: forced, no snapshot yet, or too much added since the last retrain."""

    def decision() -> Decision:
        live, _ = _ensure_not_stale(config, run_id, merged)
        if mode == "retrain":
            return Decision("retrain", "retrain requested")
        if live is None:
            if mode == "apply":
                raise UserError("mode 'apply' needs a snapshot, and none has been published yet; use auto or retrain")
            return Decision("retrain", "no snapshot yet")
        added = live.added_since_retrain + merged.new
        share = added / max(live.items_at_retrain or 0, 1)
        if mode == "apply":
            return Decision("apply", "apply requested", share)
        if share > config.retrain_added_share:
            reason = f"{added} items added since the last retrain ({share:.1%} > {config.retrain_added_share:.1%})"
            return Decision("retrain", reason, share)
        return Decision("apply", f"{share:.1%} added since the last retrain", share)

    return Decision.from_xcom(remembered(config, run_id, "decide", lambda: decision().to_xcom()))


def train(config: PipelineConfig, run_id: str, merged: Merged, decision: Decision) -> Snapshot:
    """Fit a new snapshot on the run's catalogue in an ``accelerate launch`` subprocess (retrain only)."""

    def compute() -> dict[str, Any]:
        if decision.mode != "retrain":
            live = live_version(config)
            if live is None:
                raise UserError("nothing is live to apply: the decision to apply needs a committed snapshot")
            return Snapshot(
                trained=False, snapshot_uri=live.snapshot_uri, snapshot_version=live.snapshot_version
            ).to_xcom()
        import yaml

        from lmindexer.indexers.base import read_snapshot_document

        with tempfile.TemporaryDirectory(prefix="lmindexer-train-") as tmp:
            work = Path(tmp)
            with catalog_file(merged.catalog_uri) as path:
                catalog = work / "catalog.parquet"
                shutil.copyfile(path, catalog)
            options = work / "options.yaml"
            options.write_text(yaml.safe_dump(config.indexer.model_dump(mode="json")))
            out = work / "snapshot"
            # Outside the temporary directory, so that a retry of this task on the same worker resumes training.
            checkpoint = cache_root() / "training" / safe_run_id(run_id)
            run_training(train_command(config, catalog, out, options, checkpoint), produces=out / "snapshot.json")
            version = read_snapshot_document(out)["version"]
            snapshot_uri = config.uri(config.models_prefix, version)
            upload_tree(out, snapshot_uri)
        return Snapshot(trained=True, snapshot_uri=snapshot_uri, snapshot_version=version).to_xcom()

    return Snapshot.from_xcom(remembered(config, run_id, "train", compute))


def plan_shards(config: PipelineConfig, run_id: str, merged: Merged, snapshot: Snapshot) -> list[Shard]:
    """Split the items that still need an ID in the snapshot's space into shards for mapped assignment."""

    def compute() -> dict[str, Any]:
        table_uri = ids_uri(config, snapshot.snapshot_version)
        known = stored_item_ids(table_uri)
        if _only_upserts_can_lack_ids(config, merged, table_uri, known):
            # The run's upserts (a small file) are the only items that can lack an ID in this table.
            candidates = read_catalog_table(merged.upserts_uri, columns=["item_id"]).column("item_id")  # type: ignore[arg-type]
        else:
            # Every live item without an ID in this table, also one an interrupted earlier run left without:
            # the catalogue's item_id column, read alone.
            candidates = read_catalog_table(merged.catalog_uri, columns=["item_id"], ordered=False).column("item_id")
        live_ids = candidates if known is None else _without(candidates, known)
        live_ids = live_ids.take(pc.sort_indices(live_ids))  # the few left, in the catalogue's order
        needed = len(live_ids)
        # The items themselves, not just their ids (sorted by item_id, as the catalogue is): a shard then reads
        # only the items to encode, so its cost follows the new items rather than the size of the catalogue.
        # Usually they are among the run's upserts; items an earlier run left without an ID come from the whole
        # catalogue.
        todo = _upserted_rows(merged, live_ids)
        starts = range(0, needed, config.shard_size)
        shards = []
        for n, start in enumerate(starts):
            end = min(start + config.shard_size, needed)
            # One file per shard: a shard task reads its own rows and nothing else.
            todo_uri = config.uri(config.staged_prefix, run_id, "to_assign", f"shard-{n:05d}.parquet")
            write_parquet(todo.slice(start, end - start), todo_uri)
            shards.append(Shard(shard=n, start=start, end=end, todo_uri=todo_uri, shards=len(starts)).to_xcom())
        return {"shards": shards, "items": needed}

    return Shard.many(remembered(config, run_id, "plan", compute)["shards"])


def assign_shard(
    config: PipelineConfig, run_id: str, snapshot: Snapshot, shard: Shard, *, tasks_at_once: int = 1
) -> ShardCodes:
    """Learned codes for one shard of items (no suffixes yet: those are allocated in one place, by ``reduce_ids``).

    ``tasks_at_once``: how many shards may be coded at the same time on this machine's cores (the orchestrator's
    limit); the shard takes its share of the cores as torch and BLAS threads (:mod:`lmindexer.threads`), never more
    than the run has shards."""

    def compute() -> dict[str, Any]:
        from lmindexer.indexers import load_snapshot

        todo = read_catalog_table(shard.todo_uri)
        if todo.num_rows != shard.end - shard.start:
            # A plan stored by the previous release: one file of the run's items for all shards.
            todo = todo.slice(shard.start, shard.end - shard.start)
        items = items_from_table(todo)
        indexer = load_snapshot(snapshot.snapshot_uri)
        threads = threads_per_task(max(1, min(tasks_at_once, shard.shards)))
        log.info("shard %s: %d items on %d threads", shard.shard, len(items), threads)
        with limited_threads(threads):
            candidates = code_items(indexer, items)
        codes_uri = config.uri(config.staged_prefix, run_id, "codes", f"shard-{shard.shard:05d}.parquet")
        write_candidates(candidates, codes_uri)
        return ShardCodes(shard=shard.shard, codes_uri=codes_uri, items=len(candidates)).to_xcom()

    return ShardCodes.from_xcom(remembered(config, run_id, f"assign-{shard.shard:05d}", compute))


def reduce_ids(config: PipelineConfig, run_id: str, snapshot: Snapshot, shards: Sequence[ShardCodes]) -> Reduced:
    """Give every newly coded item the next free suffix of its code tuple, in one place, and write the ID table.

    The table only grows and is written compare-and-swap (:func:`~lmindexer.idtable.store_allocation`): existing
    rows are checked to be unchanged, and if another run wrote the table meanwhile the allocation is redone on top
    of that run's rows, so both runs keep every ID they were given."""

    def compute() -> dict[str, Any]:
        from lmindexer.indexers import read_id_space

        table_uri = ids_uri(config, snapshot.snapshot_version)
        space = read_id_space(snapshot.snapshot_uri)
        candidates = [c for shard in sorted(shards, key=lambda s: s.shard) for c in read_candidates(shard.codes_uri)]
        stored = store_allocation(table_uri, space, candidates, max_parts=config.ids_max_parts)
        return Reduced(
            ids_uri=table_uri,
            rows_before=stored.rows_before,
            rows_after=stored.rows_after,
            newly_assigned=stored.report.newly_assigned,
            write_attempts=stored.attempts,
        ).to_xcom()

    return Reduced.from_xcom(remembered(config, run_id, "reduce", compute))


def check(
    config: PipelineConfig, run_id: str, merged: Merged, decision: Decision, snapshot: Snapshot, reduced: Reduced
) -> Checked:
    """ID checks (one unique ID per live item, codes in range, nothing lost) and quality gates against the
    previous version. Raises :class:`QualityGateFailed` with every failed check, before anything is published."""

    def compute() -> dict[str, Any]:
        from lmindexer.validation import validate_ids

        live_ids, labels = _live_catalogue(config, merged.catalog_uri)
        live = live_version(config)
        same_table = live is not None and live.ids_uri == reduced.ids_uri
        # The suite runs on the rows added since the live version committed (all rows of a new table); the read
        # verified the whole table's structure (and these rows whole), and the committed rows passed this suite
        # when they were added.
        checked_before = (live.ids_rows or 0) if live is not None and same_table else 0
        table = read_for_check(reduced.ids_uri, first_row=checked_before)
        # Each live item's row, looked up once for the ID suite (items without an ID) and the quality metrics.
        rows = pc.index_in(live_ids, value_set=table.item_ids)
        output = validate_ids(table, live_ids, staged_rows=rows)
        failures = [] if output.success else [f"ID table checks: {output.describe()}"]
        metrics = _quality(table.codes, table.space, rows, labels, config.label)
        stability = None
        if same_table:
            # Same ID space, same table: every write of it verified, row by row, that earlier IDs are unchanged.
            kept = reduced.rows_before
            stability = {"common_items": kept, "unchanged": kept, "stability": 1.0 if kept else None,
                         "same_id_space": True}  # fmt: skip
        elif live is not None:
            stability = id_stability(IdTable.read(live.ids_uri), IdTable.read(reduced.ids_uri))
        failures += _gate_failures(config, decision, metrics, live)
        if failures:
            raise QualityGateFailed("; ".join(failures))
        return Checked(passed=True, metrics=metrics, stability=stability, id_rows_checked=output.rows_checked).to_xcom()

    return Checked.from_xcom(remembered(config, run_id, "check", compute))


def publish(
    config: PipelineConfig, search: Any, run_id: str, merged: Merged, decision: Decision, reduced: Reduced
) -> Published:
    """Publish to the search engine: after a retrain (or when the alias does not exist yet) a new versioned index,
    loaded and verified beside the live one, which :func:`swap_alias` then makes live; otherwise upserts of new and
    changed items and deletes of removed ones through the alias.

    Documents the engine refuses for what they hold (a 4xx answer such as a field of the wrong type) are
    quarantined with the engine's reason, up to the invalid-row threshold of the documents sent; a failure that
    may pass (throttling, 5xx, a lost connection) fails the step, and a rerun completes it."""
    from lmindexer.search import SearchBackend, iter_documents, load_search_config
    from lmindexer.search.errors import PublishError

    def compute() -> dict[str, Any]:
        _ensure_not_stale(config, run_id, merged)
        delta = read_parquet(merged.delta_uri).to_pylist()
        settings = load_search_config(search)
        with SearchBackend(settings.model_copy(update={"max_failed_documents": 0})) as backend:
            full = decision.mode == "retrain" or backend.live_index() is None
        if full:
            table = IdTable.read(reduced.ids_uri)
            catalogue = {item.item_id: item for item in items_from_table(read_catalog_table(merged.catalog_uri))}
            allowed = _refusals_allowed(config, len(catalogue))
            with SearchBackend(settings.model_copy(update={"max_failed_documents": allowed})) as backend:
                result = backend.publish_full(
                    iter_documents(catalogue.values(), table), table.space.snapshot_version, run_id,
                    total=len(catalogue), live=False,
                )  # fmt: skip
            refused = [e for e in result.bulk.errors if e.refused]
            return Published(
                mode="full", index=result.index, refused=len(refused),
                quarantine_uri=_quarantine_refused(config, run_id, refused), attempted=result.bulk.attempted,
                indexed=result.bulk.indexed, deleted=result.bulk.deleted, details=_account(result.to_dict()),
            ).to_xcom()  # fmt: skip
        upsert_ids = [row["item_id"] for row in delta if row["change"] in ("new", "changed")]
        deletes = [row["item_id"] for row in delta if row["change"] == "deleted"]
        # Only the rows this run changed are read, from the catalogue and from the ID table (its item_id column
        # and the row groups holding them).
        upserts = items_from_table(_upserted_rows(merged, pa.array(upsert_ids, pa.string())))
        rows = read_id_rows(reduced.ids_uri, upsert_ids)
        with SearchBackend(settings) as backend:
            bulk = backend.publish_incremental(iter_documents(upserts, rows), deletes)
            live_index = backend.live_index()
        passing = [e for e in bulk.errors if not e.refused]
        if passing:
            raise PublishError(
                f"incremental publish: {len(passing)} documents failed for a reason that may pass "
                f"({bulk.describe_errors()}); upserts and deletes are idempotent: rerun",
                result=bulk,
            )
        refused = [e for e in bulk.errors if e.refused]
        if len(refused) > _refusals_allowed(config, bulk.attempted):
            raise DocumentsRefused(
                f"the search engine refused {len(refused)} of {bulk.attempted} documents, more than the "
                f"{config.max_invalid_share:.1%} allowed: {bulk.describe_errors()}"
            )
        return Published(
            mode="incremental", index=live_index, refused=len(refused),
            quarantine_uri=_quarantine_refused(config, run_id, refused), attempted=bulk.attempted,
            indexed=bulk.indexed, deleted=bulk.deleted, details=_account(bulk.to_dict()),
        ).to_xcom()  # fmt: skip

    return Published.from_xcom(remembered(config, run_id, "publish", compute))


def swap_alias(config: PipelineConfig, search: Any, run_id: str, merged: Merged, published: Published) -> Swapped:
    """Make a full publish's new index live: one atomic alias swap, then old indexes pruned down to
    ``keep_indexes``. A step of its own so that the moment readers change over is seen, and retried, on its own; a
    run that has gone stale (another run committed since it merged) never swaps. After an incremental publish the
    alias already serves the changes and nothing moves."""
    from lmindexer.search import SearchBackend, load_search_config

    def compute() -> dict[str, Any]:
        if published.mode != "full" or published.index is None:
            return Swapped(alias=None, index=published.index, previous_index=published.index, swapped=False).to_xcom()
        _ensure_not_stale(config, run_id, merged)
        with SearchBackend(load_search_config(search)) as backend:
            return Swapped(**backend.swap_alias(published.index).to_dict()).to_xcom()

    return Swapped.from_xcom(remembered(config, run_id, "swap", compute))


def commit(
    config: PipelineConfig,
    run_id: str,
    validated: Sequence[ValidatedDrop],
    merged: Merged,
    decision: Decision,
    snapshot: Snapshot,
    reduced: Reduced,
    checked: Checked,
    published: Published,
) -> LiveVersion:
    """Make the run's versions current, then record its drops (accepted ones as processed, rejected ones as
    rejected). The last step that changes anything: before it, the previous version stays in charge.

    The pointer moves compare-and-swap against the version this run merged onto, so counts such as
    ``added_since_retrain`` build on exactly the version they replace."""
    live, version = _ensure_not_stale(config, run_id, merged)
    if live is not None and live.run_id == run_id:
        pointer = live  # this run committed already (a retry after a crash between the two writes below)
    else:
        retrained = decision.mode == "retrain"
        pointer = LiveVersion(
            run_id=run_id,
            updated_at=dt.datetime.now(dt.UTC).isoformat(),
            snapshot_uri=snapshot.snapshot_uri,
            snapshot_version=snapshot.snapshot_version,
            ids_uri=reduced.ids_uri,
            ids_rows=reduced.rows_after,
            catalog_uri=merged.catalog_uri,
            items=merged.items,
            items_at_retrain=merged.items
            if retrained or live is None or live.items_at_retrain is None
            else live.items_at_retrain,
            added_since_retrain=0 if retrained else (live.added_since_retrain if live else 0) + merged.new,
            metrics=checked.metrics,
            index=published.index,
        )
        try:
            set_current(config, pointer.to_xcom(), replacing=version)
        except VersionConflict as exc:
            raise StaleRun(
                f"run {run_id} could not commit: another run committed at the same moment ({exc}); its drops are not "
                "marked processed, so the next run takes them"
            ) from exc
    mark_processed(config, run_id, validated)
    return pointer


def confirm_drops(validated: Sequence[ValidatedDrop]) -> Confirmed:
    """The run's last word: fails (after the accepted drops were committed) when drops were rejected whole, so
    the rejection is seen where runs are watched."""
    rejected = [entry for entry in validated if not entry.accepted]
    if rejected:
        lines = "; ".join(f"{entry.drop.key}: {entry.reason or 'rejected'}" for entry in rejected)
        raise DropsRejected(
            f"{len(rejected)} of {len(validated)} drops were quarantined whole and recorded as rejected (upload a "
            f"corrected file to process them): {lines}"
        )
    return Confirmed(drops=len(validated), rejected=0)


# -- what the steps share -----------------------------------------------------------------------------------------


def _ensure_not_stale(config: PipelineConfig, run_id: str, merged: Merged) -> tuple[LiveVersion | None, str | None]:
    """The live pointer and its version, provided it is still the one this run merged onto (or this run's own)."""
    record, version = current_versioned(config)
    live = None if record is None else LiveVersion.from_xcom(record)
    if live is not None and live.run_id == run_id:
        return live, version
    if version != merged.base_version:
        raise StaleRun(
            f"run {run_id} merged its drops onto the version committed by "
            f"{merged.base_run_id or 'no run (nothing was live)'}, but run "
            f"{live.run_id if live else '?'} has committed since; nothing of this run was made current. Its drops "
            "are not marked processed, so the next run takes them: trigger a new run instead of rerunning this one"
        )
    return live, version


def _staged(entry: ValidatedDrop) -> str:
    if entry.staged_uri is None:
        raise UserError(f"drop {entry.drop.key} is recorded as accepted but has no staged rows; its record is damaged")
    return entry.staged_uri


def read_catalog_rows(location: str) -> list[Item]:
    """Rows of a staged drop, tombstones included, in file order."""
    from lmindexer.catalog.readers import CatalogReader

    return [item for batch in CatalogReader(location, strict=True) for item in batch]


def train_command(
    config: PipelineConfig, catalog: Path, out: Path, options_file: Path, checkpoint_dir: Path | None = None
) -> list[str]:
    """``accelerate launch`` of the fit entry point: the same command on a CPU box and a GPU worker."""
    return accelerate_command(config.train_processes, config.mixed_precision, [
        "fit", "--method", config.method, "--catalog", str(catalog), "--out", str(out), "--config", str(options_file),
        *(["--checkpoint-dir", str(checkpoint_dir)] if checkpoint_dir is not None else []),
        "--quiet",
    ])  # fmt: skip


def ids_uri(config: PipelineConfig, version: str) -> str:
    """The ID table of a snapshot's ID space: stored as parts under ``ids/<version>/ids.json`` (a run writes its
    own rows, not the table again), or the one Parquet file ``ids/<version>/ids.parquet`` where an ID space began
    as one (it stays one file, so no row of it is ever moved)."""
    single_file = config.uri(config.ids_prefix, version, "ids.parquet")
    return single_file if exists(single_file) else config.uri(config.ids_prefix, version, "ids.json")


def _only_upserts_can_lack_ids(
    config: PipelineConfig, merged: Merged, table_uri: str, known: pa.ChunkedArray | None
) -> bool:
    """Whether only the run's upserts can be without an ID in the table at ``table_uri``: the run merged onto the
    live version, whose every item had a row in this very table when its check passed, and the table still holds
    at least the rows it held then (it only grows). Anything else (another ID space, a table with fewer rows, no
    upserts file, a version committed before row counts were recorded) and every live item is looked up."""
    live = live_version(config)
    return (
        live is not None
        and known is not None
        and merged.upserts_uri is not None
        and merged.base_run_id == live.run_id
        and live.ids_uri == table_uri
        and live.ids_rows is not None
        and len(known) >= live.ids_rows
    )


def _without(ids: pa.ChunkedArray | pa.Array, known: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """``ids`` that are not in ``known``, hashing the smaller side: a thousand ids against a million known ones
    hashes the thousand and probes the million (tens of milliseconds), rather than building a set of a million
    strings (most of a second in a fresh process)."""
    if len(ids) * 2 >= len(known):
        return ids.filter(pc.invert(pc.is_in(ids, value_set=known)))
    held = known.filter(pc.is_in(known, value_set=ids.unique()))
    return ids.filter(pc.invert(pc.is_in(ids, value_set=held)))


def _upserted_rows(merged: Merged, item_ids: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The catalogue rows of ``item_ids``, in item_id order: from the run's upserts when they hold them all (a
    small file), else from its whole catalogue version."""
    wanted = item_ids.combine_chunks() if isinstance(item_ids, pa.ChunkedArray) else item_ids
    if merged.upserts_uri:
        upserts = read_catalog_table(merged.upserts_uri)
        found = upserts.filter(pc.is_in(upserts.column("item_id"), value_set=wanted))
        if found.num_rows == len(wanted):
            return found
    return read_catalog_table(merged.catalog_uri, item_ids=wanted.to_pylist())


def _live_catalogue(config: PipelineConfig, catalog_uri: str) -> tuple[pa.ChunkedArray, Labels | None]:
    """The live items' ids and, with a label configured, each one's label: two columns, not the items. A label
    column of the catalogue stays Arrow; a label among the attributes is read out of each row's JSON."""
    label = config.label
    if label is None:
        return read_catalog_table(catalog_uri, columns=["item_id"], ordered=False).column("item_id"), None
    column = label if label in CATALOG_SCHEMA.names else "attributes"
    table = read_catalog_table(catalog_uri, columns=["item_id", column], ordered=False)
    if column != "attributes":
        return table.column("item_id"), table.column(column)
    # a label kept among the attributes, such as ``class``
    values = [json.loads(text).get(label) if text else None for text in table.column(column).to_pylist()]
    return table.column("item_id"), values


def _quality(
    code_matrix: np.ndarray, space: IdSpace, rows: pa.ChunkedArray, labels: Labels | None, label: str | None
) -> IdQuality:
    """The quality metrics of the live items' IDs; ``rows``: each live item's row of ``code_matrix`` (every row's
    codes, in table order; null: none)."""
    from lmindexer.metrics import evaluate_codes

    present = pc.is_valid(rows).to_numpy(zero_copy_only=False)
    codes = code_matrix[rows.drop_null().to_numpy(zero_copy_only=False)].astype(np.int64)
    if isinstance(labels, pa.ChunkedArray | pa.Array):
        present_labels: Labels | None = labels.filter(pa.array(present))
    else:
        present_labels = (
            [value for value, keep in zip(labels, present.tolist(), strict=True) if keep] if labels else None
        )
    report = evaluate_codes(codes, space.codebook_sizes, present_labels, label_name=label)
    return IdQuality(
        items=report.items,
        level1_ami=report.agreement[0]["ami"] if report.agreement else None,
        ami=[row["ami"] for row in report.agreement],
        collision_rate=report.collisions["collision_rate"],
        largest_bucket=report.collisions["largest_bucket"],
        utilisation=[row["utilisation"] for row in report.levels],
    )


def _gate_failures(
    config: PipelineConfig, decision: Decision, metrics: IdQuality, live: LiveVersion | None
) -> list[str]:
    """The quality gates a new table fails: utilisation and label agreement after a retrain, collisions always."""
    gates = config.gates
    failures = []
    if decision.mode == "retrain":
        low = [u for u in metrics.utilisation if u < gates.min_utilisation]
        if low:
            failures.append(f"codebook utilisation {min(low):.1%} is below {gates.min_utilisation:.1%}")
        previous_ami = live.metrics.level1_ami if live is not None and live.metrics is not None else None
        if previous_ami and metrics.level1_ami is not None:
            floor = gates.min_level1_ami_ratio * previous_ami
            if metrics.level1_ami < floor:
                failures.append(
                    f"level-1 AMI {metrics.level1_ami:.4f} is below {floor:.4f} "
                    f"({gates.min_level1_ami_ratio:.0%} of the live version's {previous_ami:.4f})"
                )
    if metrics.collision_rate > gates.max_collision_rate:
        failures.append(f"collision rate {metrics.collision_rate:.1%} exceeds {gates.max_collision_rate:.1%}")
    return failures


def _refusals_allowed(config: PipelineConfig, documents: int) -> int:
    """How many documents the engine may refuse in one publish: the drops' invalid-row threshold, applied to the
    documents sent."""
    return math.floor(config.max_invalid_share * documents)


def _quarantine_refused(config: PipelineConfig, run_id: str, errors: Sequence[Any]) -> str | None:
    """Write the documents the engine refused to ``quarantine/<run>/publish/rejected.jsonl``, with its reason."""
    if not errors:
        return None
    uri = config.uri(config.quarantine_prefix, run_id, "publish", "rejected.jsonl")
    lines = []
    for error in errors:
        field = _ENGINE_FIELD.search(error.reason)
        record = {
            "source": "search engine" if error.status is not None else "publisher",
            "item_id": error.item_id,
            "field": field.group(1) if field else "(document)",
            "rule": ENGINE_REJECTED,
            "message": f"{error.error_type}: {error.reason}",
            "operation": error.operation,
            "status": error.status,
        }
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    write_bytes(("\n".join(lines) + "\n").encode(), uri)
    return uri


def _account(value: dict[str, Any]) -> dict[str, Any]:
    """The publisher's account as recorded: its errors (top level, or of its bulk run) kept up to 50."""
    trimmed = dict(value)
    for holder in (trimmed, trimmed.get("bulk")):
        if isinstance(holder, dict) and "errors" in holder:
            holder["errors"] = list(holder["errors"])[:50]
    return trimmed


def mark_processed(config: PipelineConfig, run_id: str, validated: Sequence[ValidatedDrop]) -> list[str]:
    """Record the drops this run validated (key + ETag, with their counts): accepted ones as processed, rejected
    ones as rejected with the reason, so neither is picked up again. Only drops named in ``validated`` are
    recorded, never a drop that landed after the run's discovery."""

    state = processing_state(config)
    recorded = []
    for entry in validated:
        status = "processed" if entry.accepted else "rejected"
        reason = None if entry.accepted else entry.reason
        marked = state.mark_processed(entry.drop, run_id, summary=entry.counts(), status=status, reason=reason)
        recorded += [d.key for d in marked]
    return recorded


__all__ = [
    "DocumentsRefused",
    "DropsRejected",
    "QualityGateFailed",
    "StaleRun",
    "TrainingFailed",
    "assign_shard",
    "check",
    "commit",
    "confirm_drops",
    "decide",
    "discover",
    "ids_uri",
    "live_version",
    "mark_processed",
    "merge",
    "plan_shards",
    "publish",
    "read_catalog_rows",
    "reduce_ids",
    "swap_alias",
    "train",
    "train_command",
    "validate_drops",
]
