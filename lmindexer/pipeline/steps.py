"""The reindex pipeline as plain functions, one per step; the Airflow DAG only wires them together.

discover -> validate -> merge -> decide -> (train) -> plan shards -> assign shard (mapped) -> reduce -> check
-> publish -> commit. Every step takes and returns small JSON-able dicts (data lives in the store, under the run's
own keys), stores its result under ``state/runs/<run>/``, and returns that stored result when it is run again, so a
retried task or a rerun of the whole run repeats no work. Nothing becomes current before ``commit``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lmindexer.cache import cache_root
from lmindexer.catalog.items import Item
from lmindexer.catalog.store import apply_drops, read_catalog, write_catalog
from lmindexer.errors import UserError
from lmindexer.idtable import Candidate, IdSpace, IdTable, id_stability
from lmindexer.indexers import load_snapshot
from lmindexer.indexers.base import read_snapshot_document
from lmindexer.metrics import evaluate_codes
from lmindexer.pipeline.config import Mode, PipelineConfig, safe_run_id
from lmindexer.pipeline.records import current, remembered, set_current
from lmindexer.storage.parquet import read_parquet, write_parquet
from lmindexer.storage.s3 import exists, local_copy, upload_file
from lmindexer.text import text_hash

log = logging.getLogger(__name__)

_CODES_SCHEMA = pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("text_hash", pa.string())])


class QualityGateFailed(UserError):
    """A new ID table failed a check; nothing was published."""


class TrainingFailed(UserError):
    """The training subprocess did not produce a snapshot."""


# -- helpers ------------------------------------------------------------------------------------------------------


def _copy_tree_to(source: Path, destination: str) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            upload_file(path, f"{destination.rstrip('/')}/{path.relative_to(source).as_posix()}")


# -- steps --------------------------------------------------------------------------------------------------------


def merge(config: PipelineConfig, run_id: str, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply the validated drops (in order) to the current catalogue and write the run's catalogue version."""

    def compute() -> dict[str, Any]:
        live = current(config)
        previous = read_catalog(live["catalog_uri"]) if live else {}
        drops = []
        for entry in staged:
            drops.append(list(read_catalog_rows(entry["staged_uri"])))
        merged, delta = apply_drops(previous, drops)
        catalog_uri = config.uri(config.catalog_prefix, run_id, "items.parquet")
        write_catalog(merged.values(), catalog_uri)
        delta_uri = config.uri(config.staged_prefix, run_id, "delta.parquet")
        kinds = (["new"] * len(delta.new)) + (["changed"] * len(delta.changed)) + (["deleted"] * len(delta.deleted))
        write_parquet(pa.table({"item_id": delta.new + delta.changed + delta.deleted, "change": kinds}), delta_uri)
        return {
            "catalog_uri": catalog_uri,
            "delta_uri": delta_uri,
            "items": len(merged),
            "previous_items": len(previous),
            **delta.counts(),
        }

    return remembered(config, run_id, "merge", compute)


def read_catalog_rows(location: str) -> list[Item]:
    """Rows of a staged drop, tombstones included, in file order."""
    from lmindexer.catalog.readers import CatalogReader

    return [item for batch in CatalogReader(location, strict=True) for item in batch]


def decide(config: PipelineConfig, run_id: str, merged: Mapping[str, Any], mode: Mode = "auto") -> dict[str, Any]:
    """Apply the current snapshot, or retrain: forced, no snapshot yet, or too much added since the last retrain."""

    def compute() -> dict[str, Any]:
        live = current(config)
        if mode == "retrain":
            return {"mode": "retrain", "reason": "retrain requested"}
        if live is None:
            if mode == "apply":
                raise UserError("mode 'apply' needs a snapshot, and none has been published yet; use auto or retrain")
            return {"mode": "retrain", "reason": "no snapshot yet"}
        added = int(live.get("added_since_retrain", 0)) + int(merged["new"])
        base = max(int(live.get("items_at_retrain", 0)), 1)
        share = added / base
        if mode == "apply":
            return {"mode": "apply", "reason": "apply requested", "added_share": share}
        if share > config.retrain_added_share:
            return {
                "mode": "retrain",
                "reason": (
                    f"{added} items added since the last retrain ({share:.1%} > {config.retrain_added_share:.1%})"
                ),
                "added_share": share,
            }
        return {"mode": "apply", "reason": f"{share:.1%} added since the last retrain", "added_share": share}

    return remembered(config, run_id, "decide", compute)


