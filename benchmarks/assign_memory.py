"""Peak memory of assigning IDs to a whole catalogue, against the size of the catalogue file and the ID table.

``lmindexer.jobs.assign_ids`` with a fitted ``rq-kmeans`` snapshot over catalogues of 10k, 25k and 50k items (every
item new, the job's worst case for memory), each in a fresh Python process so earlier work does not pollute it. The
data is prepared in a process of its own too, and the parent never imports torch: on Linux a process started by
fork + exec begins with its parent's ``ru_maxrss``, so a large parent would hide a small child's peak.

- **RSS high-water mark** (``resource.getrusage(RUSAGE_SELF).ru_maxrss``): after the imports and the snapshot load
  (which loads the frozen encoder, with a transient peak of its own), the mark is reset to the current RSS through
  ``/proc/self/clear_refs`` so that the mark read after the assign is the assign's own peak; the process's whole-life
  mark is reported too;
- **tracemalloc peak** of the assign alone, in a second fresh process (tracing slows Python down and costs memory of
  its own, so it never shares a process with the RSS figure or the timing). It counts Python objects and numpy
  buffers, not Arrow's own memory pool, whose peak is reported beside it, nor torch's.

Embeddings are pre-cached, so the figures are those of the assign path, not of the encoder. Real text comes from the
wiki-topics catalogue (10,033 items); beyond that, items are repeated with distinct ids and a copy number appended
to their text, so that every item has a distinct text as in a real catalogue. Those copies' texts were never
embedded; their cache entries hold the embedding of the text they copy, written by this script into a private cache
directory (a temporary one, deleted at the end), so the assign looks up one cached vector per item.

    python benchmarks/assign_memory.py                          # 10k, 25k, 50k items
    python benchmarks/assign_memory.py --sizes 10000 50000

Writes <out>/assign_memory.json, .md and .png.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, result_file, stamp_figure, write_results

# Only light modules at the top: the measuring processes import torch themselves (see the module docstring).
from lmindexer import datasets
from lmindexer.cache import CACHE_ENV, cache_root
from lmindexer.catalog import read_items
from lmindexer.catalog.items import Item
from lmindexer.idtable import IdTable

MB = 1e6


# -- the measured process ------------------------------------------------------------------------------------------


def max_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm_bytes() -> int | None:
    """The kernel's own high-water mark of this process's memory map (``VmHWM``), as a cross-check."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child(mode: str, snapshot: Path, catalog: Path, ids: Path) -> int:
    """Run in a fresh process: load the snapshot, then assign IDs to every item of ``catalog``; print JSON."""
    import tracemalloc

    import pyarrow as pa

    from lmindexer.indexers import load_snapshot
    from lmindexer.jobs import assign_ids

    indexer = load_snapshot(snapshot)
    gc.collect()
    load_peak = max_rss_bytes()
    # Loading the encoder peaks above what it keeps; resetting the mark (Linux >= 4.0) isolates the assign's peak.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = max_rss_bytes()
    start_hwm = vm_hwm_bytes()
    if mode == "tracemalloc":
        tracemalloc.start()
    started = time.perf_counter()
    result = assign_ids(indexer, catalog, ids, progress=False)
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "mode": mode,
        "items": result.rows_after,
        "assign_seconds": round(seconds, 3),
        "max_rss_after_load": load_peak,
        "high_water_mark_reset": reset,
        "rss_at_assign_start": start,
        "max_rss_during_assign": max_rss_bytes(),
        "vm_hwm_at_assign_start": start_hwm,
        "vm_hwm_after_assign": vm_hwm_bytes(),
        "arrow_pool_peak": pa.default_memory_pool().max_memory(),
    }
    if mode == "tracemalloc":
        report["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps(report))
    return 0


def run_child(mode: str, snapshot: Path, catalog: Path, ids: Path, cache_dir: Path) -> dict[str, Any]:
    ids.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    command += ["--snapshot", str(snapshot), "--catalog", str(catalog), "--ids", str(ids)]
    report = run_json(command, {**os.environ, CACHE_ENV: str(cache_dir)})
    # The parent must stay far below the child (see the module docstring); its mark is kept to show it did.
    report["parent_max_rss"] = max_rss_bytes()
    return report


def run_json(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a process of this script and return the JSON object on the last line of its output."""
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:4])} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# -- preparing the data --------------------------------------------------------------------------------------------


def catalogue_items(real: list[Item], count: int) -> tuple[list[Item], list[int]]:
    """``count`` items and, for each, the index of the real item it copies (copies get distinct ids and texts)."""
    items, sources = [], []
    for n in range(count):
        index = n % len(real)
        source = real[index]
        copy = n // len(real)
        if copy:
            source = Item(
                f"{source.item_id}~{copy}", source.title, f"{source.text} [{copy}]", source.category, source.attributes
            )
        items.append(source)
        sources.append(index)
    return items, sources


def item_record(item: Item) -> dict[str, Any]:
    """The JSONL row of an item, leaving out empty optional fields as catalogue files do."""
    return {key: value for key, value in item.to_dict().items() if value not in (None, {}, False)}


def write_jsonl(items: list[Item], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item_record(item), ensure_ascii=False) + "\n")


def seed_cache(indexer: Any, real: list[Item], items: list[Item], sources: list[int], path: Path) -> None:
    """Cache entries for every item's text; a copy gets the embedding of the real text it was made from."""
    from lmindexer.embeddings import EmbeddingCache

    vectors = indexer.embed(indexer.texts(real), progress=True)
    encoder = indexer.encoder
    cache = EmbeddingCache(path, encoder.dim)
    try:
        texts = indexer.texts(items)
        # The encoder's own key function, so the measured process finds these entries exactly as it finds real ones.
        entries = [(encoder._key(text), vectors[source]) for text, source in zip(texts, sources, strict=True)]
        for start in range(0, len(entries), 10_000):
            cache.put_many(entries[start : start + 10_000])
    finally:
        cache.close()


def prepare(work: Path, sizes: list[int], fit_items: int, levels: int, codebook_size: int, seed: int) -> int:
    """Run in a process of its own: fit the snapshot, seed the private cache, write the catalogues; print JSON."""
    import torch

    from lmindexer.indexers import create_indexer

    real, _ = read_items(datasets.items_path("wiki-topics", progress=False))
    print(f"fitting rq-kmeans on {fit_items} wiki items (embeddings come from the cache when warm)", file=sys.stderr)
    indexer = create_indexer("rq-kmeans", {"levels": levels, "codebook_size": codebook_size, "seed": seed})
    indexer.fit(random.Random(seed).sample(real, fit_items), progress=True)
    indexer.save(work / "snapshot")
    largest, sources = catalogue_items(real, max(sizes))
    print(f"caching embeddings for {len(largest):,} distinct texts in a private cache", file=sys.stderr)
    seed_cache(indexer, real, largest, sources, work / "cache" / "embeddings.sqlite")
    for size in sizes:
        write_jsonl(largest[:size], work / f"catalogue-{size}.jsonl")
    print(json.dumps({"torch": torch.__version__, "torch_threads": torch.get_num_threads()}))
    return 0


# -- reporting -----------------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| items | catalogue file MB | ID table file MB | ID table in memory MB | RSS at assign start MB | "
        "RSS peak during assign MB | added by assign MB (min–max) | tracemalloc peak MB | Arrow pool peak MB | "
        "process RSS peak MB | assign s |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        lines.append(
            f"| {r['items']:,} | {r['catalogue_file_bytes'] / MB:.1f} | {r['id_table_file_bytes'] / MB:.2f} | "
            f"{r['id_table_memory_bytes'] / MB:.1f} | {r['rss_at_assign_start'] / MB:.0f} | "
            f"{r['max_rss_during_assign'] / MB:.0f} | {r['rss_added_by_assign'] / MB:.0f} "
            f"({r['rss_added_by_assign_min_max'][0] / MB:.0f}–{r['rss_added_by_assign_min_max'][1] / MB:.0f}) | "
            f"{r['tracemalloc_peak'] / MB:.1f} | {r['arrow_pool_peak'] / MB:.1f} | {r['process_max_rss'] / MB:.0f} | "
            f"{r['assign_seconds']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, (ax_bars, ax_scale) = plt.subplots(1, 2, figsize=(12, 4.4))
    measures = [
        ("catalogue file", "catalogue_file_bytes", "#999"),
        ("ID table file", "id_table_file_bytes", "#bbb"),
        ("RSS added by assign", "rss_added_by_assign", "#a55"),
        ("tracemalloc peak", "tracemalloc_peak", "#58a"),
    ]
    width = 0.8 / len(measures)
    for i, (label, key, colour) in enumerate(measures):
        xs = [n + i * width - 0.4 + width / 2 for n in range(len(rows))]
        ax_bars.bar(xs, [r[key] / MB for r in rows], width, label=label, color=colour)
    ax_bars.set_xticks(range(len(rows)), [f"{r['items']:,} items" for r in rows])
    ax_bars.set_ylabel("MB")
    ax_bars.set_title("Assign memory against the data it reads")
    ax_bars.legend(fontsize=8)
    items = [r["items"] for r in rows]
    ax_scale.plot(items, [r["max_rss_during_assign"] / MB for r in rows], "o-", color="#a55", label="peak in assign")
    ax_scale.plot(items, [r["rss_at_assign_start"] / MB for r in rows], "o--", color="#777", label="at assign start")
    # Drawn last and hollow: it coincides with the assign's peak whenever the encoder load peaked lower.
    ax_scale.plot(
        items, [r["process_max_rss"] / MB for r in rows], "s:", color="#333", mfc="none", ms=9, label="process peak"
    )
    ax_scale.set_xticks(items, [f"{i:,}" for i in items])
    ax_scale.set_xlabel("items in the catalogue")
    ax_scale.set_ylabel("MB")
    ax_scale.set_ylim(bottom=0)
    ax_scale.set_title("Process RSS (imports + snapshot with encoder + assign)")
    ax_scale.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000], help="catalogue sizes")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per size for RSS (median kept)")
    parser.add_argument("--fit-items", type=int, default=2_000, help="wiki items the snapshot is fitted on")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    # The measured process is this script again, started fresh by the parent.
    parser.add_argument("--child", choices=["rss", "tracemalloc"], help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.snapshot, args.catalog, args.ids)
    sizes = sorted(args.sizes)
    if args.prepare:
        return prepare(args.prepare, sizes, args.fit_items, args.levels, args.codebook_size, args.seed)

    # The harness's environment() imports torch, which the parent must not do before the measuring processes have
    # run (see the module docstring): it is called at the end, with the load average taken here.
    load_average_at_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmindexer-bench-") as tmp:
        work = Path(tmp)
        command = [sys.executable, str(Path(__file__).resolve()), "--prepare", str(work), "--sizes", *map(str, sizes)]
        command += ["--fit-items", str(args.fit_items), "--levels", str(args.levels)]
        command += ["--codebook-size", str(args.codebook_size), "--seed", str(args.seed)]
        print("preparing the snapshot, the private embedding cache and the catalogues", flush=True)
        prepared = run_json(command, dict(os.environ))
        private_cache = work / "cache"

        for size in sizes:
            catalogue = work / f"catalogue-{size}.jsonl"
            ids = work / f"ids-{size}.parquet"
            # Several fresh processes, the median kept: page-cache and allocator effects move RSS by a few MB.
            measured = [run_child("rss", work / "snapshot", catalogue, ids, private_cache) for _ in range(args.repeats)]
            traced = run_child("tracemalloc", work / "snapshot", catalogue, work / "traced.parquet", private_cache)
            if any(m["items"] != size for m in [*measured, traced]):
                raise RuntimeError(f"expected {size} rows in every measuring process")
            added = [m["max_rss_during_assign"] - m["rss_at_assign_start"] for m in measured]
            row = {
                "items": size,
                "catalogue_file_bytes": catalogue.stat().st_size,
                "id_table_file_bytes": ids.stat().st_size,
                "id_table_memory_bytes": IdTable.read(ids).table.nbytes,
                "assign_seconds": statistics.median(m["assign_seconds"] for m in measured),
                "high_water_mark_reset": all(m["high_water_mark_reset"] for m in measured),
                "rss_at_assign_start": int(statistics.median(m["rss_at_assign_start"] for m in measured)),
                "max_rss_during_assign": int(statistics.median(m["max_rss_during_assign"] for m in measured)),
                "rss_added_by_assign": int(statistics.median(added)),
                "rss_added_by_assign_min_max": [min(added), max(added)],
                "process_max_rss": int(
                    statistics.median(max(m["max_rss_after_load"], m["max_rss_during_assign"]) for m in measured)
                ),
                "tracemalloc_peak": traced["tracemalloc_peak"],
                "arrow_pool_peak": traced["arrow_pool_peak"],
                "assign_seconds_traced": traced["assign_seconds"],
                "processes": [*measured, traced],
            }
            rows.append(row)
            print(
                f"{size:>7,} items: RSS {row['rss_at_assign_start'] / MB:.0f} -> "
                f"{row['max_rss_during_assign'] / MB:.0f} MB, tracemalloc peak {row['tracemalloc_peak'] / MB:.1f} MB, "
                f"catalogue {row['catalogue_file_bytes'] / MB:.1f} MB, assign {row['assign_seconds']:.2f} s",
                flush=True,
            )

    env = {
        **environment(),
        "load_average_at_start": load_average_at_start,
        "embedding_cache_source": str(cache_root()),
        **prepared,
    }
    document = {
        "benchmark": "assign_memory",
        "sizes": sizes,
        "snapshot": {
            "method": "rq-kmeans",
            "levels": args.levels,
            "codebook_size": args.codebook_size,
            "fit_items": args.fit_items,
        },
        "embeddings": "pre-cached (private cache seeded from the real wiki embeddings)",
        "units": "bytes",
        "environment": env,
        "command": " ".join(["python", *sys.argv]),
        "results": rows,
    }
    stem = args.out / "assign_memory"
    table = markdown_table(rows)
    title = f"assign_ids over {', '.join(f'{s:,}' for s in sizes)} items (rq-kmeans, embeddings cached)"
    write_results(
        stem,
        document,
        f"# Assign memory — {title}\n\n{table}\n\n"
        f"MB = 10^6 bytes. RSS figures are medians over {args.repeats} fresh processes of `ru_maxrss` high-water "
        "marks; at the assign's start a process holds the imports and the snapshot with its frozen encoder, and the "
        "mark is reset there (process RSS peak is the whole-life mark, including the encoder load's transient peak). "
        "The tracemalloc peak (Python objects and numpy buffers) was taken in one more fresh process.\n\n"
        f"![assign memory]({stem.name}.png)\n",
    )
    plot(rows, result_file(stem, ".png"), title)
    stamp_figure(result_file(stem, ".png"))
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
