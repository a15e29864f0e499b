"""Publish throughput of the search backend against a raw ``_bulk`` floor, side by side on one local search server.

Three ways of loading the same N documents, in the same chunks, into a fresh index of the same local osmem server
(started with ``lmindexer.devstack`` and stopped at the end):

- ``raw _bulk``: NDJSON payloads serialised before the clock starts, POSTed one chunk at a time over one keep-alive
  ``http.client`` connection, then one refresh. The floor: what the server itself costs.
- ``client streaming_bulk``: opensearch-py's ``helpers.streaming_bulk`` over pre-built documents, then one refresh.
  Separates the official client's cost (serialising, chunking, parsing responses) from the platform's own.
- ``platform publish_full``: ``SearchBackend.publish_full(iter_documents(items, ids), ...)`` as a real publish runs
  it: documents built from catalogue items and an ID table, the index template, index creation, the bulk load with
  per-document accounting, refresh, count and sample check, the atomic alias swap and pruning.

Item text comes from the real wiki-topics catalogue (cycled, with distinct ids, when N exceeds it); the ID rows are
synthetic (seeded random codes, suffixes allocated by the ID table). The variants run in a rotating order within each
repetition so drift on a shared machine spreads over all of them; the medians are compared.

    python benchmarks/publish_throughput.py                          # 20,000 documents, 3 repetitions
    python benchmarks/publish_throughput.py --docs 5000 --repeats 3   # quick run

Writes <out>/publish_throughput.json, .md and .png.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, result_file, stamp_figure, write_results

from lmindexer import datasets, devstack
from lmindexer.catalog import read_items
from lmindexer.catalog.items import Item
from lmindexer.idtable import Candidate, IdSpace, IdTable
from lmindexer.search import SearchBackend, SearchConfig, document_mapping, iter_documents
from lmindexer.search.documents import id_rows

RAW = "raw _bulk"
CLIENT = "client streaming_bulk"
PLATFORM = "platform publish_full"
VARIANTS = (RAW, CLIENT, PLATFORM)
SNAPSHOT_VERSION = "bench-publish-v1"
ALIAS = "bench-publish"
# Versions recorded beside the harness's own list: the search client, its HTTP library and the server.
PACKAGES = ("opensearch-py", "osmem-server", "urllib3")


def synthetic_catalogue(count: int, seed: int, levels: int, codebook_size: int) -> tuple[list[Item], IdTable]:
    """``count`` real wiki items (cycled with distinct ids past the catalogue's end) and an ID table for them."""
    real, _ = read_items(datasets.items_path("wiki-topics", progress=False))
    items = []
    for n in range(count):
        source = real[n % len(real)]
        copy = n // len(real)
        item_id = source.item_id if copy == 0 else f"{source.item_id}~{copy}"
        items.append(Item(item_id, source.title, source.text, source.category, source.attributes, source.updated_at))
    # Random codes are enough here: publishing cost does not depend on which codes an item has.
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, size=(count, levels))
    space = IdSpace(SNAPSHOT_VERSION, "rq-kmeans", (codebook_size,) * levels)
    candidates = [
        Candidate(item.item_id, tuple(int(c) for c in row), f"h{n}")
        for n, (item, row) in enumerate(zip(items, codes, strict=True))
    ]
    table, _ = IdTable.empty(space).allocate(candidates)
    return items, table


