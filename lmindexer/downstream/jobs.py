"""Keeping a generative retriever in step with the semantic IDs the reindex pipeline publishes.

After every commit of the pipeline, :func:`plan_refresh` compares its current pointer with the live retriever:

- a new ID space (a new snapshot), or no retriever yet: **retrain** -> :func:`train_retriever` ->
  :func:`evaluate_retriever` -> :func:`gate_retriever` -> :func:`promote_retriever`;
- the same ID space with other live items (new items, deletions): **sync** -> :func:`sync_retriever`, which brings
  the live model's trie in line with the IDs (no training: the model already writes IDs of this space); with a
  dense index configured (``dense_index``), also a new catalogue version whose items and IDs are unchanged (texts
  changed), or a live retriever without a dense index yet, since the dense index follows the catalogue's texts;
- nothing that changes what the retriever may return: **none**.

Layout under ``<base_uri>/<prefix>`` (``retrievers/`` by default)::

    current.json              the live retriever: its model, the pipeline run and ID space it serves, its metrics
    runs/<run>/model/         the model a run trained or synced
    runs/<run>/dense/         the dense index of the same catalogue version, when ``dense_index`` is set
    runs/<run>/<step>.json    what each step of the run did: plan, train, evaluate, gate, promote, sync

Every step is idempotent per run id: a step whose record exists returns it (a retried task never retrains), and
``current.json`` is written last, only after the gates passed, so a failure anywhere leaves the live retriever in
charge. The retriever serves the catalogue's live items only: the pipeline keeps the IDs of deleted items reserved
in its ID table, so the table is restricted to the pointer's catalogue before it becomes a trie.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmindexer.catalog.store import catalog_file, is_catalog_version, read_catalog_table
from lmindexer.downstream.generative import GenerativeConfig, GenerativeModel, parse_generative_config
from lmindexer.downstream.results import (
    Action,
    EvaluatedRetriever,
    GateOutcome,
    LiveComparison,
    LiveRetriever,
    PipelineRef,
    Refreshed,
    RefreshPlan,
    SyncedRetriever,
    TrainedRetriever,
)
from lmindexer.errors import ConfigError, RetrieverError, RetrieverGateFailed, UserError
from lmindexer.idtable import IdTable, id_table_file
from lmindexer.layout import CURRENT
from lmindexer.options import parse_config
from lmindexer.pipeline.config import PipelineConfig, normalise_prefix, safe_run_id
from lmindexer.pipeline.records import current as pipeline_current
from lmindexer.pipeline.records import read_json, remembered_at, write_json
from lmindexer.storage.s3 import is_s3_uri, local_copy, open_binary, upload_tree

MODES = ("auto", "retrain")
_POINTER_FIELDS = ("run_id", "snapshot_uri", "snapshot_version", "ids_uri", "catalog_uri")


class RetrieverConfig(BaseModel):
    """What the retriever learns from, where it lives, and what a new model must reach before it goes live."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_queries: str = Field(description="JSONL of {query, item_id} rows to train on (local path or s3://)")
    eval_queries: str = Field(description="JSONL of {query, item_id} rows the gates measure (local path or s3://)")
    options: dict[str, Any] = Field(default_factory=dict, description="GenerativeModel options (a retrieval task)")
    prefix: str = Field("retrievers/", description="where models, run records and current.json live, under base_uri")
    min_recall_at_10: float = Field(0.0, ge=0, description="floor on the new model's recall@10 on eval_queries")
    max_ndcg_drop: float = Field(
        0.02,
        ge=0,
        description="most the new model's NDCG@10 may fall below the live one's, same eval set and ID space",
    )
    dense_index: dict[str, Any] | None = Field(
        None,
        description="dense index options (encoder, max_length, text_template, batch_size; {} for the defaults): "
        "every trained or synced model gets a dense index of its catalogue version beside it, for serve --dense "
        "and mode=hybrid; None: no dense index",
    )

    @field_validator("train_queries", "eval_queries")
    @classmethod
    def _location(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a queries location cannot be empty")
        return value.strip()

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            options = parse_generative_config(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if options.task != "retrieval":
            raise ValueError("the refresh trains retrievers: task must be 'retrieval'")
        return value

    @field_validator("dense_index")
    @classmethod
    def _dense_index(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from lmindexer.downstream.dense import parse_dense_config

            try:
                parse_dense_config(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    _prefix = field_validator("prefix")(normalise_prefix)


def parse_retriever_config(values: Mapping[str, Any] | RetrieverConfig | None) -> RetrieverConfig:
    """Validate a mapping into a :class:`RetrieverConfig`; one :class:`ConfigError` names every problem."""
    return parse_config(RetrieverConfig, values, what="retriever config")


# -- reading and writing ------------------------------------------------------------------------------------------


def read_queries(location: str | Path) -> list[tuple[str, str]]:
    """(query, item_id) pairs from a JSONL file (local or s3://) of ``{"query": ..., "item_id": ...}`` objects."""
    pairs: list[tuple[str, str]] = []
    for number, row in json_lines(location, RetrieverError):
        query = row.get("query") if isinstance(row, dict) else None
        item_id = row.get("item_id") if isinstance(row, dict) else None
        if not isinstance(query, str) or not query.strip() or not isinstance(item_id, str) or not item_id:
            raise RetrieverError(f"{location} line {number}: needs a non-empty string 'query' and 'item_id'")
        pairs.append((query, item_id))
    if not pairs:
        raise RetrieverError(f"{location} holds no queries")
    return pairs


def json_lines(location: str | Path, error: type[UserError]) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file, local or s3://; a line that is not JSON raises
    ``error`` naming it."""
    with open_binary(str(location)) as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{location} line {number}: not a JSON object ({exc.msg})") from None


def _catalogue_ids(location: str) -> set[str]:
    if is_catalog_version(location) or str(location).endswith(".parquet"):
        # A catalogue version the pipeline wrote (its rows validated when their drop came in): its item_id column
        # is all a plan needs, read as trusted Arrow, not every item's text through the validating reader.
        return set(read_catalog_table(location, columns=["item_id"]).column("item_id").to_pylist())
    from lmindexer.catalog.store import read_catalog

    return set(read_catalog(location))


def ids_fingerprint(table: IdTable) -> str:
    """A digest of the table's item -> ID map: equal digests mean the same items with the same IDs."""
    digest = hashlib.sha256()
    for item_id, sid in sorted(table.sid_map().items()):
        digest.update(f"{item_id}\t{sid}\n".encode())
    return digest.hexdigest()


def save_to(location: str, save: Callable[[Path], Path]) -> str:
    """``save(directory)`` to a local directory, or through a local staging directory to an ``s3://`` prefix."""
    if not is_s3_uri(location):
        save(Path(location))
        return location
    with tempfile.TemporaryDirectory(prefix="lmindexer-retriever-") as tmp:
        upload_tree(save(Path(tmp) / "artifact"), location)
    return location


def save_model(model: GenerativeModel, location: str) -> str:
    """Save to a local directory, or through a local staging directory to an ``s3://`` prefix."""
    return save_to(location, model.save)


def _build_dense_index(
    pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str, catalog_uri: str, *, progress: bool = False
) -> str | None:
    """The dense index of the catalogue version at ``catalog_uri``, saved under the run (None when the config asks
    for none). Texts embedded before come from the embedding cache, so a sync's rebuild embeds only new texts."""
    if retriever.dense_index is None:
        return None
    from lmindexer.catalog.store import read_catalog
    from lmindexer.downstream.dense import DenseIndex

    index = DenseIndex.build(read_catalog(catalog_uri).values(), retriever.dense_index, progress=progress)
    return save_to(_run_uri(pipeline, retriever, run_id, "dense"), index.save)


def _uri(pipeline: PipelineConfig, retriever: RetrieverConfig, *parts: str) -> str:
    return pipeline.uri(retriever.prefix, *parts)


def _run_uri(pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str, *parts: str) -> str:
    return _uri(pipeline, retriever, "runs", run_id, *parts)


def current_retriever(pipeline: PipelineConfig, retriever: RetrieverConfig) -> LiveRetriever | None:
    """The live retriever's record (``current.json``), or None when none has been promoted."""
    record = read_json(_uri(pipeline, retriever, CURRENT))
    return None if record is None else LiveRetriever.from_xcom(record)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# -- direct use: train and evaluate a model without the pipeline -------------------------------------------------


def fit_retriever(
    snapshot: str | Path,
    ids: str | Path,
    catalog: str | Path,
    queries: str | Path,
    options: Mapping[str, Any] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[GenerativeModel, dict[str, Any]]:
    """Train a retriever for the catalogue's items in the ID space of ``ids`` (made by ``snapshot``); resumable with
    ``checkpoint_dir``, and the same code on a CPU, a GPU or several processes under ``accelerate launch``.

    Queries about items without a live ID are skipped and counted; the items' own texts (as the snapshot renders
    them) are the indexing pairs. The vocabulary is sized on the whole table, deleted items included, so every
    suffix handed out so far fits; the trie holds the live items only.
    """
    config = parse_generative_config(options)  # before the slow loads: bad options fail at once
    pairs = read_queries(queries)
    start = model_for_catalogue(snapshot, ids, catalog, config, error=RetrieverError)
    known = [(query, item_id) for query, item_id in pairs if item_id in start.model.trie]
    if not known:
        raise RetrieverError(f"none of the {len(pairs)} queries in {queries} is about an item with a live ID")
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
    stats = start.model.fit_retrieval(known, start.texts, checkpoint_dir=checkpoint, progress=progress)
    summary = {
        **start.summary(),
        "train_queries": str(queries),
        "train_pairs": len(known),
        "train_pairs_skipped": len(pairs) - len(known),
        "training": stats,
    }
    return start.model, summary


@dataclasses.dataclass(frozen=True)
class CatalogueModel:
    """A new generative model for a catalogue's live items, before training: its trie holds the items with a live
    ID, and ``texts`` their texts as the snapshot renders them (what the model's prior starts from)."""

    model: GenerativeModel
    live: IdTable
    texts: dict[str, str]

    def summary(self) -> dict[str, Any]:
        """What a training summary says of the model's start: the ID space, the items and how it was initialised."""
        return {
            "snapshot_version": self.live.space.snapshot_version,
            "method": self.live.space.method,
            "initialised_from": self.model.initialised_from,
            "items": len(self.live),
            "ids_fingerprint": ids_fingerprint(self.live),
            "suffix_capacity": self.model.vocabulary.sizes[-1],
        }


def model_for_catalogue(
    snapshot: str | Path,
    ids: str | Path,
    catalog: str | Path,
    config: GenerativeConfig,
    *,
    error: type[UserError] = ConfigError,
) -> CatalogueModel:
    """A model of ``config`` for the catalogue's items in the ID space of ``ids`` (made by ``snapshot``). The
    vocabulary is sized on the whole table, deleted items included, so every suffix handed out so far fits; the trie
    holds the catalogue's items only. ``error`` is raised when no item of the catalogue has an ID."""
    from lmindexer.catalog.store import read_catalog
    from lmindexer.indexers import load_snapshot

    indexer = load_snapshot(snapshot)
    table = IdTable.read(ids)
    catalogue = read_catalog(catalog)
    live = table.restricted(set(catalogue))
    if not len(live):
        raise error(f"no item of the catalogue {catalog} has an ID in {ids}")
    model = GenerativeModel.create(table, indexer, config)
    model.sync(live)
    item_ids = live.item_ids
    texts = dict(zip(item_ids, indexer.texts([catalogue[i] for i in item_ids]), strict=True))
    return CatalogueModel(model, live, texts)


def train_model(
    snapshot: str | Path,
    ids: str | Path,
    catalog: str | Path,
    queries: str | Path,
    out: str | Path,
    options: Mapping[str, Any] | None = None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """:func:`fit_retriever`, then save the model to ``out`` (a directory or s3:// prefix) and remove the
    checkpoint; returns the summary. In a multi-process training only the first process saves and returns one
    (the others return None)."""
    model, summary = fit_retriever(
        snapshot, ids, catalog, queries, options, checkpoint_dir=checkpoint_dir, progress=progress
    )
    return save_trained(model, summary, out, checkpoint_dir)


def save_trained(
    model: GenerativeModel, summary: dict[str, Any], out: str | Path, checkpoint_dir: str | Path | None
) -> dict[str, Any] | None:
    """Save a trained model to ``out`` (a directory or s3:// prefix), then remove its checkpoint (a rerun trains
    anew); ``summary`` with the model's URI first. None in every process of a multi-process training but the first,
    which alone saves."""
    if not model.is_main_process:
        return None
    saved = {"model_uri": save_model(model, str(out)), **summary}
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return saved


def evaluate_model(model: GenerativeModel, pairs: Sequence[tuple[str, str]], *, progress: bool = False) -> dict:
    """Recall/NDCG/MRR on the pairs about items the model can return; the others are counted as skipped."""
    known = [(query, item_id) for query, item_id in pairs if item_id in model.trie]
    if not known:
        raise RetrieverError(f"none of the {len(pairs)} evaluation queries is about an item the model can return")
    return {**model.evaluate_retrieval(known, progress=progress), "skipped_queries": len(pairs) - len(known)}


def _embed_new_items(model: GenerativeModel, pointer: PipelineRef) -> int:
    """Embed, for the model's dense prior, the texts (as the snapshot renders them) of its items that have none yet:
    a synced item then ranks by its own text, not by its neighbours' centroid."""
    from lmindexer.catalog.store import read_catalog
    from lmindexer.indexers import load_snapshot

    prior = model.prior
    missing = [item_id for item_id, _ in model.trie if item_id not in prior] if prior is not None else []
    if not missing:
        return 0
    catalogue = read_catalog(pointer.catalog_uri)
    missing = [item_id for item_id in missing if item_id in catalogue]
    if not missing:
        return 0
    indexer = load_snapshot(pointer.snapshot_uri)
    return model.embed_items(dict(zip(missing, indexer.texts([catalogue[i] for i in missing]), strict=True)))


def _align(model: GenerativeModel, target: GenerativeModel) -> None:
    """Make ``model`` return exactly ``target``'s items under the same IDs (both write IDs of one space)."""
    wanted = {item_id: target.vocabulary.sid(tokens) for item_id, tokens in target.trie}
    for item_id, _ in list(model.trie):
        if item_id not in wanted:
            model.remove(item_id)
    for item_id, sid in wanted.items():
        model.insert(item_id, sid)


# -- the refresh ---------------------------------------------------------------------------------------------------


def plan_refresh(
    pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str | None = None, *, mode: str = "auto"
) -> RefreshPlan:
    """Retrain, sync or nothing, from the pipeline's pointer and the live retriever (see the module doc).

    ``mode="retrain"`` retrains even in the same ID space (new training queries, new options). With a ``run_id``
    the plan is stored, so a retried run follows the plan it started with.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown refresh mode {mode!r}; use one of {', '.join(MODES)}")

    def compute() -> dict[str, Any]:
        return _decide_refresh(
            pipeline_current(pipeline), current_retriever(pipeline, retriever), run_id, mode,
            dense=retriever.dense_index is not None,
        ).to_xcom()  # fmt: skip

    if run_id is None:
        return RefreshPlan.from_xcom(compute())
    run_id = safe_run_id(run_id)
    return RefreshPlan.from_xcom(remembered_at(_run_uri(pipeline, retriever, run_id, "plan.json"), compute))


def _decide_refresh(
    current_pointer: Mapping[str, Any] | None,
    live: LiveRetriever | None,
    run_id: str | None,
    mode: str,
    *,
    dense: bool = False,
) -> RefreshPlan:
    pointer = None
    if current_pointer is not None:
        pointer = PipelineRef.from_xcom({k: current_pointer.get(k) for k in _POINTER_FIELDS})

    def decided(action: Action, reason: str, **extra: Any) -> RefreshPlan:
        return RefreshPlan(run_id=run_id, mode=mode, planned_at=_now(), pointer=pointer, live=live, action=action,
                           reason=reason, **extra)  # fmt: skip

    if pointer is None:
        return decided("none", "the pipeline has published no semantic IDs yet")
    if live is None:
        return decided("retrain", "no retriever has been promoted yet")
    if live.snapshot_version != pointer.snapshot_version:
        return decided(
            "retrain",
            f"the ID space changed: the live retriever writes IDs of snapshot {live.snapshot_version}, "
            f"the pipeline now publishes {pointer.snapshot_version}",
        )
    if mode == "retrain":
        return decided("retrain", "retrain requested")
    missing_dense = dense and live.dense_uri is None
    if live.pipeline_run_id == pointer.run_id and not missing_dense:
        return decided("none", f"the live retriever already serves pipeline run {pointer.run_id}")
    ids = IdTable.read(pointer.ids_uri).restricted(_catalogue_ids(pointer.catalog_uri))
    fingerprint = ids_fingerprint(ids)
    if fingerprint == live.ids_fingerprint:
        # The items and their IDs are the live model's; only a dense index reads the texts, which may have changed.
        unchanged = f"pipeline run {pointer.run_id} left the live items and their IDs unchanged"
        if missing_dense:
            reason = f"{unchanged}, but the live retriever has no dense index yet"
            return decided("sync", reason, items=len(ids), ids_fingerprint=fingerprint)
        if dense and live.catalog_uri != pointer.catalog_uri:
            reason = f"{unchanged}; the dense index follows its catalogue version"
            return decided("sync", reason, items=len(ids), ids_fingerprint=fingerprint)
        return decided("none", unchanged)
    suffixes = ids.table.column("suffix").to_pylist()
    largest = max(suffixes) if suffixes else -1
    if largest >= live.suffix_capacity:
        return decided(
            "retrain",
            f"suffix {largest} does not fit the live model's suffix vocabulary (0..{live.suffix_capacity - 1}); "
            "a retrain widens it",
        )
    return decided(
        "sync",
        f"pipeline run {pointer.run_id} changed the live items in the same ID space: {len(ids)} items now",
        items=len(ids),
        ids_fingerprint=fingerprint,
    )


def _expect(plan: RefreshPlan, action: str, run_id: str) -> PipelineRef:
    if plan.action != action:
        raise RetrieverError(f"run {run_id} planned {plan.action!r} ({plan.reason}), not {action!r}")
    if plan.pointer is None:
        raise RetrieverError(f"run {run_id} planned {action!r} without a pipeline version to work from")
    return plan.pointer


def train_retriever(
    pipeline: PipelineConfig,
    retriever: RetrieverConfig,
    run_id: str,
    plan: RefreshPlan | Mapping[str, Any],
    *,
    progress: bool = False,
) -> TrainedRetriever:
    """Train on the pointer's snapshot, ID table and catalogue in an ``accelerate launch`` subprocess, as the
    indexer's training step does (the pipeline's ``train_processes`` and ``mixed_precision``; a GPU per process where
    there is one); save under ``runs/<run>/model/``. A retried task on the same worker resumes the training from its
    checkpoint; once trained, a rerun returns the stored result."""
    run_id = safe_run_id(run_id)
    plan = RefreshPlan.from_xcom(plan)
    pointer = _expect(plan, "retrain", run_id)

    def compute() -> dict[str, Any]:
        result = _launch_training(pipeline, retriever, run_id, pointer, progress=progress)
        dense_uri = _build_dense_index(pipeline, retriever, run_id, pointer.catalog_uri, progress=progress)
        return TrainedRetriever(
            run_id=run_id, trained_at=_now(), pipeline_run_id=pointer.run_id, snapshot_uri=pointer.snapshot_uri,
            ids_uri=pointer.ids_uri, catalog_uri=pointer.catalog_uri, options=dict(retriever.options), live=plan.live,
            dense_uri=dense_uri, **result,
        ).to_xcom()  # fmt: skip

    return TrainedRetriever.from_xcom(remembered_at(_run_uri(pipeline, retriever, run_id, "train.json"), compute))


def _launch_training(
    pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str, pointer: PipelineRef, *, progress: bool
) -> dict[str, Any]:
    """``lmindexer retriever train`` under ``accelerate launch`` on local copies of its inputs; the model is then
    copied to the run's ``model/``. Returns the training summary, as :func:`train_model` does."""
    from lmindexer.cache import cache_root
    from lmindexer.storage.s3 import download_prefix
    from lmindexer.training.launch import accelerate_command, run_training

    with tempfile.TemporaryDirectory(prefix="lmindexer-retriever-train-") as tmp, ExitStack() as inputs:
        work = Path(tmp)
        snapshot = Path(pointer.snapshot_uri)
        if is_s3_uri(pointer.snapshot_uri):
            snapshot = work / "snapshot"
            download_prefix(pointer.snapshot_uri, snapshot)
        ids = inputs.enter_context(id_table_file(pointer.ids_uri))
        catalog = inputs.enter_context(catalog_file(pointer.catalog_uri))
        queries = inputs.enter_context(local_copy(retriever.train_queries, suffix=".jsonl"))
        options = work / "options.json"
        options.write_text(json.dumps(retriever.options))
        out, summary = work / "model", work / "summary.json"
        # Outside the temporary directory, so that a retry of this task on the same worker resumes the training.
        checkpoint = cache_root() / "training" / f"retriever-{run_id}"
        command = accelerate_command(pipeline.train_processes, pipeline.mixed_precision, [
            "retriever", "train", "--snapshot", str(snapshot), "--ids", str(ids), "--catalog", str(catalog),
            "--queries", str(queries), "--out", str(out), "--options", str(options),
            "--checkpoint-dir", str(checkpoint), "--json", str(summary), *([] if progress else ["--quiet"]),
        ])  # fmt: skip
        run_training(command, produces=summary)
        result = json.loads(summary.read_text())
        model_uri = _run_uri(pipeline, retriever, run_id, "model")
        upload_tree(out, model_uri)
    # The summary names the local copies the training read; the record names what the run trained on.
    return {**result, "model_uri": model_uri, "train_queries": retriever.train_queries}


def evaluate_retriever(
    pipeline: PipelineConfig,
    retriever: RetrieverConfig,
    run_id: str,
    trained: TrainedRetriever | Mapping[str, Any],
    *,
    progress: bool = False,
) -> EvaluatedRetriever:
    """The new model's metrics on the eval queries, and the live model's for comparison.

    In the same ID space the live model is measured now, on the same queries, after its trie is given exactly the
    new model's items: the one comparison that isolates the model. In another ID space it cannot be: the live
    model's trie holds the old IDs and lacks the items added since, so its recorded metrics are reported as an
    informational figure only (and :func:`gate_retriever` does not gate on them).
    """
    run_id = safe_run_id(run_id)
    trained = TrainedRetriever.from_xcom(trained)

    def compute() -> dict[str, Any]:
        pairs = read_queries(retriever.eval_queries)
        model = GenerativeModel.load(trained.model_uri)
        metrics = evaluate_model(model, pairs, progress=progress)
        return EvaluatedRetriever(
            run_id=run_id, evaluated_at=_now(), model_uri=trained.model_uri, snapshot_version=trained.snapshot_version,
            eval_queries=retriever.eval_queries, metrics=metrics,
            live=_compare_live(trained.live, model, trained.snapshot_version, pairs, progress=progress),
        ).to_xcom()  # fmt: skip

    return EvaluatedRetriever.from_xcom(remembered_at(_run_uri(pipeline, retriever, run_id, "evaluate.json"), compute))


def _compare_live(
    live: LiveRetriever | None,
    model: GenerativeModel,
    snapshot_version: str,
    pairs: Sequence[tuple[str, str]],
    *,
    progress: bool,
) -> LiveComparison | None:
    if live is None:
        return None
    same_space = live.snapshot_version == snapshot_version
    about = {
        "run_id": live.run_id, "model_uri": live.model_uri, "snapshot_version": live.snapshot_version,
        "pipeline_run_id": live.pipeline_run_id, "metrics_run_id": live.metrics_run_id,
        "eval_queries": live.eval_queries, "same_id_space": same_space, "recorded_metrics": live.metrics,
    }  # fmt: skip
    if not same_space:
        note = (
            "another ID space: recorded when the live model was promoted, on the catalogue of its time; "
            "informational, not gated"
        )
        return LiveComparison(**about, compared=False, note=note)
    live_model = GenerativeModel.load(live.model_uri)
    try:
        _align(live_model, model)
    except ConfigError as exc:
        return LiveComparison(**about, compared=False, note=f"the live model cannot hold the new model's items ({exc})")
    return LiveComparison(
        **about, compared=True, note="measured now, on the same eval queries and the same items",
        metrics=evaluate_model(live_model, pairs, progress=progress),
    )  # fmt: skip


def gate_retriever(
    pipeline: PipelineConfig,
    retriever: RetrieverConfig,
    run_id: str,
    evaluated: EvaluatedRetriever | Mapping[str, Any],
) -> GateOutcome:
    """Check the new model against the gates; record the outcome; raise :class:`RetrieverGateFailed` on failure.

    Always: recall@10 >= ``min_recall_at_10``. Only when the live model was measured now in the same ID space (see
    :func:`evaluate_retriever`): NDCG@10 no more than ``max_ndcg_drop`` below the live model's. Cheap and
    deterministic given the stored evaluation, so it is recomputed on every call: a rerun with changed gates
    applies them.
    """
    run_id = safe_run_id(run_id)
    evaluated = EvaluatedRetriever.from_xcom(evaluated)
    metrics, live = evaluated.metrics, evaluated.live
    failures: list[str] = []
    checks: dict[str, Any] = {"recall@10": metrics["recall@10"], "min_recall_at_10": retriever.min_recall_at_10}
    if metrics["recall@10"] < retriever.min_recall_at_10:
        failures.append(f"recall@10 {metrics['recall@10']:.4f} is below the floor {retriever.min_recall_at_10:.4f}")
    if live is not None and live.compared and live.metrics is not None:
        live_ndcg = live.metrics["ndcg@10"]
        checks.update(
            {"ndcg@10": metrics["ndcg@10"], "live_ndcg@10": live_ndcg, "max_ndcg_drop": retriever.max_ndcg_drop}
        )
        if metrics["ndcg@10"] < live_ndcg - retriever.max_ndcg_drop:
            failures.append(
                f"ndcg@10 {metrics['ndcg@10']:.4f} is more than {retriever.max_ndcg_drop:.4f} below the live "
                f"model's {live_ndcg:.4f} on the same eval queries"
            )
    elif live is not None and (live.recorded_metrics or {}).get("ndcg@10") is not None:
        recorded = live.recorded_metrics["ndcg@10"]  # type: ignore[index]
        checks["informational"] = {
            "ndcg@10": metrics["ndcg@10"],
            "live_recorded_ndcg@10": recorded,
            "difference": metrics["ndcg@10"] - recorded,
            "note": live.note,
        }
    result = GateOutcome(run_id=run_id, gated_at=_now(), passed=not failures, failures=failures, checks=checks)
    write_json(_run_uri(pipeline, retriever, run_id, "gate.json"), result.to_xcom())
    if failures:
        holder = f"run {live.run_id}" if live else "none"
        raise RetrieverGateFailed(
            f"retriever run {run_id} failed its gates: {'; '.join(failures)}. Nothing was promoted; "
            f"the live retriever ({holder}) stays in charge"
        )
    return result


def _switch(
    pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str, planned_live: str | None, entry: LiveRetriever
) -> LiveRetriever:
    """Point ``current.json`` at ``entry`` (one atomic write) unless this run already did; refuse when another run
    went live after this one planned, so an older plan never replaces a newer model."""
    record = _run_uri(pipeline, retriever, run_id, "promote.json")
    done = read_json(record)
    if done is not None:
        return LiveRetriever.from_xcom(done)
    live = current_retriever(pipeline, retriever)
    live_run = live.run_id if live else None
    if live is not None and live_run == run_id:
        entry = live
    elif live_run != planned_live:
        raise RetrieverError(
            f"the live retriever changed since run {run_id} planned (run {planned_live} then, run {live_run} now); "
            "nothing was promoted: start a new refresh"
        )
    else:
        write_json(_uri(pipeline, retriever, CURRENT), entry.to_xcom())
    write_json(record, entry.to_xcom())
    return entry


def promote_retriever(
    pipeline: PipelineConfig,
    retriever: RetrieverConfig,
    run_id: str,
    gated: GateOutcome | Mapping[str, Any],
) -> LiveRetriever:
    """Make the run's model the live retriever, once its gates passed. A rerun changes nothing."""
    run_id = safe_run_id(run_id)
    stored_gate = read_json(_run_uri(pipeline, retriever, run_id, "gate.json")) or {}
    passed = gated.passed if isinstance(gated, GateOutcome) else bool(gated.get("passed"))
    if not (passed and stored_gate.get("passed")):
        raise RetrieverGateFailed(f"retriever run {run_id} has not passed its gates; nothing was promoted")
    trained_record = read_json(_run_uri(pipeline, retriever, run_id, "train.json"))
    evaluated_record = read_json(_run_uri(pipeline, retriever, run_id, "evaluate.json"))
    if trained_record is None or evaluated_record is None:
        raise RetrieverError(f"retriever run {run_id} has no stored training or evaluation to promote")
    trained = TrainedRetriever.from_xcom(trained_record)
    evaluated = EvaluatedRetriever.from_xcom(evaluated_record)
    planned_live = trained.live.run_id if trained.live else None
    entry = LiveRetriever(
        run_id=run_id, kind="trained", promoted_at=_now(), model_uri=trained.model_uri, trained_run_id=run_id,
        previous_run_id=planned_live, snapshot_version=trained.snapshot_version,
        pipeline_run_id=trained.pipeline_run_id, ids_uri=trained.ids_uri, catalog_uri=trained.catalog_uri,
        ids_fingerprint=trained.ids_fingerprint, items=trained.items, suffix_capacity=trained.suffix_capacity,
        metrics=evaluated.metrics, metrics_run_id=run_id, eval_queries=evaluated.eval_queries,
        dense_uri=trained.dense_uri,
    )  # fmt: skip
    return _switch(pipeline, retriever, run_id, planned_live, entry)


def sync_retriever(
    pipeline: PipelineConfig, retriever: RetrieverConfig, run_id: str, plan: RefreshPlan | Mapping[str, Any]
) -> SyncedRetriever:
    """Give the live model the pointer's live items (new ones in, deleted ones out), save it as the run's model
    and make it live. No training, so no gates: the weights are the live ones. Its metrics are carried over from
    the run that measured them."""
    run_id = safe_run_id(run_id)
    plan = RefreshPlan.from_xcom(plan)
    pointer, live = _expect(plan, "sync", run_id), plan.live
    if live is None:
        raise RetrieverError(f"run {run_id} planned a sync without a live retriever to sync")

    def compute() -> dict[str, Any]:
        model = GenerativeModel.load(live.model_uri)
        ids = IdTable.read(pointer.ids_uri).restricted(_catalogue_ids(pointer.catalog_uri))
        counts = model.sync(ids)
        if model.prior is not None:
            _embed_new_items(model, pointer)
        return SyncedRetriever(
            run_id=run_id, synced_at=_now(), from_model_uri=live.model_uri,
            model_uri=save_model(model, _run_uri(pipeline, retriever, run_id, "model")),
            pipeline_run_id=pointer.run_id, ids_uri=pointer.ids_uri, catalog_uri=pointer.catalog_uri,
            ids_fingerprint=ids_fingerprint(ids),
            dense_uri=_build_dense_index(pipeline, retriever, run_id, pointer.catalog_uri), **counts,
        ).to_xcom()  # fmt: skip

    synced = SyncedRetriever.from_xcom(remembered_at(_run_uri(pipeline, retriever, run_id, "sync.json"), compute))
    entry = dataclasses.replace(
        live, run_id=run_id, kind="synced", promoted_at=_now(), model_uri=synced.model_uri,
        trained_run_id=live.trained_run_id or live.run_id, previous_run_id=live.run_id,
        pipeline_run_id=synced.pipeline_run_id, ids_uri=synced.ids_uri, catalog_uri=synced.catalog_uri,
        ids_fingerprint=synced.ids_fingerprint, items=synced.items, dense_uri=synced.dense_uri,
    )  # fmt: skip
    return dataclasses.replace(synced, current=_switch(pipeline, retriever, run_id, live.run_id, entry))


def refresh_retriever(
    pipeline: PipelineConfig,
    retriever: RetrieverConfig,
    run_id: str,
    *,
    mode: str = "auto",
    progress: bool = False,
) -> Refreshed:
    """The whole refresh in-process: plan, then train -> evaluate -> gate -> promote, or sync, or nothing."""
    plan = plan_refresh(pipeline, retriever, run_id, mode=mode)
    done = Refreshed(run_id=safe_run_id(run_id), action=plan.action, reason=plan.reason)
    if plan.action == "retrain":
        trained = train_retriever(pipeline, retriever, run_id, plan, progress=progress)
        evaluated = evaluate_retriever(pipeline, retriever, run_id, trained, progress=progress)
        gated = gate_retriever(pipeline, retriever, run_id, evaluated)
        current = promote_retriever(pipeline, retriever, run_id, gated)
        return dataclasses.replace(done, metrics=evaluated.metrics, live=evaluated.live, gate=gated, current=current)
    if plan.action == "sync":
        synced = sync_retriever(pipeline, retriever, run_id, plan)
        counts = {"inserted": synced.inserted, "removed": synced.removed, "items": synced.items}
        return dataclasses.replace(done, synced=counts, current=synced.current)
    return done


__all__ = [
    "RetrieverConfig",
    "current_retriever",
    "evaluate_model",
    "evaluate_retriever",
    "fit_retriever",
    "gate_retriever",
    "ids_fingerprint",
    "parse_retriever_config",
    "plan_refresh",
    "promote_retriever",
    "read_queries",
    "refresh_retriever",
    "save_model",
    "sync_retriever",
    "train_model",
    "train_retriever",
]
