"""Cost of an incremental run against catalogues of different sizes: does it follow the new items or the catalogue?

One fitted baseline snapshot (``rq-kmeans`` fitted once on real wiki-topics items). For each catalogue size N (10k
and 50k by default) an ID table already holding N items, and a catalogue file holding those N items plus the same
1,000 new ones, as a real incremental run reads it. Measured, with the sizes in a rotating order per repetition:

- **incremental assign**: ``lmindexer.jobs.assign_ids`` on a fresh copy of the N-row ID table, which reads the whole
  catalogue, keeps every existing row and gives the 1,000 new items IDs (wall time, snapshot already loaded);
- of that, **reading and validating the catalogue** alone (``CatalogReader`` over the same file), which says how much
  of the assign's cost is the catalogue's;
- **incremental publish**: ``SearchBackend.publish_incremental`` of the 1,000 new documents (with its refresh) into a
  live index of N documents on a local osmem server; the 1,000 documents are deleted again, untimed, after each
  repetition so every repetition does the same work.

Embeddings are cached by text hash. By default the 1,000 new items are real wiki texts whose embeddings are put in
the cache before any measurement, so both sizes encode nothing and measure the same work: the figure is what the
catalogue size adds (reading and validating the catalogue, rendering and hashing every item's text, reading and
writing the ID table), undiluted by encoding, which costs the same at every size. ``--uncached-new-items`` measures a
real run instead: each measurement appends a unique revision mark to the new items' texts, so the encoder embeds all
1,000 of them (about 22 s at the ~45 texts/s of 2 idle CPU cores; it adds 1,000 entries to the embedding cache per
measurement). Existing items are the other real wiki items, repeated with distinct ids to reach N.

    python benchmarks/incremental_cost.py                                # 10k vs 50k, 1,000 new, 5 repetitions
    python benchmarks/incremental_cost.py --uncached-new-items --repeats 3 --no-publish
    python benchmarks/incremental_cost.py --sizes 2000 10000 --repeats 3 --no-publish

Writes <out>/incremental_cost.json, .md and .png (incremental_cost-uncached.* with --uncached-new-items).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import statistics
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
from _harness import RESULTS, environment, result_file, stamp_figure, write_results

from lmindexer import datasets, devstack
from lmindexer.cache import cache_root
from lmindexer.catalog import CatalogReader, read_items
from lmindexer.catalog.items import Item
from lmindexer.idtable import Candidate, IdSpace, IdTable
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.indexers.base import Indexer
from lmindexer.jobs import assign_ids
from lmindexer.search import SearchBackend, SearchConfig, iter_documents
from lmindexer.text import text_hash

ASSIGN = "incremental assign (whole catalogue file)"
READ = "of which: reading + validating the catalogue"
DROP = "incremental assign of the drop (new items only, as the pipeline runs it)"
PUBLISH = "incremental publish"
AIMED = (ASSIGN, DROP, PUBLISH)
# Versions recorded beside the harness's own list: the search client and server the publish measurement uses.
PACKAGES = ("opensearch-py", "osmem-server")


def item_record(item: Item) -> dict[str, Any]:
    """The JSONL row of an item, leaving out empty optional fields as catalogue files do."""
    return {key: value for key, value in item.to_dict().items() if value not in (None, {}, False)}


def write_jsonl(items: list[Item], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item_record(item), ensure_ascii=False) + "\n")


def existing_items(pool: list[Item], count: int) -> list[Item]:
    """``count`` items cycling through ``pool``; repeats get distinct ids (``<id>~<copy>``) and the same text."""
    items = []
    for n in range(count):
        source = pool[n % len(pool)]
        copy = n // len(pool)
        items.append(
            source
            if copy == 0
            else Item(f"{source.item_id}~{copy}", source.title, source.text, source.category, source.attributes)
        )
    return items


def existing_table(indexer: Indexer, items: list[Item], codes_by_source: dict[str, tuple[int, ...]]) -> IdTable:
    """The ID table a previous run would have left for ``items``: each repeat has its source item's codes."""
    assert indexer.version is not None
    space = IdSpace(indexer.version, indexer.method, indexer.codebook_sizes)
    texts = indexer.texts(items)
    candidates = [
        Candidate(item.item_id, codes_by_source[item.item_id.split("~", 1)[0]], text_hash(text))
        for item, text in zip(items, texts, strict=True)
    ]
    table, _ = IdTable.empty(space).allocate(candidates)
    return table


