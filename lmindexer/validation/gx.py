"""Great Expectations plumbing: one quiet, ephemeral context per process, and suites run on pandas frames.

Importing GX takes seconds, so nothing here imports it at module load; the context is built on first use and
reused. GX keeps nothing on disk for us: suites are defined in code (:mod:`lmindexer.validation.suites`) and the
result of each run is stored by the caller as JSON next to the data it judged.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmindexer.validation.common import jsonable

if TYPE_CHECKING:
    import pandas as pd

DATASOURCE = "lmindexer"
BATCH_DEFINITION = "whole_frame"
CRITICAL = "critical"
WARNING = "warning"

_lock = threading.RLock()
_context: Any = None


def _quiet_logging() -> None:
    # GX logs at INFO while importing and on context creation (e.g. its temporary docs site); some of its modules
    # pin their logger to INFO, so the parent's level alone is not enough. A task log should show only ours.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        pinned_low = isinstance(logger, logging.Logger) and 0 < logger.level < logging.WARNING
        if pinned_low and name.startswith("great_expectations."):
            logger.setLevel(logging.WARNING)


def load() -> Any:
    """Import GX quietly (the first import takes seconds and logs at INFO) and return the module."""
    with _lock:
        if "great_expectations" not in sys.modules:
            _quiet_logging()
            # GX imports the deprecated sre_* modules; that warning is about GX, not anything a user can act on.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import great_expectations

            _quiet_logging()  # again: the import created and pinned more loggers
            return great_expectations
    import great_expectations

    return great_expectations


def context() -> Any:
    """The process-wide ephemeral GX context, with progress bars off and a pandas data source registered."""
    global _context
    with _lock:
        if _context is None:
            gx = load()
            from great_expectations.data_context.types.base import ProgressBarsConfig

            ctx = gx.get_context(mode="ephemeral")
            _quiet_logging()
            # Progress bars ("Calculating Metrics: ...") are on by default and would flood task logs and stderr.
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            ctx.data_sources.add_pandas(DATASOURCE)
            _context = ctx
        return _context


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict, reduced to what reports and cross-checks need."""

    type: str
    column: str | None
    severity: str
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_index: list[dict[str, Any]]
    meta: dict[str, Any]
    exception: str | None = None

    def unexpected_values(self, column: str) -> list[Any]:
        return [entry.get(column) for entry in self.unexpected_index]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "expectation": self.type,
            "column": self.column,
            "severity": self.severity,
            "success": self.success,
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
        }
        if self.meta:
            data["meta"] = self.meta
        if self.exception:
            data["exception"] = self.exception
        return data


@dataclass
class SuiteOutcome:
    """A suite run: GX's own ``success`` (every expectation met), whether any *critical* one failed, each
    expectation's outcome, and the result document ready to store."""

    suite: str
    success: bool
    critical_success: bool
    expectations: list[ExpectationOutcome]
    document: dict[str, Any] = field(repr=False)

    def failed(self, severity: str | None = None) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success and (severity is None or e.severity == severity)]


# Fields GX fills with the wall clock or fresh UUIDs. Dropping them makes a rerun on the same data store the same
# bytes, so an idempotent rerun is visibly idempotent; the run's time is recorded in the processing state instead.
_VOLATILE_META = ("validation_time", "validation_id")


def _normalise(document: dict[str, Any], extra_meta: Mapping[str, Any]) -> dict[str, Any]:
    meta = document.setdefault("meta", {}) or {}
    for key in _VOLATILE_META:
        meta.pop(key, None)
    markers = meta.get("batch_markers")
    if isinstance(markers, dict):
        markers.pop("ge_load_time", None)
    run = meta.get("run_id")
    if isinstance(run, dict):
        run.pop("run_time", None)
    meta["lmindexer"] = dict(extra_meta)
    for result in document.get("results", []):
        config = result.get("expectation_config") or {}
        config.pop("id", None)
    return jsonable(document)


def run_suite(
    suite_name: str,
    frame: pd.DataFrame,
    expectations: Sequence[Any],
    *,
    index_columns: Sequence[str],
    run_name: str,
    extra_meta: Mapping[str, Any] | None = None,
) -> SuiteOutcome:
    """Validate ``frame`` against ``expectations`` with the ``COMPLETE`` result format, so every unexpected row is
    listed by ``index_columns`` (the source row number, the item_id) for cross-checks and quarantine evidence."""
    ctx = context()
    gx = load()
    from great_expectations.core.run_identifier import RunIdentifier

    with _lock:
        source = ctx.data_sources.get(DATASOURCE)
        try:
            asset = source.get_asset(suite_name)
        except LookupError:
            asset = source.add_dataframe_asset(suite_name)
        try:
            batch_definition = asset.get_batch_definition(BATCH_DEFINITION)
        except KeyError:
            batch_definition = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
        # Suites are rebuilt on every run: their parameters (threshold, codebook sizes) change between calls.
        suite = ctx.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=list(expectations)))
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame},
            run_id=RunIdentifier(run_name=run_name),
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": list(index_columns),
                # The query lists every unexpected pandas index again; the index list above already has them.
                "return_unexpected_index_query": False,
            },
        )
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        details = item.result or {}
        exception = None
        if item.exception_info and item.exception_info.get("raised_exception"):
            exception = str(item.exception_info.get("exception_message"))
        outcomes.append(
            ExpectationOutcome(
                type=config.type,
                column=config.kwargs.get("column"),
                severity=str(getattr(config.severity, "value", config.severity) or CRITICAL),
                success=bool(item.success),
                element_count=int(details.get("element_count", 0) or 0),
                unexpected_count=int(details.get("unexpected_count", 0) or 0),
                unexpected_index=jsonable(details.get("unexpected_index_list") or []),
                meta=jsonable(dict(config.meta or {})),
                exception=exception,
            )
        )
    critical_success = not any(not o.success and o.severity == CRITICAL for o in outcomes)
    document = _normalise(result.to_json_dict(), extra_meta or {})
    return SuiteOutcome(suite_name, bool(result.success), critical_success, outcomes, document)
