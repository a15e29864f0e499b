"""A whole incremental pipeline run against catalogues of 10k, 100k and 1M items: does its cost follow the new items
or the catalogue, where does the time go, how much does it store, and how much memory does it need?

For each catalogue size N the script builds, untimed, what a committed run leaves behind on the local S3 server:
the catalogue version, an ID table of N rows, an index of N documents live behind the alias on the local osmem
server, and the current pointer. Existing items are the real wiki-topics items repeated with distinct ids and a copy
mark in their text; one rq-kmeans snapshot fitted on real items codes them (a repeat has its source's codes). Then,
for each repetition, it lands one drop of 1,000 new items in the incoming prefix and runs the whole run with
:func:`lmindexer.pipeline.runner.run_pipeline` (discover, validate, merge, decide, plan, assign, reduce, check,
publish, commit) in a fresh process of its own, so that the process's peak resident memory is the run's. Reported
per size: the run's wall time and each step's, the peak RSS, and the bytes the run adds to the store (state files,
the run's catalogue version, the ID table, step records).

The new items' embeddings are put in the cache before any measurement (``--uncached-new-items`` does not), so the
figure is what the catalogue's size adds; encoding 1,000 new texts costs the same at every size (~7 s at the ~140
texts/s of the bf16 encoder on 2 idle cores, benchmarks/precision.py).

    python benchmarks/pipeline_scale.py                          # 10k, 100k, 1M; 2 runs each
    python benchmarks/pipeline_scale.py --sizes 2000 10000 --repeats 1

Writes <out>/pipeline_scale.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, markdown_table, result_file, stamp_figure, write_results
from incremental_cost import write_jsonl

from lmindexer import datasets, devstack
from lmindexer.catalog import Item, read_items
from lmindexer.catalog.store import CatalogPart, CatalogVersion, write_catalog
from lmindexer.idtable import Candidate, IdTable
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.pipeline import PipelineConfig
from lmindexer.pipeline.records import current_versioned, set_current
from lmindexer.pipeline.runner import run_pipeline
from lmindexer.pipeline.steps import ids_uri
from lmindexer.search import SearchBackend, SearchConfig, iter_documents
from lmindexer.storage.s3 import list_objects, s3_client, upload_file, write_bytes
from lmindexer.text import text_hash

PACKAGES = ("opensearch-py", "osmem-server")
SNAPSHOT = {"levels": 3, "codebook_size": 32}
AIM = 1.5


def pipeline_config(base: str, *, compact: bool = False) -> PipelineConfig:
    # Default options, but for the retrain threshold: every measured run must apply the snapshot (a retrain is
    # another workload), also on the smallest catalogues of a quick check, where 1,000 new items are a large share.
    # ``compact``: the run that compacts the catalogue version and the ID table (one run in catalog_max_parts and
    # ids_max_parts, both 16 by default, does).
    config = PipelineConfig(
        base_uri=base, method="rq-kmeans", indexer=SNAPSHOT, label="category", retrain_added_share=1.0
    )
    return config.model_copy(update={"catalog_max_parts": 1, "ids_max_parts": 1}) if compact else config


def search_settings(search_url: str, size: int) -> dict[str, Any]:
    return {"hosts": [search_url], "alias": f"scale-{size}", "timeout": 300}


def split_items(seed: int, new: int) -> tuple[list[Any], list[Any]]:
    """The real wiki items, shuffled: (the new items of every run, the pool the existing catalogue repeats)."""
    real, _ = read_items(datasets.items_path("wiki-topics", progress=False))
    shuffled = random.Random(seed).sample(real, len(real))
    return shuffled[:new], shuffled[new:]


def existing_items(pool: list[Item], count: int) -> tuple[list[Item], list[str]]:
    """``count`` catalogue items cycling through the real ``pool``, and each one's source item id. A repeat gets
    an id that sorts away from its source's (``c<copy>-<id>``) and its copy number in the text, so that, as in a
    real catalogue, no two stored rows are alike and nearby rows do not repeat each other (which would let the
    catalogue's Parquet pages compress far better than real text)."""
    items, sources = [], []
    for n in range(count):
        source, copy = pool[n % len(pool)], n // len(pool)
        if copy:
            source_text = f"{source.text} (copy {copy})"
            items.append(
                Item(f"c{copy}-{source.item_id}", source.title, source_text, source.category, source.attributes)
            )
        else:
            items.append(source)
        sources.append(source.item_id)
    return items, sources


def new_items_of_run(new_items: list[Any], run: int, uncached: bool) -> list[Any]:
    """Run ``run``'s drop: the same real texts under ids no earlier run used (and, uncached, a text no run used)."""
    mark = f" (revision {time.time_ns()})" if uncached else ""
    return [replace(item, item_id=f"{item.item_id}~new{run}", text=f"{item.text}{mark}") for item in new_items]


def set_up(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: the committed state a previous run would have left, for catalogue size ``args.size``."""
    config = pipeline_config(args.base)
    snapshot_uri = config.uri(config.models_prefix, "base")
    indexer = load_snapshot(snapshot_uri)
    _, pool = split_items(args.seed, args.new)
    pool_codes = indexer.codes(pool, progress=False)
    codes_by_source = {item.item_id: tuple(int(c) for c in row) for item, row in zip(pool, pool_codes, strict=True)}
    existing, sources = existing_items(pool, args.size)
    # What a run that compacted the catalogue leaves: the whole version as one part, under its manifest.
    rows_uri = config.uri(config.catalog_prefix, "r0", "items.parquet")
    write_catalog(existing, rows_uri)
    catalog_uri = config.uri(config.catalog_prefix, "r0", "version.json")
    version = CatalogVersion(items=len(existing), parts=[CatalogPart(rows=rows_uri, row_count=len(existing))])
    write_bytes(version.model_dump_json().encode(), catalog_uri)
    # The ID table a previous run would have left: each repeat has its source's codes (so encoding a million
    # texts is not needed), allocated with the library's rule.
    space = indexer.id_space
    hashes = [text_hash(text) for text in indexer.texts(existing)]
    candidates = [Candidate(item.item_id, codes_by_source[source], digest)
                  for item, source, digest in zip(existing, sources, hashes, strict=True)]  # fmt: skip
    table, _ = IdTable.empty(space).allocate(candidates)
    table.write(ids_uri(config, indexer.version or ""))
    started = time.perf_counter()
    with SearchBackend(SearchConfig(**search_settings(args.search_url, args.size))) as backend:
        index = backend.publish_full(iter_documents(existing, table), indexer.version or "", "r0").index
    publish_seconds = time.perf_counter() - started
    pointer = {
        "run_id": "r0",
        "snapshot_uri": snapshot_uri,
        "snapshot_version": indexer.version,
        "ids_uri": ids_uri(config, indexer.version or ""),
        "ids_rows": args.size,  # as a committing run records it (the rows the quality suite has checked)
        "catalog_uri": catalog_uri,
        "items": args.size,
        "items_at_retrain": args.size,
        "added_since_retrain": 0,
        "metrics": None,  # a pointer written before any quality check
        "index": index,
    }
    set_current(config, pointer, replacing=current_versioned(config)[1])
    return {"full_publish_seconds": round(publish_seconds, 1)}


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """Child process: land run ``args.run``'s drop and run the whole incremental run; time each step."""
    config = pipeline_config(args.base, compact=args.compact)
    new_items, _ = split_items(args.seed, args.new)
    drop = new_items_of_run(new_items, args.run, args.uncached_new_items)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / f"drop-{args.run:03d}.jsonl"
        write_jsonl(drop, local)
        upload_file(local, config.uri(config.incoming_prefix, local.name))
    before = stored_objects(args.base)
    steps: dict[str, float] = {}
    last = time.perf_counter()

    def on_step(name: str, _result: Any) -> None:
        nonlocal last
        now = time.perf_counter()
        steps[name] = round(now - last, 3)
        last = now

    started = last
    done = run_pipeline(config, search_settings(args.search_url, args.size), f"run-{args.run:03d}", on_step=on_step)
    seconds = time.perf_counter() - started
    if done["decide"].mode != "apply" or done["reduce_ids"].newly_assigned != args.new:
        raise RuntimeError(f"not the incremental run expected: {done['decide']}, {done['reduce_ids']}")
    after = stored_objects(args.base)
    added = {key: size for key, (size, etag) in after.items() if before.get(key, (None, None))[1] != etag}
    by_area: dict[str, int] = {}
    for name, size in added.items():
        area = name.split("/", 1)[0]
        by_area[area] = by_area.get(area, 0) + size
    return {
        "seconds": round(seconds, 3),
        "steps": steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bytes_written": sum(added.values()),
        "bytes_written_by_area": by_area,
        "files_written": len(added),
        "store_bytes": sum(size for size, _ in after.values()),
    }


def stored_objects(base: str) -> dict[str, tuple[int, str]]:
    """Every object of the store: key -> (size, etag)."""
    return {info.key: (info.size, info.etag) for info in list_objects(base)}


def child(
    kind: str, base: str, size: int, args: argparse.Namespace, search_url: str, run: int = 0, *, compact: bool = False
) -> dict:
    command = [sys.executable, __file__, f"--child-{kind}", "--base", str(base), "--size", str(size), "--run",
               str(run), "--new", str(args.new), "--seed", str(args.seed), "--search-url", search_url]  # fmt: skip
    if compact:
        command.append("--compact")
    if args.uncached_new_items:
        command.append("--uncached-new-items")
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} of catalogue {size:,} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results: dict[str, Any], sizes: list[int], path: Path) -> None:
    step_names = list(results[str(sizes[0])]["runs"][0]["steps"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    bottom = [0.0] * len(sizes)
    labels = [f"{s:,}" for s in sizes]
    for name in step_names:
        heights = [statistics.median([r["steps"][name] for r in results[str(s)]["runs"]]) for s in sizes]
        left.bar(labels, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    left.set_xlabel("items already in the catalogue")
    left.set_ylabel("seconds (median run)")
    left.set_title("incremental run of 1,000 new items, by step")
    left.legend(fontsize=7, ncol=2)
    right.bar(labels, [results[str(s)]["peak_rss_mb"] for s in sizes], color="#a55", alpha=0.7)
    right.set_xlabel("items already in the catalogue")
    right.set_ylabel("MB")
    right.set_title("peak resident memory of the run's process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--new", type=int, default=1_000, help="new items per incremental run")
    parser.add_argument("--repeats", type=int, default=2, help="incremental runs per size (median reported)")
    parser.add_argument("--fit-items", type=int, default=2_000, help="wiki items the snapshot is fitted on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uncached-new-items", action="store_true", help="new items' texts the encoder never saw")
    parser.add_argument("--out", type=Path, default=RESULTS)
    # Internal: the child processes.
    parser.add_argument("--child-setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--search-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_setup or args.child_run:
        print(json.dumps(set_up(args) if args.child_setup else run_once(args)))
        return 0

    sizes = sorted(args.sizes)
    env = environment(PACKAGES)
    new_items, pool = split_items(args.seed, args.new)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lmindexer-scale-") as tmp:
        work = Path(tmp)
        print(f"fitting rq-kmeans on {args.fit_items} wiki items (embeddings cached when warm)", flush=True)
        indexer = create_indexer("rq-kmeans", {**SNAPSHOT, "seed": args.seed})
        indexer.fit(pool[: args.fit_items], progress=True)
        indexer.codes(pool, progress=True)  # every existing text's embedding, cached for the set-up processes
        if not args.uncached_new_items:
            indexer.codes(new_items, progress=True)
        stack_dir = work / "stack"
        stack = devstack.start(stack_dir)
        # The child processes find the local S3 server and the search server through the standard variables.
        os.environ.update(devstack.client_env(stack))
        try:
            for size in sizes:
                base = f"s3://scale-{size}"
                s3_client().create_bucket(Bucket=base.removeprefix("s3://"))
                local = work / f"snapshot-{size}"
                indexer.save(local)
                for path in sorted(local.rglob("*")):
                    if path.is_file():
                        upload_file(path, f"{base}/models/base/{path.relative_to(local).as_posix()}")
                print(f"setting up a committed catalogue of {size:,} items", flush=True)
                setup = child("setup", base, size, args, stack.search_url)
                runs = []
                for run in range(1, args.repeats + 1):
                    runs.append(child("run", base, size, args, stack.search_url, run))
                    print(f"  run {run}: {runs[-1]['seconds']:.1f} s, peak {runs[-1]['peak_rss_mb']:.0f} MB, "
                          f"steps {runs[-1]['steps']}", flush=True)  # fmt: skip
                # Then the run that compacts (one in catalog_max_parts): the whole catalogue and ID table rewritten.
                compacting = child("run", base, size, args, stack.search_url, args.repeats + 1, compact=True)
                print(f"  compacting run: {compacting['seconds']:.1f} s, steps {compacting['steps']}", flush=True)
                results[str(size)] = {
                    "setup": setup,
                    "runs": runs,
                    "compacting_run": compacting,
                    "median_seconds": round(statistics.median([r["seconds"] for r in runs]), 3),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                    "bytes_written_per_run": statistics.median([r["bytes_written"] for r in runs]),
                    "store_bytes_after": runs[-1]["store_bytes"],
                }
                # Free the server's memory before the next size.
                with SearchBackend(SearchConfig(**search_settings(stack.search_url, size))) as backend:
                    backend.client.indices.delete(index="*", ignore_unavailable=True)
        finally:
            devstack.stop(stack_dir)

    smallest, largest = str(sizes[0]), str(sizes[-1])
    ratio = results[largest]["median_seconds"] / results[smallest]["median_seconds"]
    steps = list(results[smallest]["runs"][0]["steps"])
    rows = []
    for name in [*steps, "whole run"]:
        cells = []
        for size in sizes:
            runs = results[str(size)]["runs"]
            seconds = [r["steps"][name] if name in r["steps"] else r["seconds"] for r in runs]
            cells.append(f"{statistics.median(seconds):.2f}")
        rows.append([name, *cells])
    every = PipelineConfig.model_fields["catalog_max_parts"].default
    if PipelineConfig.model_fields["ids_max_parts"].default != every:
        raise SystemExit("the amortised figure assumes one run compacts both the catalogue and the ID table")
    for size in sizes:  # a run in ``every`` compacts: its whole cost spread over the runs between two compactions
        entry = results[str(size)]
        entry["amortised_seconds"] = round(
            ((every - 1) * entry["median_seconds"] + entry["compacting_run"]["seconds"]) / every, 3
        )
    rows.append([f"compacting run (1 in {every}: catalogue and ID table), whole", *[
        f"{results[str(s)]['compacting_run']['seconds']:.2f}" for s in sizes]])  # fmt: skip
    rows.append([f"whole run amortised over {every} runs", *[f"{results[str(s)]['amortised_seconds']:.2f}"
                                                             for s in sizes]])  # fmt: skip
    amortised_ratio = results[largest]["amortised_seconds"] / results[smallest]["amortised_seconds"]
    rows.append(["peak RSS, MB", *[f"{results[str(s)]['peak_rss_mb']:.0f}" for s in sizes]])
    rows.append(["peak RSS of the compacting run, MB", *[
        f"{results[str(s)]['compacting_run']['peak_rss_mb']:.0f}" for s in sizes]])  # fmt: skip
    rows.append(["bytes the run stores, MB", *[f"{results[str(s)]['bytes_written_per_run'] / 1e6:.1f}" for s in sizes]])
    table = markdown_table(["step (median s)", *[f"{s:,} items" for s in sizes]], rows)
    embeddings = "computed in every run" if args.uncached_new_items else "cached before measuring"
    document = {
        "benchmark": "pipeline_scale",
        "sizes": sizes,
        "new_items": args.new,
        "repeats": args.repeats,
        "new_item_embeddings": embeddings,
        "aim": f"whole incremental run at {sizes[-1]:,} / at {sizes[0]:,} <= {AIM}",
        "ratio": round(ratio, 3),
        "aim_met": ratio <= AIM,
        "catalog_max_parts": every,
        "amortised_ratio": round(amortised_ratio, 3),
        "environment": env,
        "results": results,
    }
    stem = args.out / ("pipeline_scale-uncached" if args.uncached_new_items else "pipeline_scale")
    write_results(
        stem,
        document,
        f"# A whole incremental run of {args.new:,} new items against catalogues of "
        f"{', '.join(f'{s:,}' for s in sizes)} (embeddings {embeddings})\n\n{table}\n\n"
        f"Whole run at {sizes[-1]:,} / at {sizes[0]:,}: {ratio:.2f} (aim <= {AIM}: "
        f"{'met' if ratio <= AIM else 'not met'}); amortised over {every} runs, one of which compacts the catalogue "
        f"version and the ID table: {amortised_ratio:.2f}. Median of {args.repeats} runs per size, each in a fresh "
        "process, then one compacting run.\n\n"
        f"![pipeline scale]({stem.name}.png)\n",
    )
    plot(results, sizes, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