def time_assign(indexer: Indexer, catalog: Path, base_ids: Path, work_ids: Path, size: int, new: int) -> float:
    shutil.copyfile(base_ids, work_ids)
    gc.collect()
    started = time.perf_counter()
    result = assign_ids(indexer, catalog, work_ids, progress=False)
    seconds = time.perf_counter() - started
    if result.allocation.newly_assigned != new or result.rows_after != size + new:
        raise RuntimeError(f"assign over {size} items: unexpected outcome {result.to_dict()}")
    return seconds


def time_read(catalog: Path, expected: int) -> float:
    gc.collect()
    started = time.perf_counter()
    rows = sum(len(batch) for batch in CatalogReader(catalog))
    seconds = time.perf_counter() - started
    if rows != expected:
        raise RuntimeError(f"read {rows} items from {catalog}, expected {expected}")
    return seconds


def time_publish(backend: SearchBackend, docs: list[dict[str, Any]]) -> float:
    gc.collect()
    started = time.perf_counter()
    result = backend.publish_incremental(docs)
    seconds = time.perf_counter() - started
    if result.indexed != len(docs) or result.failed:
        raise RuntimeError(f"incremental publish: {result.summary()}")
    # Untimed: put the index back to N documents so the next repetition does the same work (creates, not updates).
    backend.publish_incremental(deletes=[doc["item_id"] for doc in docs]).check()
    return seconds


def summarise(runs: dict[int, list[float]], sizes: list[int]) -> dict[str, Any]:
    rows = {
        str(size): {
            "median_seconds": round(statistics.median(runs[size]), 3),
            "min_seconds": round(min(runs[size]), 3),
            "max_seconds": round(max(runs[size]), 3),
            "seconds": [round(s, 3) for s in runs[size]],
        }
        for size in sizes
    }
    ratio = statistics.median(runs[sizes[-1]]) / statistics.median(runs[sizes[0]])
    return {"by_size": rows, "ratio_largest_to_smallest": round(ratio, 3)}


def markdown_table(measured: dict[str, dict[str, Any]], sizes: list[int], new: int) -> str:
    header = "| measurement | " + " | ".join(f"catalogue {s:,}: median s (min–max)" for s in sizes)
    header += f" | ratio {sizes[-1]:,} / {sizes[0]:,} |"
    lines = [header, "|" + "---|" * (len(sizes) + 2)]
    for name, result in measured.items():
        cells = []
        for size in sizes:
            row = result["by_size"][str(size)]
            cells.append(f"{row['median_seconds']:.2f} ({row['min_seconds']:.2f}–{row['max_seconds']:.2f})")
        label = name if name == READ else f"{name} of {new:,} new items"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {result['ratio_largest_to_smallest']:.2f} |")
    return "\n".join(lines)