def train_command(
    config: PipelineConfig, catalog: Path, out: Path, options_file: Path, checkpoint_dir: Path | None = None
) -> list[str]:
    """``accelerate launch`` of the fit entry point: the same command on a CPU box and a GPU worker."""
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(config.train_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        config.mixed_precision,
        "--dynamo_backend",
        "no",
    ]
    if config.train_processes > 1:
        launcher.append("--multi_gpu")
    return [
        *launcher, "-m", "lmindexer.cli", "fit",
        "--method", config.method, "--catalog", str(catalog), "--out", str(out), "--config", str(options_file),
        *(["--checkpoint-dir", str(checkpoint_dir)] if checkpoint_dir is not None else []),
        "--quiet",
    ]  # fmt: skip


def train(
    config: PipelineConfig, run_id: str, merged: Mapping[str, Any], decision: Mapping[str, Any]
) -> dict[str, Any]:
    """Fit a new snapshot on the run's catalogue in an ``accelerate launch`` subprocess (retrain only)."""

    def compute() -> dict[str, Any]:
        if decision["mode"] != "retrain":
            live = current(config)
            return {"trained": False, "snapshot_uri": live["snapshot_uri"], "version": live["snapshot_version"]}
        import yaml

        with tempfile.TemporaryDirectory(prefix="lmindexer-train-") as tmp:
            work = Path(tmp)
            with local_copy(merged["catalog_uri"], suffix=".parquet") as path:
                catalog = work / "catalog.parquet"
                shutil.copyfile(path, catalog)
            options = work / "options.yaml"
            options.write_text(yaml.safe_dump(dict(config.indexer)))
            out = work / "snapshot"
            # Outside the temporary directory, so that a retry of this task on the same worker resumes training.
            checkpoint = cache_root() / "training" / safe_run_id(run_id)
            command = train_command(config, catalog, out, options, checkpoint)
            log.info("training: %s", " ".join(command))
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode != 0 or not (out / "snapshot.json").is_file():
                tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
                raise TrainingFailed(f"training exited with code {completed.returncode}: {' | '.join(tail)}")
            version = read_snapshot_document(out)["version"]
            snapshot_uri = config.uri(config.models_prefix, version)
            _copy_tree_to(out, snapshot_uri)
        return {"trained": True, "snapshot_uri": snapshot_uri, "version": version}

    return remembered(config, run_id, "train", compute)


def ids_uri(config: PipelineConfig, version: str) -> str:
    return config.uri(config.ids_prefix, version, "ids.parquet")


