"""The platform's units of work as plain functions: fit a snapshot, assign IDs, evaluate an ID table.

The CLI, the benchmarks and the orchestration layer all call these; none of them holds logic of its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lmindexer.assign import code_items
from lmindexer.catalog import CatalogReader, ReadSummary, RowError
from lmindexer.errors import ConfigError, IdTableError, UserError
from lmindexer.idtable import (
    AllocationReport,
    Candidate,
    IdSpace,
    IdTable,
    id_stability,
    read_id_table,
    store_allocation,
)
from lmindexer.indexers import DEFAULT_METHOD, Indexer, create_indexer, load_snapshot
from lmindexer.metrics import QualityReport, evaluate_codes
from lmindexer.storage.s3 import exists
from lmindexer.text import text_hash

RejectHandler = Callable[[Sequence[RowError]], None]


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Indexer options from a YAML file (a mapping; ``method`` may be one of its keys)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of options, not {type(data).__name__}")
    return dict(data)


@dataclass
class FitResult:
    snapshot: Path
    version: str | None  # None on the non-main processes of a multi-process fit, which write nothing
    method: str
    read: ReadSummary
    manifest: dict[str, Any]


def fit_snapshot(
    catalog: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    config: Mapping[str, Any] | None = None,
    strict: bool = False,
    progress: bool = True,
    on_reject: RejectHandler | None = None,
    warm_from: str | os.PathLike[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    rejects_location: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Fit an indexer on a catalogue's valid, live items and save it as a snapshot.

    ``warm_from`` starts from an existing snapshot of the same method (a warm retrain on a grown catalogue).
    ``checkpoint_dir`` keeps resumable training state there (methods that train in steps); a rerun of the same fit
    resumes from it, and it is removed once the snapshot is written. ``rejects_location`` names where ``on_reject``
    writes the rejected rows: a fit refused for its data (too few items) after rows were rejected points there.
    """
    options = dict(config or {})
    chosen = method or options.pop("method", None)
    options.pop("method", None)
    previous = load_snapshot(warm_from) if warm_from is not None else None
    if previous is not None and chosen is None:
        chosen = previous.method
    if previous is not None and chosen != previous.method:
        raise ConfigError(f"cannot warm-start a {chosen} indexer from a {previous.method} snapshot ({warm_from})")
    indexer = create_indexer(chosen or DEFAULT_METHOD, options)
    if previous is not None:
        indexer.warm_start(previous)
    indexer.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    reader = CatalogReader(catalog, strict=strict, on_reject=on_reject)
    items = [item for batch in reader for item in batch if not item.deleted]
    try:
        indexer.fit(items, progress=progress)
    except ConfigError as exc:
        if not reader.summary.rejected:
            raise
        raise ConfigError(f"{exc}; {_rejections(reader.summary, catalog, rejects_location)}") from exc
    if not indexer.is_main_process:
        return FitResult(Path(out), None, indexer.method, reader.summary, indexer.manifest)
    version = indexer.save(out, extra_manifest={"catalog": str(catalog), "catalog_read": reader.summary.to_dict()})
    if indexer.checkpoint_dir is not None:
        shutil.rmtree(indexer.checkpoint_dir, ignore_errors=True)
    return FitResult(Path(out), version, indexer.method, reader.summary, indexer.manifest)


def _rejections(summary: ReadSummary, catalog: str | os.PathLike[str], where: str | os.PathLike[str] | None) -> str:
    """How many rows of a catalogue were rejected, by rule, with an example, and where to see every one and why."""
    rules = ", ".join(f"{rule}: {count}" for rule, count in summary.rejections_by_rule.most_common())
    example = f"; e.g. {summary.examples[0].describe()}" if summary.examples else ""
    if where is not None:
        see = f"every rejected row and its reason is in {where}"
    else:
        see = f"see every rejected row and its reason with `lmindexer validate --catalog {catalog} --rejects FILE`"
    return f"{summary.rejected} of {summary.rows_in} rows of {catalog} were rejected ({rules}{example}); {see}"


@dataclass
class AssignResult:
    ids: str
    space: IdSpace
    rows_before: int
    rows_after: int
    read: ReadSummary
    allocation: AllocationReport
    tombstones: int
    written: bool
    write_attempts: int = 1  # more than one: another writer changed the table meanwhile, and the IDs were re-allocated

    def to_dict(self) -> dict[str, Any]:
        return {
            "ids": self.ids,
            "snapshot_version": self.space.snapshot_version,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "catalog": self.read.to_dict(),
            "allocation": self.allocation.to_dict(),
            "tombstones": self.tombstones,
            "written": self.written,
            "write_attempts": self.write_attempts,
        }