def plot(measured: dict[str, dict[str, Any]], sizes: list[int], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(measured), figsize=(6 * len(measured), 4.2), squeeze=False)
    for ax, (name, result) in zip(axes[0], measured.items(), strict=True):
        labels = [f"{s:,}" for s in sizes]
        medians = [result["by_size"][str(s)]["median_seconds"] for s in sizes]
        ax.bar(labels, medians, color="#58a", alpha=0.6, label="median")
        for i, size in enumerate(sizes):
            seconds = result["by_size"][str(size)]["seconds"]
            ax.plot([i] * len(seconds), seconds, "o", color="#a55", ms=4, label="repetitions" if i == 0 else None)
        ax.set_xlabel("items already in the catalogue")
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name}: ratio {result['ratio_largest_to_smallest']:.2f}")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="existing catalogue sizes")
    parser.add_argument("--new", type=int, default=1_000, help="new items per incremental run")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per size (median reported)")
    parser.add_argument("--fit-items", type=int, default=2_000, help="wiki items the baseline snapshot is fitted on")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-publish", action="store_true", help="skip the incremental publish measurement")
    parser.add_argument(
        "--uncached-new-items", action="store_true", help="give the new items texts the encoder has not seen"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    env = {**environment(PACKAGES), "embedding_cache": str(cache_root())}
    real, _ = read_items(datasets.items_path("wiki-topics", progress=False))
    if args.new >= len(real):
        parser.error(f"--new must be below the {len(real)} wiki items")
    shuffled = random.Random(args.seed).sample(real, len(real))
    new_items, pool = shuffled[: args.new], shuffled[args.new :]

    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lmindexer-bench-") as tmp:
        work = Path(tmp)
        print(
            f"fitting rq-kmeans on {args.fit_items} wiki items (embeddings come from the cache when warm)", flush=True
        )
        options = {"levels": args.levels, "codebook_size": args.codebook_size, "seed": args.seed}
        fitted = create_indexer("rq-kmeans", options)
        fitted.fit(pool[: args.fit_items], progress=True)
        fitted.save(work / "snapshot")
        indexer = load_snapshot(work / "snapshot")
        # Codes of every distinct existing text (what the previous runs assigned), and the new items' embeddings
        # put in the cache: the choice explained in the module docstring.
        pool_codes = indexer.codes(pool, progress=True)
        codes_by_source = {item.item_id: tuple(int(c) for c in row) for item, row in zip(pool, pool_codes, strict=True)}
        indexer.codes(new_items, progress=True)

        catalogues, tables, existing = {}, {}, {}
        for size in sizes:
            existing[size] = existing_items(pool, size)
            catalogues[size] = work / f"catalogue-{size}.jsonl"
            write_jsonl(existing[size] + new_items, catalogues[size])
            tables[size] = work / f"ids-{size}.parquet"
            existing_table(indexer, existing[size], codes_by_source).write(tables[size])
            print(
                f"catalogue {size:,} + {args.new:,}: {catalogues[size].stat().st_size / 1e6:.1f} MB, "
                f"ID table {tables[size].stat().st_size / 1e6:.1f} MB",
                flush=True,
            )

        # One untimed run per size: file-system caches and lazy imports, so the first timed size is not penalised.
        for size in sizes:
            time_assign(indexer, catalogues[size], tables[size], work / "warm.parquet", size, args.new)
        assign_runs: dict[int, list[float]] = {size: [] for size in sizes}
        read_runs: dict[int, list[float]] = {size: [] for size in sizes}
        drop_runs: dict[int, list[float]] = {size: [] for size in sizes}
        for rep in range(args.repeats):
            for size in sizes[rep % len(sizes) :] + sizes[: rep % len(sizes)]:
                catalogue = catalogues[size]
                if args.uncached_new_items:
                    # A mark no earlier run used, so every new text misses the embedding cache (untimed rewrite).
                    mark = f" (revision {time.time_ns()})"
                    fresh = [replace(item, text=f"{item.text}{mark}") for item in new_items]
                    catalogue = work / f"catalogue-{size}-uncached.jsonl"
                    write_jsonl(existing[size] + fresh, catalogue)
                work_ids = work / f"ids-{size}-work.parquet"
                seconds = time_assign(indexer, catalogue, tables[size], work_ids, size, args.new)
                assign_runs[size].append(seconds)
                read_runs[size].append(time_read(catalogue, size + args.new))
                # The pipeline hands the assign step only the drop's rows; the ID table is still read and rewritten.
                drop = work / f"drop-{size}.jsonl"
                write_jsonl(
                    [replace(item, text=f"{item.text} (drop {time.time_ns()})") for item in new_items]
                    if args.uncached_new_items
                    else new_items,
                    drop,
                )
                drop_runs[size].append(time_assign(indexer, drop, tables[size], work_ids, size, args.new))
                print(
                    f"rep {rep + 1}: assign, catalogue {size:>7,}: {seconds:6.2f} s "
                    f"(reading the catalogue alone: {read_runs[size][-1]:.2f} s)",
                    flush=True,
                )
        measured[ASSIGN] = summarise(assign_runs, sizes)
        measured[READ] = summarise(read_runs, sizes)
        measured[DROP] = summarise(drop_runs, sizes)

        if not args.no_publish:
            measured[PUBLISH] = measure_publish(args, sizes, indexer, existing, new_items, work)

    ratios = {name: result["ratio_largest_to_smallest"] for name, result in measured.items() if name in AIMED}
    new_embeddings = (
        "computed in every measurement (texts new to the cache)"
        if args.uncached_new_items
        else "cached before measuring (both sizes encode nothing)"
    )
    document = {
        "benchmark": "incremental_cost",
        "sizes": sizes,
        "new_items": args.new,
        "repeats": args.repeats,
        "snapshot": {
            "method": "rq-kmeans",
            "levels": args.levels,
            "codebook_size": args.codebook_size,
            "fit_items": args.fit_items,
        },
        "new_item_embeddings": new_embeddings,
        "aim": f"median cost at {sizes[-1]:,} / at {sizes[0]:,} <= 1.2",
        "ratios": ratios,
        "aim_met": {name: ratio <= 1.2 for name, ratio in ratios.items()},
        "environment": env,
        "command": " ".join(["python", *sys.argv]),
        "results": measured,
    }
    stem = args.out / ("incremental_cost-uncached" if args.uncached_new_items else "incremental_cost")
    table_md = markdown_table(measured, sizes, args.new)
    verdicts = "; ".join(
        f"{name}: {ratio:.2f} ({'met' if ratio <= 1.2 else 'not met'})" for name, ratio in ratios.items()
    )
    kind = "uncached" if args.uncached_new_items else "cached"
    title = f"{args.new:,} new items ({kind} embeddings) against catalogues of {', '.join(f'{s:,}' for s in sizes)}"
    write_results(
        stem,
        document,
        f"# Incremental cost — {title}\n\n{table_md}\n\n"
        f"Aim: ratio <= 1.2. {verdicts}. Median of {args.repeats} repetitions; the new items' embeddings were "
        f"{new_embeddings}.\n\n"
        f"![incremental cost]({stem.name}.png)\n",
    )
    plot(measured, sizes, result_file(stem, ".png"), title)
    stamp_figure(result_file(stem, ".png"))
    print(table_md)
    print(f"written: {stem}.json, .md, .png")
    return 0


def measure_publish(
    args: argparse.Namespace,
    sizes: list[int],
    indexer: Indexer,
    existing: dict[int, list[Item]],
    new_items: list[Item],
    work: Path,
) -> dict[str, Any]:
    """Incremental publish of the new documents into live indexes of each size, on one local osmem server."""
    # The new items' ID rows, as the assign above gives them (the same at every size: their codes depend only on
    # their text, and the suffixes come from the same allocation rule).
    largest = sizes[-1]
    final_ids = IdTable.read(work / f"ids-{largest}-work.parquet")
    version = indexer.version or ""
    runs: dict[int, list[float]] = {size: [] for size in sizes}
    state = work / "stack"
    stack = devstack.start(state)
    try:
        backends = {}
        for size in sizes:
            config = SearchConfig(hosts=[stack.search_url], alias=f"bench-incremental-{size}", timeout=120)
            backends[size] = SearchBackend(config)
            started = time.perf_counter()
            backends[size].publish_full(iter_documents(existing[size], final_ids), version, "base")
            print(f"full publish of {size:,} documents: {time.perf_counter() - started:.1f} s (setup)", flush=True)
        new_docs = list(iter_documents(new_items, final_ids))
        for size in sizes:
            time_publish(backends[size], new_docs)  # untimed warm-up, as for the assign
        for rep in range(args.repeats):
            for size in sizes[rep % len(sizes) :] + sizes[: rep % len(sizes)]:
                seconds = time_publish(backends[size], new_docs)
                runs[size].append(seconds)
                print(f"rep {rep + 1}: publish, index {size:>7,}: {seconds:6.2f} s", flush=True)
        for backend in backends.values():
            backend.close()
    finally:
        devstack.stop(state)
    return summarise(runs, sizes)


if __name__ == "__main__":
    sys.exit(main())
