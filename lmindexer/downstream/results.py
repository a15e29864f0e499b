"""What each step of a retriever refresh hands the next, and the live retriever's record: frozen dataclasses with
the same JSON in and out as the reindex pipeline's results (:class:`~lmindexer.pipeline.results.StepResult`), in
refresh order: plan -> (train -> evaluate -> gate -> promote) or sync."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lmindexer.pipeline.results import StepResult

Action = Literal["retrain", "sync", "none"]


@dataclass(frozen=True)
class PipelineRef(StepResult):
    """The pipeline version a refresh works from: the part of ``state/current.json`` a retriever needs."""

    run_id: str
    snapshot_uri: str
    snapshot_version: str
    ids_uri: str
    catalog_uri: str


@dataclass(frozen=True)
class LiveRetriever(StepResult):
    """``retrievers/current.json``: the live model, the pipeline run and ID space it serves, its metrics."""

    run_id: str
    model_uri: str
    snapshot_version: str
    kind: Literal["trained", "synced"] = "trained"
    promoted_at: str | None = None
    trained_run_id: str | None = None
    previous_run_id: str | None = None
    pipeline_run_id: str | None = None
    ids_uri: str | None = None
    catalog_uri: str | None = None
    ids_fingerprint: str | None = None
    items: int | None = None
    suffix_capacity: int = 0
    metrics: dict[str, Any] | None = None
    metrics_run_id: str | None = None
    eval_queries: str | None = None
    # The dense index of the same catalogue version (serve --dense), when the refresh builds one.
    dense_uri: str | None = None


@dataclass(frozen=True)
class RefreshPlan(StepResult):
    """Retrain, sync or nothing, and why; the pointer and the live retriever it was decided on."""

    run_id: str | None
    mode: str
    planned_at: str
    pointer: PipelineRef | None
    live: LiveRetriever | None
    action: Action
    reason: str
    # For a sync: the live items and the fingerprint of their IDs.
    items: int | None = None
    ids_fingerprint: str | None = None


@dataclass(frozen=True)
class TrainedRetriever(StepResult):
    """A model trained on the pointer's snapshot, ID table and catalogue, saved under the run."""

    run_id: str
    trained_at: str
    pipeline_run_id: str
    snapshot_uri: str
    ids_uri: str
    catalog_uri: str
    options: dict[str, Any]
    live: LiveRetriever | None
    model_uri: str
    snapshot_version: str
    items: int
    ids_fingerprint: str
    suffix_capacity: int
    method: str | None = None
    initialised_from: str | None = None
    train_queries: str | None = None
    train_pairs: int = 0
    train_pairs_skipped: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    dense_uri: str | None = None


@dataclass(frozen=True)
class LiveComparison(StepResult):
    """The live model beside a new one: measured now on the same queries and items (``compared``), or, in another
    ID space, only its recorded metrics (informational)."""

    run_id: str
    model_uri: str
    snapshot_version: str
    same_id_space: bool
    compared: bool
    recorded_metrics: dict[str, Any] | None
    pipeline_run_id: str | None = None
    metrics_run_id: str | None = None
    eval_queries: str | None = None
    note: str | None = None
    metrics: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvaluatedRetriever(StepResult):
    run_id: str
    evaluated_at: str
    model_uri: str
    snapshot_version: str
    eval_queries: str
    metrics: dict[str, Any]
    live: LiveComparison | None


@dataclass(frozen=True)
class GateOutcome(StepResult):
    run_id: str
    gated_at: str
    passed: bool
    failures: list[str]
    checks: dict[str, Any]


@dataclass(frozen=True)
class SyncedRetriever(StepResult):
    """The live model given the pointer's live items, saved under the run; ``current`` once it is live."""

    run_id: str
    synced_at: str
    from_model_uri: str
    model_uri: str
    pipeline_run_id: str
    ids_uri: str
    catalog_uri: str
    ids_fingerprint: str
    inserted: int
    removed: int
    items: int
    current: LiveRetriever | None = None
    dense_uri: str | None = None


@dataclass(frozen=True)
class Refreshed(StepResult):
    """A whole refresh in one process (``lmindexer retriever refresh``): what it did and what is live after it."""

    run_id: str
    action: Action
    reason: str
    metrics: dict[str, Any] | None = None
    live: LiveComparison | None = None
    gate: GateOutcome | None = None
    synced: dict[str, int] | None = None
    current: LiveRetriever | None = None


__all__ = [
    "Action",
    "EvaluatedRetriever",
    "GateOutcome",
    "LiveComparison",
    "LiveRetriever",
    "PipelineRef",
    "RefreshPlan",
    "Refreshed",
    "SyncedRetriever",
    "TrainedRetriever",
]