def open_id_table(ids: str | os.PathLike[str], space: IdSpace) -> IdTable:
    """The ID table at ``ids``, or a new empty one; refuses a table from another ID space."""
    return read_id_table(ids, space).table


def assign_ids(
    snapshot: str | os.PathLike[str] | Indexer,
    catalog: str | os.PathLike[str],
    ids: str | os.PathLike[str],
    *,
    strict: bool = False,
    progress: bool = True,
    batch_size: int = 1024,
    on_reject: RejectHandler | None = None,
) -> AssignResult:
    """Give every live catalogue item without an ID one, incrementally.

    Items already in the table keep their row byte for byte (even if their text changed: that is counted, and a
    retrain is how IDs follow new text). Only new items are encoded, so the cost follows the new items, not the
    catalogue. Tombstones get no new ID; an existing ID stays reserved.

    The table is written compare-and-swap (:func:`~lmindexer.idtable.store_allocation`): if another writer
    changed it while this call was encoding, the allocation is redone on top of the other writer's rows, so both
    writers' IDs survive and no reported ID ever changes owner.
    """
    indexer = snapshot if isinstance(snapshot, Indexer) else load_snapshot(snapshot)
    if indexer.version is None:
        raise UserError("the indexer has no snapshot version; save it before assigning IDs")
    space = indexer.id_space
    table = open_id_table(ids, space)
    reader = CatalogReader(catalog, strict=strict, on_reject=on_reject, batch_size=batch_size)
    candidates: list[Candidate] = []
    tombstones = 0
    from tqdm.auto import tqdm

    bar = tqdm(desc="assigning", unit="item", disable=not progress, leave=False)
    for batch in reader:
        live = []
        for item in batch:
            if item.deleted:
                tombstones += 1
            else:
                live.append(item)
        texts = indexer.texts(live)
        known = table.codes_of(item.item_id for item in live)
        # Items with an ID keep their codes (the allocation counts a changed text); only new items are coded.
        unknown = [i for i, item in enumerate(live) if item.item_id not in known]
        coded = {c.item_id: c for c in code_items(indexer, [live[i] for i in unknown], [texts[i] for i in unknown])}
        for item, text in zip(live, texts, strict=True):
            candidates.append(coded.get(item.item_id) or Candidate(item.item_id, known[item.item_id], text_hash(text)))
        bar.update(len(batch))
    bar.close()
    stored = store_allocation(ids, space, candidates)
    return AssignResult(
        str(ids),
        space,
        stored.rows_before,
        stored.rows_after,
        reader.summary,
        stored.report,
        tombstones,
        stored.written,
        stored.attempts,
    )


def catalogue_labels(catalog: str | os.PathLike[str], label: str) -> dict[str, Any]:
    """item_id -> the item's ``label`` value (a contract field or an attribute), for items that have one."""
    labels: dict[str, Any] = {}
    for batch in CatalogReader(catalog):
        for item in batch:
            value = item.field_value(label)
            if value is not None and value != "":
                labels[item.item_id] = value
    return labels


@dataclass
class Evaluation:
    report: QualityReport
    codes: np.ndarray
    labels: list[Any] | None


def evaluate_ids(
    ids: str | os.PathLike[str],
    *,
    catalog: str | os.PathLike[str] | None = None,
    label: str | None = None,
    previous: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """Quality metrics of an ID table, optionally against a catalogue label and a previous table."""
    if label and not catalog:
        raise ConfigError("a label needs the catalogue that holds it (--catalog)")
    if not exists(ids):
        raise IdTableError(f"ID table not found: {ids}")
    table = IdTable.read(ids)
    codes = np.asarray(table.codes_list(), dtype=np.int64).reshape(len(table), table.space.levels)
    labels = None
    if label:
        by_item = catalogue_labels(catalog, label)  # type: ignore[arg-type]
        if not by_item:
            raise UserError(f"no item in {catalog} has a value for {label!r}")
        labels = [by_item.get(item_id) for item_id in table.item_ids]
    report = evaluate_codes(codes, table.space.codebook_sizes, labels, label_name=label)
    report.context = {
        "ids": str(ids),
        "snapshot_version": table.space.snapshot_version,
        "method": table.space.method,
        "codebook_sizes": list(table.space.codebook_sizes),
    }
    if previous:
        if not exists(previous):
            raise IdTableError(f"previous ID table not found: {previous}")
        report.stability = id_stability(IdTable.read(previous), table)
    return Evaluation(report, codes, labels)