def ndjson_payloads(docs: list[dict[str, Any]], chunk_size: int) -> list[bytes]:
    """The bulk bodies of ``docs``, ``chunk_size`` documents each, index names left to the URL."""
    payloads = []
    for start in range(0, len(docs), chunk_size):
        lines = []
        for doc in docs[start : start + chunk_size]:
            lines.append(json.dumps({"index": {"_id": doc["item_id"]}}, separators=(",", ":")))
            lines.append(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
        payloads.append(("\n".join(lines) + "\n").encode())
    return payloads


class RawBulk:
    """Plain HTTP against the server: one keep-alive connection, no client library."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        headers = {"Content-Type": content_type} if body is not None else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        self.connection.close()


class Clock:
    """Wall time, and this process's CPU time: the client side's own work (the server is another process)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def time_raw(url: str, payloads: list[bytes], index: str, expected: int) -> Clock:
    # A new connection per measurement (opened before the clock starts): the server closes idle keep-alive
    # connections while the other variants run.
    raw = RawBulk(url)
    try:
        body = json.dumps({"settings": {"index": {"refresh_interval": "-1"}}, "mappings": document_mapping()})
        raw.request("PUT", f"/{index}", body.encode())
        with Clock() as clock:
            for payload in payloads:
                answer = raw.request("POST", f"/{index}/_bulk", payload, "application/x-ndjson")
                if answer.get("errors"):
                    raise RuntimeError(f"raw bulk into {index} reported item errors")
            raw.request("POST", f"/{index}/_refresh", b"")
        count = raw.request("GET", f"/{index}/_count")["count"]
        raw.request("DELETE", f"/{index}")
    finally:
        raw.close()
    if count != expected:
        raise RuntimeError(f"raw bulk: {index} holds {count} documents, expected {expected}")
    return clock


def time_client(backend: SearchBackend, docs: list[dict[str, Any]], index: str, chunk_size: int) -> Clock:
    from opensearchpy.helpers import streaming_bulk

    client = backend.client
    client.indices.create(
        index=index, body={"settings": {"index": {"refresh_interval": "-1"}}, "mappings": document_mapping()}
    )
    actions = ({"_op_type": "index", "_index": index, "_id": doc["item_id"], "_source": doc} for doc in docs)
    with Clock() as clock:
        ok_count = sum(ok for ok, _ in streaming_bulk(client, actions, chunk_size=chunk_size, raise_on_error=False))
        client.indices.refresh(index=index)
    client.indices.delete(index=index)
    if ok_count != len(docs):
        raise RuntimeError(f"client streaming_bulk: {len(docs) - ok_count} documents failed")
    return clock


def time_platform(backend: SearchBackend, items: list[Item], rows: Any, run_id: str, expected: int) -> Clock:
    with Clock() as clock:
        result = backend.publish_full(iter_documents(items, rows), SNAPSHOT_VERSION, run_id, total=len(items))
    if result.doc_count != expected or result.bulk.failed:
        raise RuntimeError(f"platform publish: {result.bulk.summary()}, {result.doc_count} documents live")
    return clock


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| variant | median docs/s | min–max docs/s | median s | ratio to raw _bulk | client CPU s (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        row = summary[name]
        lines.append(
            f"| {name} | {row['median_docs_per_second']:,.0f} | {row['min_docs_per_second']:,.0f}–"
            f"{row['max_docs_per_second']:,.0f} | {row['median_seconds']:.2f} | {row['ratio_to_raw']:.2f}x | "
            f"{row['median_client_cpu_seconds']:.2f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], runs: dict[str, list[float]], docs: int, path: Path, title: str) -> None:
    fig, (ax_rate, ax_runs) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colours = {RAW: "#777", CLIENT: "#58a", PLATFORM: "#a55"}
    medians = [summary[name]["median_docs_per_second"] for name in VARIANTS]
    low = [m - summary[name]["min_docs_per_second"] for m, name in zip(medians, VARIANTS, strict=True)]
    high = [summary[name]["max_docs_per_second"] - m for m, name in zip(medians, VARIANTS, strict=True)]
    bars = ax_rate.bar(VARIANTS, medians, yerr=[low, high], capsize=6, color=[colours[n] for n in VARIANTS])
    for bar, name in zip(bars, VARIANTS, strict=True):
        # Inside the bar, clear of the error bar.
        ax_rate.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() / 2,
            f"{summary[name]['ratio_to_raw']:.2f}x",
            ha="center",
            color="white",
            fontsize=12,
            fontweight="bold",
        )
    ax_rate.set_ylabel("documents per second (median, min–max)")
    ax_rate.set_title("Throughput, and ratio to the raw _bulk floor")
    for name in VARIANTS:
        rates = [docs / s for s in runs[name]]
        ax_runs.plot(range(1, len(rates) + 1), rates, "o-", color=colours[name], label=name)
    ax_runs.set_xticks(range(1, len(runs[RAW]) + 1))
    ax_runs.set_xlabel("repetition")
    ax_runs.set_ylabel("documents per second")
    ax_runs.set_title("Every repetition")
    ax_runs.set_ylim(bottom=0)
    ax_runs.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="documents per publish")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each variant (median reported)")
    parser.add_argument("--chunk-size", type=int, default=500, help="documents per bulk request (all variants)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    # The harness's environment() imports torch, which this benchmark never uses: it is called after the measurements,
    # so that torch's objects do not add to the garbage collector's work in the measured client CPU time, with the
    # load average taken here.
    load_average_at_start = [round(x, 2) for x in os.getloadavg()]
    print(f"building {args.docs} items and their ID table", flush=True)
    items, table = synthetic_catalogue(args.docs, args.seed, args.levels, args.codebook_size)
    # The raw and client variants get the very documents the platform builds, serialised before the clock starts.
    docs = list(iter_documents(items, table))
    payloads = ndjson_payloads(docs, args.chunk_size)
    payload_bytes = sum(len(p) for p in payloads)
    # publish_full receives the ID table as the pipeline hands it over: rows by item_id, read once.
    rows = id_rows(table)

    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="lmindexer-bench-") as state:
        stack = devstack.start(state)
        try:
            config = SearchConfig(
                hosts=[stack.search_url], alias=ALIAS, chunk_size=args.chunk_size, keep_indexes=1, timeout=120
            )
            with SearchBackend(config) as backend:
                info = backend.server_info()
                version = info.get("version", {})
                # osmem-server answers as the engine it imitates; its own version is among the package versions.
                search_server_reports = f"{version.get('distribution', '')} {version.get('number', '')}".strip()
                # One untimed round of each variant: connections, template and server warm-up.
                time_raw(stack.search_url, payloads[:2], "raw-warmup", min(len(docs), 2 * args.chunk_size))
                time_client(backend, docs[: args.chunk_size], "client-warmup", args.chunk_size)
                time_platform(backend, items[: args.chunk_size], rows, "warmup", min(len(docs), args.chunk_size))
                for rep in range(args.repeats):
                    order = VARIANTS[rep % 3 :] + VARIANTS[: rep % 3]
                    for name in order:
                        if name == RAW:
                            clock = time_raw(stack.search_url, payloads, f"raw-{rep}", len(docs))
                        elif name == CLIENT:
                            clock = time_client(backend, docs, f"client-{rep}", args.chunk_size)
                        else:
                            clock = time_platform(backend, items, rows, f"run-{rep}", len(docs))
                        runs[name].append(clock.wall)
                        cpu[name].append(clock.cpu)
                        print(
                            f"rep {rep + 1}: {name:24s} {clock.wall:6.2f} s  {len(docs) / clock.wall:8,.0f} docs/s  "
                            f"(client CPU {clock.cpu:5.2f} s)",
                            flush=True,
                        )
        finally:
            devstack.stop(state)
    env = {
        **environment(PACKAGES),
        "load_average_at_start": load_average_at_start,
        "search_server_reports": search_server_reports,
    }

    raw_median = statistics.median(runs[RAW])
    summary = {}
    for name in VARIANTS:
        median = statistics.median(runs[name])
        summary[name] = {
            "median_seconds": round(median, 3),
            "median_docs_per_second": round(len(docs) / median, 1),
            "min_docs_per_second": round(len(docs) / max(runs[name]), 1),
            "max_docs_per_second": round(len(docs) / min(runs[name]), 1),
            "ratio_to_raw": round(raw_median / median, 3),
            "seconds": [round(s, 3) for s in runs[name]],
            "median_client_cpu_seconds": round(statistics.median(cpu[name]), 3),
            "client_cpu_seconds": [round(s, 3) for s in cpu[name]],
        }
    ratio = summary[PLATFORM]["ratio_to_raw"]
    document = {
        "benchmark": "publish_throughput",
        "documents": len(docs),
        "chunk_size": args.chunk_size,
        "payload_bytes": payload_bytes,
        "repeats": args.repeats,
        "aim": "platform publish_full >= 0.8x the raw _bulk throughput",
        "platform_ratio_to_raw": ratio,
        # Documents per second of client CPU: where the platform would cap out against an engine faster than this one.
        "platform_docs_per_client_cpu_second": round(
            len(docs) / max(summary[PLATFORM]["median_client_cpu_seconds"], 1e-9)
        ),
        "aim_met": ratio >= 0.8,
        "environment": env,
        "command": " ".join(["python", *sys.argv]),
        "results": summary,
    }
    stem = args.out / "publish_throughput"
    table_md = markdown_table(summary)
    title = f"Publishing {len(docs):,} documents to a local osmem server, chunks of {args.chunk_size}"
    write_results(
        stem,
        document,
        f"# Publish throughput — {title}\n\n{table_md}\n\n"
        f"Platform / raw: {ratio:.2f}x (aim >= 0.8x: {'met' if document['aim_met'] else 'not met'}). "
        f"Median of {args.repeats} repetitions; {payload_bytes / 1e6:.1f} MB of NDJSON per publish. The platform's "
        f"client side used {summary[PLATFORM]['median_client_cpu_seconds']:.2f} s of CPU per publish "
        f"({document['platform_docs_per_client_cpu_second']:,} documents per CPU second); the rest is the server. "
        f"{env['cpu_threads_available']} CPU threads shared by client and server.\n\n"
        f"![throughput]({stem.name}.png)\n",
    )
    plot(summary, runs, len(docs), result_file(stem, ".png"), title)
    stamp_figure(result_file(stem, ".png"))
    print(table_md)
    print(f"platform / raw: {ratio:.2f}x")
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
