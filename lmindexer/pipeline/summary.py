"""What the last committed run of the pipeline did, read back from the store and the search alias."""

from __future__ import annotations

from typing import Any

from lmindexer.metrics import describe_collisions
from lmindexer.pipeline.config import PipelineConfig
from lmindexer.pipeline.records import current, read_json, step_uri
from lmindexer.pipeline.results import Published

_STEPS = ("validate", "merge", "decide", "train", "reduce", "check", "publish")


def run_summary(
    config: PipelineConfig, search: Any = None, *, lookups: int = 2, lookup_size: int = 6
) -> dict[str, Any]:
    """Counts, decisions, quality and search state of the live version; ``search`` (a SearchConfig) adds the live
    index and a few prefix lookups (items sharing the first two codes with a recently indexed item)."""
    live = current(config)
    if live is None:
        return {"published": False}
    run_id = live["run_id"]
    steps = {step: read_json(step_uri(config, run_id, step)) for step in _STEPS}
    drops = [
        {
            "source": d["source"],
            "rows_in": d["rows_in"],
            "staged": d["staged"],
            "quarantined": d["quarantined"],
            "tombstones": d["tombstones"],
            "rejections_by_rule": d["rejections_by_rule"],
            "quarantine_uri": d["quarantine_uri"],
        }
        for d in (steps["validate"] or {}).get("drops", [])
    ]
    summary: dict[str, Any] = {
        "published": True,
        "run_id": run_id,
        "drops": drops,
        "catalogue": catalogue_counts(steps["merge"] or {}),
        "decision": steps["decide"],
        "snapshot_version": live["snapshot_version"],
        "retrained": bool((steps["train"] or {}).get("trained")),
        "ids": {k: (steps["reduce"] or {}).get(k) for k in ("rows_before", "rows_after", "newly_assigned")},
        "quality": live.get("metrics"),
        "stability": (steps["check"] or {}).get("stability"),
        "publish": _publish_counts(steps["publish"]),
    }
    if search is not None:
        from lmindexer.search import SearchReader

        with SearchReader(search) as backend:
            summary["search"] = {
                "alias": backend.alias,
                "live_index": backend.live_index(),
                "documents": backend.count(),
            }
            summary["lookups"] = _lookups(backend, config, live, lookups, lookup_size)
    return summary


def _publish_counts(record: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("mode", "index", "attempted", "indexed", "deleted")
    if record is None:
        return dict.fromkeys(keys)
    published = Published.from_xcom(record)
    return {key: getattr(published, key) for key in keys}


def catalogue_counts(merged: dict[str, Any]) -> dict[str, Any]:
    """What the run's drops did to the catalogue, from the merge step's record. ``unchanged`` counts the drops' rows
    that repeated an item as it was; ``untouched`` the existing items no row of the drops named, so that
    ``items = new + changed + unchanged + untouched``."""
    counts = {k: merged.get(k) for k in ("items", "previous_items", "new", "changed", "deleted", "unchanged")}
    parts = [counts[k] for k in ("previous_items", "changed", "deleted", "unchanged")]
    counts["untouched"] = None if None in parts else parts[0] - parts[1] - parts[2] - parts[3]
    return counts


def _lookups(backend: Any, config: PipelineConfig, live: dict[str, Any], count: int, size: int) -> list[dict]:
    from lmindexer.idtable import IdTable

    return prefix_lookups(backend, IdTable.read(live["ids_uri"]), count, size)


def prefix_lookups(backend: Any, table: Any, count: int, size: int, *, depth: int = 2, scan: int = 1000) -> list[dict]:
    """Up to ``count`` of the newest live items (among the table's last ``scan`` rows), each with the items sharing
    its first ``depth`` codes, one item per prefix: the newest rows of a run often share a prefix, and two lookups
    of one group would show the same list twice."""
    if table.space.levels < depth or not len(table):
        return []
    results: list[dict] = []
    shown: set[tuple[int, ...]] = set()
    for row in reversed(table.table.slice(max(len(table) - scan, 0)).to_pylist()):
        prefix = tuple(row["codes"][:depth])
        if prefix in shown:
            continue
        document = backend.get(row["item_id"])
        if document is None:  # deleted since: its ID stays in the table, but there is nothing to show
            continue
        shown.add(prefix)
        neighbours = backend.items_sharing_prefix(row["sid"], depth, size=size)
        results.append(
            {
                "item_id": row["item_id"],
                "title": document.get("title"),
                "sid": row["sid"],
                "prefix": "-".join(str(c) for c in prefix),
                "sharing_prefix": [{"sid": n.get("sid"), "title": n.get("title")} for n in neighbours],
            }
        )
        if len(results) == count:
            break
    return results


def _describe_catalogue(c: dict[str, Any]) -> str:
    """``N live items = new + changed + re-sent unchanged + untouched existing items; deleted``, zero terms left out
    (but for new and deleted)."""
    terms = [f"{c['new']} new"]
    if c.get("changed"):
        terms.append(f"{c['changed']} changed")
    if c.get("unchanged"):
        terms.append(f"{c['unchanged']} re-sent unchanged by the drops")
    if c.get("untouched"):
        terms.append(f"{c['untouched']} existing items the drops did not touch")
    return f"{c['items']} live items = {' + '.join(terms)}; {c['deleted']} deleted"


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    if not summary.get("published"):
        return "nothing has been published yet"
    lines = [f"run {summary['run_id']}: snapshot {summary['snapshot_version']}"]
    for drop in summary["drops"]:
        reasons = ", ".join(f"{rule}: {n}" for rule, n in sorted(drop["rejections_by_rule"].items())) or "none"
        lines.append(
            f"  drop {drop['source']}: {drop['rows_in']} rows in = {drop['staged']} staged + "
            f"{drop['quarantined']} quarantined ({reasons}); {drop['tombstones']} tombstones"
        )
    lines.append(f"  catalogue: {_describe_catalogue(summary['catalogue'])}")
    decision = summary["decision"] or {}
    lines.append(f"  decision: {decision.get('mode')} ({decision.get('reason')})")
    ids = summary["ids"]
    lines.append(
        f"  IDs: {ids['newly_assigned']} assigned; the ID table holds {ids['rows_after']} (IDs are never reused)"
    )
    quality = summary.get("quality") or {}
    if quality:
        ami = ", ".join(f"{a:.3f}" for a in quality.get("ami", []))
        lines.append(
            f"  quality: AMI per level [{ami}]; {describe_collisions(quality['collision_rate'])}; "
            f"utilisation {', '.join(f'{u:.0%}' for u in quality['utilisation'])}"
        )
    stability = summary.get("stability")
    if stability and stability.get("stability") is not None:
        lines.append(
            f"  ID stability vs the previous table: {stability['stability']:.1%} of {stability['common_items']}"
        )
    publish = summary["publish"]
    lines.append(f"  publish: {publish['mode']} into {publish['index']}")
    search = summary.get("search")
    if search:
        lines.append(
            f"  search: alias {search['alias']} -> {search['live_index']} with {search['documents']} documents"
        )
    for lookup in summary.get("lookups", []):
        lines.append(f"  items sharing prefix {lookup['prefix']} with {lookup['title']!r} ({lookup['sid']}):")
        lines.extend(f"      {n['sid']:>12}  {n['title']}" for n in lookup["sharing_prefix"])
    return "\n".join(lines)
