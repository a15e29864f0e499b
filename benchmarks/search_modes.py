"""Latency and throughput of each ``GET /search`` mode of ``lmindexer serve`` against a real local search engine.

Sets up, untimed: the local stack's search server (osmem, in memory), the data set's catalogue published behind an
alias with the ID table ``benchmarks/downstream.py`` made, and a dense index of the catalogue (``lmindexer dense
build``'s code; embeddings from the cache). Then starts one ``lmindexer serve --retriever ... --dense ... --search``
(the retriever downstream.py trained on those IDs, default settings) and, for each mode, sends every held-out query
once with locust (headless, ``FastHttpUser``, no think time) from 1 and from 8 concurrent users, ``--repeats``
times with the modes in a rotated order each time (so that load and warm-up spread over all of them; medians
are compared):

- ``generative``: the retriever's beam alone (no engine request): the baseline of the same run;
- ``dense``: one query embedding, exact cosine search and one engine request (which results are live);
- ``prefix-boost``: the beam, then two engine requests (the text search's best score, the boosted query);
- ``rrf``: the beam, the engine's text search and one request for which beam results are live;
- ``hybrid``: the beam, the two prefix-boost requests, a query embedding and one liveness request.

The engine here is the local in-memory stand-in on the same 2 cores as the server and locust, so the figures are
the serving process's own costs plus loopback engine calls, not a production cluster's. Quality is measured by
``benchmarks/downstream.py``.

    python benchmarks/downstream.py --dataset clothing-reviews     # once: the IDs and the retriever served here
    python benchmarks/search_modes.py --dataset clothing-reviews

Writes <out>/search_modes-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import environment, markdown_table, medians_over_passes, result_file, stamp_figure, write_results
from serving import add_load_options, free_port, locust_run, wait_until_up

from lmindexer import datasets, devstack
from lmindexer.cache import cache_root
from lmindexer.catalog import read_items
from lmindexer.downstream.dense import DenseIndex
from lmindexer.downstream.jobs import read_queries
from lmindexer.idtable import IdTable
from lmindexer.search import SearchBackend, SearchConfig, iter_documents

MODES = ["generative", "dense", "prefix-boost", "rrf", "hybrid"]
BASELINE = "generative"
ALIAS = "bench-search-modes"


def publish_catalogue(search_url: str, catalogue: Path, ids: IdTable) -> int:
    items, _ = read_items(catalogue)
    with SearchBackend(SearchConfig(hosts=[search_url], alias=ALIAS, timeout=120)) as backend:
        result = backend.publish_full(iter_documents(items, ids), ids.space.snapshot_version, "bench")
    return result.doc_count


def serve_and_load(args, command: list[str], queries_file: Path, work: Path) -> list[dict]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    rows = []
    with open(work / "server.log", "w") as server_log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=server_log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        try:
            wait_until_up(base, process)
            for repeat in range(args.repeats):
                shift = repeat % len(args.modes)
                for mode in args.modes[shift:] + args.modes[:shift]:
                    # Warm-up: the first request of each input shape allocates (and in bf16 builds its kernels).
                    for n in range(1, 65, 7):
                        query = " ".join(["warm"] * n)
                        params = {"q": query, "k": args.k, "mode": mode}
                        httpx.get(f"{base}/search", params=params, timeout=60).raise_for_status()
                    for users in args.users:
                        measured = locust_run(base, queries_file, users, args.k, args.max_run_time, work, mode)
                        row = {"mode": mode, "repeat": repeat, **measured}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return rows


def plot(rows: list[dict], modes: list[str], users: list[int], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(users)
    for n, count in enumerate(users):
        found = {r["mode"]: r for r in rows if r["users"] == count}
        xs = [i + (n - (len(users) - 1) / 2) * width for i in range(len(modes))]
        left.bar(xs, [found[m]["requests_per_s"] if m in found else 0 for m in modes], width, label=f"{count} users")
        right.bar(xs, [found[m]["p50_ms"] if m in found else 0 for m in modes], width, label=f"{count} users")
    for axis, label in ((left, "requests/s"), (right, "p50 latency (ms)")):
        axis.set_xticks(range(len(modes)), modes, fontsize=9)
        axis.set_ylabel(label)
        axis.legend()
    fig.suptitle("lmindexer serve, GET /search by mode (median of passes), local engine on loopback (locust)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clothing-reviews", choices=["wiki-topics", "clothing-reviews"])
    parser.add_argument("--ids", default="rq-kmeans", help="which of downstream's ID tables and retrievers")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the modes, each in a rotated order")
    add_load_options(parser)
    args = parser.parse_args()

    work_dir = cache_root() / "benchmarks" / "downstream" / args.dataset
    model_dir, ids_path = work_dir / f"model-{args.ids}", work_dir / f"ids-{args.ids}.parquet"
    if not (model_dir / "generative.json").is_file() or not ids_path.is_file():
        raise SystemExit(f"no retriever or ID table under {work_dir}: run `python benchmarks/downstream.py` first")
    env = environment(extra_packages=["locust", "uvicorn", "fastapi", "osmem-server", "faiss-cpu"])
    data = datasets.fetch(args.dataset, progress=False)
    queries = [query for query, _ in read_queries(data / "queries-test.jsonl")][: args.limit_queries]
    config = json.loads((model_dir / "generative.json").read_text())["config"]

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="search-modes-bench-") as scratch:
        work = Path(scratch)
        stack = devstack.start(work / "stack")
        try:
            documents = publish_catalogue(stack.search_url, data / "items.jsonl", IdTable.read(ids_path))
            dense_dir = DenseIndex.build(read_items(data / "items.jsonl")[0]).save(work / "dense")
            queries_file = work / "queries.json"
            queries_file.write_text(json.dumps(queries))
            command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(model_dir), "--dense",
                       str(dense_dir), "--search", "--url", stack.search_url, "--alias", ALIAS]  # fmt: skip
            rows = serve_and_load(args, command, queries_file, work)
        finally:
            devstack.stop(work / "stack")

    summary = medians_over_passes(rows, "mode", args.modes, args.users, spread="p50_ms", count_field="repeats")
    baseline = {r["users"]: r for r in summary if r["mode"] == BASELINE}
    for row in summary:
        base = baseline.get(row["users"])
        row["p50_vs_generative"] = round(row["p50_ms"] / base["p50_ms"], 2) if base else None
    stem = args.out / f"search_modes-{args.dataset}"
    document = {
        "benchmark": "search_modes",
        "dataset": args.dataset,
        "ids": args.ids,
        "model": str(model_dir),
        "beam_size": config["beam_size"],
        "documents": documents,
        "k": args.k,
        "queries": len(queries),
        "repeats": args.repeats,
        "results": summary,
        "runs": rows,
        "environment": env,
    }
    header = ["mode", "users", "requests", "failures", "p50 ms", "p50 range", "p99 ms", "req/s", "p50 vs generative"]
    keys = ["mode", "users", "requests", "failures", "p50_ms", "p50_ms_range", "p99_ms", "requests_per_s",
            "p50_vs_generative"]  # fmt: skip
    table = markdown_table(header, [[r[key] for key in keys] for r in summary])
    write_results(
        stem,
        document,
        f"# Serving: GET /search by mode, local engine on loopback, locust\n\n{table}\n\n"
        f"Medians over {args.repeats} passes, the modes in a rotated order in each; "
        f"{len(queries)} held-out queries per setting and pass, {documents} documents behind the alias, beam size "
        f"{config['beam_size']}, k={args.k}, {os.cpu_count()} CPUs shared by the server, the local engine and "
        f"locust.\n\n![throughput and latency]({stem.name}.png)\n",
    )
    plot(summary, args.modes, args.users, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
