"""Typed step results for tests that call one step on its own: every field a real run writes, with the ones a test
is about given explicitly."""

from __future__ import annotations

from typing import Any

from lmindexer.pipeline.records import current_versioned
from lmindexer.pipeline.results import Decision, IdQuality, Merged, Published, Reduced, Snapshot


def pointer(run_id: str = "r0", **fields: Any) -> dict[str, Any]:
    """A ``current.json`` as ``commit`` writes it."""
    return {"run_id": run_id, "snapshot_uri": "s", "snapshot_version": "v", "ids_uri": "i", "catalog_uri": "c",
            "items": 100, "items_at_retrain": 100, "added_since_retrain": 0, **fields}  # fmt: skip


def merged(config: Any = None, **fields: Any) -> Merged:
    """A merge result; with ``config``, merged onto whatever is live now (so that it is not stale)."""
    base_run_id = base_version = None
    if config is not None:
        live, base_version = current_versioned(config)
        base_run_id = live["run_id"] if live else None
    values = {"catalog_uri": "c", "delta_uri": "d", "items": 110, "previous_items": 100, "base_run_id": base_run_id,
              "base_version": base_version, "new": 0, "changed": 0, "deleted": 0, **fields}  # fmt: skip
    return Merged(**values)


APPLY = Decision("apply", "apply requested")
RETRAIN = Decision("retrain", "retrain requested")
SNAPSHOT = Snapshot(trained=False, snapshot_uri="s", snapshot_version="v")


def reduced(**fields: Any) -> Reduced:
    return Reduced(**{"ids_uri": "i", "rows_before": 100, "rows_after": 110, "newly_assigned": 10,
                      "write_attempts": 1, **fields})  # fmt: skip


def quality(**fields: Any) -> IdQuality:
    return IdQuality(**{"items": 110, "level1_ami": 0.4, "ami": [0.4], "collision_rate": 0.0, "largest_bucket": 1,
                        "utilisation": [1.0], **fields})  # fmt: skip


def published(index: str = "x") -> Published:
    return Published(mode="incremental", index=index, refused=0, quarantine_uri=None)