def plan_shards(
    config: PipelineConfig, run_id: str, merged: Mapping[str, Any], snapshot: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Split the items that still need an ID in the snapshot's space into shards for mapped assignment."""

    def compute() -> dict[str, Any]:
        table_uri = ids_uri(config, snapshot["version"])
        known = set(IdTable.read(table_uri).item_ids) if exists(table_uri) else set()
        catalogue = read_catalog(merged["catalog_uri"])
        needed = sorted(item_id for item_id in catalogue if item_id not in known)
        # The items themselves, not just their ids: a shard then reads only the items to encode, so its cost
        # follows the new items rather than the size of the catalogue.
        todo_uri = config.uri(config.staged_prefix, run_id, "to_assign.parquet")
        write_catalog((catalogue[item_id] for item_id in needed), todo_uri)
        shards = [
            {"shard": n, "start": start, "end": min(start + config.shard_size, len(needed)), "todo_uri": todo_uri}
            for n, start in enumerate(range(0, len(needed), config.shard_size))
        ]
        return {"shards": shards, "items": len(needed)}

    return remembered(config, run_id, "plan", compute)["shards"]


def assign_shard(
    config: PipelineConfig, run_id: str, snapshot: Mapping[str, Any], shard: Mapping[str, Any]
) -> dict[str, Any]:
    """Learned codes for one shard of items (no suffixes yet: those are allocated in one place, by ``reduce_ids``)."""

    def compute() -> dict[str, Any]:
        items = list(read_catalog(shard["todo_uri"]).values())[shard["start"] : shard["end"]]
        wanted = [item.item_id for item in items]
        indexer = load_snapshot(snapshot["snapshot_uri"])
        texts = indexer.texts(items)
        codes = indexer.codes_for_texts(texts)
        codes_uri = config.uri(config.staged_prefix, run_id, "codes", f"shard-{shard['shard']:05d}.parquet")
        table = pa.Table.from_pydict(
            {
                "item_id": wanted,
                "codes": [row.tolist() for row in codes.astype(np.int32)],
                "text_hash": [text_hash(t) for t in texts],
            },
            schema=_CODES_SCHEMA,
        )
        write_parquet(table, codes_uri)
        return {"shard": shard["shard"], "codes_uri": codes_uri, "items": len(wanted)}

    return remembered(config, run_id, f"assign-{shard['shard']:05d}", compute)


def reduce_ids(
    config: PipelineConfig, run_id: str, snapshot: Mapping[str, Any], shards: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Give every newly coded item the next free suffix of its code tuple, in one place, and write the ID table.

    The table only grows: existing rows are checked to be unchanged before it is written, so an ID once handed out
    is never lost or given to another item, whatever happens to the rest of the run.
    """

    def compute() -> dict[str, Any]:
        table_uri = ids_uri(config, snapshot["version"])
        indexer = load_snapshot(snapshot["snapshot_uri"])
        space = IdSpace(indexer.version, indexer.method, indexer.codebook_sizes)
        before = IdTable.read(table_uri) if exists(table_uri) else IdTable.empty(space)
        candidates = []
        for shard in sorted(shards, key=lambda s: s["shard"]):
            rows = read_parquet(shard["codes_uri"]).to_pylist()
            candidates.extend(Candidate(r["item_id"], tuple(r["codes"]), r["text_hash"]) for r in rows)
        after, report = before.allocate(candidates, assigned_at=dt.datetime.now(dt.UTC))
        kept = after.table.slice(0, len(before)).replace_schema_metadata(None)
        if not kept.equals(before.table.replace_schema_metadata(None)):
            raise QualityGateFailed("allocation changed existing ID rows; refusing to write the ID table")
        if after is not before:
            after.write(table_uri)
        return {
            "ids_uri": table_uri,
            "rows_before": len(before),
            "rows_after": len(after),
            "newly_assigned": report.newly_assigned,
        }

    return remembered(config, run_id, "reduce", compute)


def _quality(table: IdTable, catalogue: Mapping[str, Item], label: str | None) -> dict[str, Any]:
    live_ids = [item_id for item_id in table.item_ids if item_id in catalogue]
    codes_by_id = dict(zip(table.item_ids, table.codes_list(), strict=True))
    codes = np.asarray([codes_by_id[i] for i in live_ids], dtype=np.int64).reshape(len(live_ids), table.space.levels)
    labels = [catalogue[i].field_value(label) for i in live_ids] if label else None
    report = evaluate_codes(codes, table.space.codebook_sizes, labels, label_name=label)
    return {
        "items": report.items,
        "level1_ami": report.agreement[0]["ami"] if report.agreement else None,
        "ami": [row["ami"] for row in report.agreement],
        "collision_rate": report.collisions["collision_rate"],
        "largest_bucket": report.collisions["largest_bucket"],
        "utilisation": [row["utilisation"] for row in report.levels],
    }


def check(
    config: PipelineConfig,
    run_id: str,
    merged: Mapping[str, Any],
    decision: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    reduced: Mapping[str, Any],
) -> dict[str, Any]:
    """ID checks (one unique ID per live item, codes in range, nothing lost) and quality gates against the
    previous version. Raises :class:`QualityGateFailed` with every failed check, before anything is published."""

    def compute() -> dict[str, Any]:
        from lmindexer.validation import validate_ids

        table = IdTable.read(reduced["ids_uri"])
        catalogue = read_catalog(merged["catalog_uri"])
        output = validate_ids(table, sorted(catalogue))
        failures = [] if output.success else [f"ID table checks: {output.describe()}"]
        metrics = _quality(table, catalogue, config.label)
        live = current(config)
        stability = None
        if live is not None and live["ids_uri"] == reduced["ids_uri"]:
            # Same ID space, same table: reduce_ids verified, row by row, that every earlier ID is unchanged.
            kept = int(reduced["rows_before"])
            stability = {"common_items": kept, "unchanged": kept, "stability": 1.0 if kept else None,
                         "same_id_space": True}  # fmt: skip
        elif live is not None:
            stability = id_stability(IdTable.read(live["ids_uri"]), table)
        gates = config.gates
        if decision["mode"] == "retrain":
            low = [u for u in metrics["utilisation"] if u < gates.min_utilisation]
            if low:
                failures.append(f"codebook utilisation {min(low):.1%} is below {gates.min_utilisation:.1%}")
            previous_ami = (live or {}).get("metrics", {}).get("level1_ami")
            if previous_ami and metrics["level1_ami"] is not None:
                floor = gates.min_level1_ami_ratio * previous_ami
                if metrics["level1_ami"] < floor:
                    failures.append(
                        f"level-1 AMI {metrics['level1_ami']:.4f} is below {floor:.4f} "
                        f"({gates.min_level1_ami_ratio:.0%} of the live version's {previous_ami:.4f})"
                    )
        if metrics["collision_rate"] > gates.max_collision_rate:
            failures.append(f"collision rate {metrics['collision_rate']:.1%} exceeds {gates.max_collision_rate:.1%}")
        if failures:
            raise QualityGateFailed("; ".join(failures))
        return {"passed": True, "metrics": metrics, "stability": stability}

    return remembered(config, run_id, "check", compute)


def commit(
    config: PipelineConfig,
    run_id: str,
    merged: Mapping[str, Any],
    decision: Mapping[str, Any],
    snapshot: Mapping[str, Any],
    reduced: Mapping[str, Any],
    checked: Mapping[str, Any],
    published: Mapping[str, Any],
) -> dict[str, Any]:
    """Make the run's versions current. The last step: before it, the previous version stays in charge."""
    live = current(config) or {}
    retrained = decision["mode"] == "retrain"
    pointer = {
        "run_id": run_id,
        "updated_at": dt.datetime.now(dt.UTC).isoformat(),
        "snapshot_uri": snapshot["snapshot_uri"],
        "snapshot_version": snapshot["version"],
        "ids_uri": reduced["ids_uri"],
        "catalog_uri": merged["catalog_uri"],
        "items": merged["items"],
        "items_at_retrain": merged["items"] if retrained else live.get("items_at_retrain", merged["items"]),
        "added_since_retrain": 0 if retrained else int(live.get("added_since_retrain", 0)) + int(merged["new"]),
        "metrics": checked["metrics"],
        "index": published.get("index"),
    }
    if live.get("run_id") != run_id:
        set_current(config, pointer)
    return pointer


def publish(
    config: PipelineConfig,
    search: Any,
    run_id: str,
    merged: Mapping[str, Any],
    decision: Mapping[str, Any],
    reduced: Mapping[str, Any],
) -> dict[str, Any]:
    """Publish to the search alias: a new versioned index and one alias swap after a retrain (or when the alias
    does not exist yet); otherwise upserts of new and changed items and deletes of removed ones through the alias."""
    from lmindexer.search import SearchBackend, iter_documents

    def compute() -> dict[str, Any]:
        table = IdTable.read(reduced["ids_uri"])
        catalogue = read_catalog(merged["catalog_uri"])
        delta = read_parquet(merged["delta_uri"]).to_pylist()
        with SearchBackend(search) as backend:
            full = decision["mode"] == "retrain" or backend.live_index() is None
            if full:
                result = backend.publish_full(
                    iter_documents(catalogue.values(), table), table.space.snapshot_version, run_id,
                    total=len(catalogue),
                )  # fmt: skip
                return {"mode": "full", "index": result.index, **_jsonable(result.to_dict())}
            upsert_ids = [row["item_id"] for row in delta if row["change"] in ("new", "changed")]
            deletes = [row["item_id"] for row in delta if row["change"] == "deleted"]
            bulk = backend.publish_incremental(iter_documents((catalogue[i] for i in upsert_ids), table), deletes)
            bulk.check()
            return {"mode": "incremental", "index": backend.live_index(), **_jsonable(bulk.to_dict())}

    return remembered(config, run_id, "publish", compute)


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != "errors"} | {"errors": list(value.get("errors", []))[:50]}


def discover(config: PipelineConfig) -> list[dict[str, Any]]:
    """Catalogue drops under the incoming prefix that have not been processed (by key and ETag), oldest first."""
    from lmindexer.storage.drops import list_drops
    from lmindexer.storage.state import ProcessingState

    drops = list_drops(config.base_uri, config.incoming_prefix)
    state = ProcessingState(config.base_uri, prefix=config.state_prefix)
    return [drop.to_dict() for drop in state.unprocessed(drops)]


def validate_drops(config: PipelineConfig, run_id: str, drops: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate each drop: bad rows to ``quarantine/<run>/<drop>/`` with their rule, good rows to ``staged/``.
    Fails the run when a drop's invalid share exceeds the threshold (its evidence is written first)."""
    from lmindexer.storage.drops import Drop
    from lmindexer.validation import validate_drop

    def compute() -> dict[str, Any]:
        results = []
        for number, data in enumerate(drops):
            drop = Drop.from_dict(dict(data))
            outcome = validate_drop(
                drop.uri,
                f"{run_id}/{number:03d}-{drop.slug}",
                base_uri=config.base_uri,
                threshold=config.max_invalid_share,
                staged_prefix=config.staged_prefix,
                quarantine_prefix=config.quarantine_prefix,
            )
            results.append({"drop": drop.to_dict(), **outcome.to_dict()})
        return {"drops": results}

    return remembered(config, run_id, "validate", compute)["drops"]


def mark_processed(
    config: PipelineConfig, run_id: str, drops: Sequence[Mapping[str, Any]], validated: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Record the run's drops as processed (key + ETag) with their counts, so the same drop is never redone."""
    from lmindexer.storage.drops import Drop
    from lmindexer.storage.state import ProcessingState

    state = ProcessingState(config.base_uri, prefix=config.state_prefix)
    counts = {
        v["drop"]["key"]: {k: v[k] for k in ("rows_in", "staged", "quarantined", "tombstones")} for v in validated
    }
    recorded = []
    for data in drops:
        drop = Drop.from_dict(dict(data))
        recorded += [d.key for d in state.mark_processed(drop, run_id, summary=counts.get(drop.key, {}))]
    return recorded


__all__ = [
    "QualityGateFailed",
    "TrainingFailed",
    "assign_shard",
    "check",
    "commit",
    "decide",
    "discover",
    "ids_uri",
    "mark_processed",
    "merge",
    "plan_shards",
    "publish",
    "read_catalog_rows",
    "reduce_ids",
    "train",
    "train_command",
    "validate_drops",
]
