"""Serving latency and throughput of ``lmindexer serve`` under a bounded local load, on loopback.

Starts the real server (``lmindexer serve`` with uvicorn, one process) on a free port with the generative retriever
that ``benchmarks/downstream.py`` trained on the data set, then sends its held-out queries to
``GET /search`` from 1 and from 4 concurrent clients, a fixed number of requests each. In the same run, as baselines:
``GET /health`` (the HTTP and framework floor) and the same queries through ``GenerativeModel.search`` in process,
one at a time (the model's own cost, without HTTP).

    python benchmarks/downstream.py --dataset clothing-reviews     # once: trains and saves the models served here
    python benchmarks/serving.py --dataset clothing-reviews        # 300 requests per setting
    python benchmarks/serving.py --requests 1000 --concurrency 1 4 8

Writes <out>/serving-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, markdown_table, write_results

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.jobs import read_queries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise(name: str, latencies: list[float], wall: float, concurrency: int, errors: int) -> dict:
    return {
        "name": name,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "mean_ms": round(1000 * statistics.fmean(latencies), 2),
        "requests_per_s": round(len(latencies) / wall, 2),
    }


def load(base: str, paths: list[str], concurrency: int) -> tuple[list[float], float, int]:
    """Each of ``concurrency`` clients sends its share of ``paths`` back to back; latencies of every request."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(share: list[str]) -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=60) as http:
            for path in share:
                started = time.perf_counter()
                response = http.get(path)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += response.status_code != 200

    shares = [paths[n::concurrency] for n in range(concurrency)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors


def wait_until_up(base: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not answer /health in time")


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = [f"{r['name']}\nc={r['concurrency']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], 0.4, label="p50 ms")
    ax.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], 0.4, label="p99 ms")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("lmindexer serve on loopback")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="wiki-topics", choices=["wiki-topics", "clothing-reviews"])
    parser.add_argument("--ids", default="lmindexer", help="which of downstream's retrievers: its ID method")
    parser.add_argument("--model", type=Path, default=None, help="retriever directory (default: downstream's)")
    parser.add_argument("--requests", type=int, default=300, help="requests per setting")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    model_dir = args.model or cache_root() / "benchmarks" / "downstream" / args.dataset / f"model-{args.ids}"
    if not (model_dir / "generative.json").is_file():
        raise SystemExit(f"no retriever at {model_dir}: run `python benchmarks/downstream.py` first or give --model")
    env = environment()
    data = datasets.fetch(args.dataset, progress=False)
    queries = [query for query, _ in read_queries(data / "queries-test.jsonl")]
    queries = (queries * (1 + args.requests // len(queries)))[: args.requests]

    # The in-process baseline: the model alone, one query at a time.
    model = GenerativeModel.load(model_dir, device="cpu")
    model.search(queries[:5], args.k)  # warm-up
    in_process = []
    started = time.perf_counter()
    for query in queries:
        began = time.perf_counter()
        model.search([query], args.k)
        in_process.append(time.perf_counter() - began)
    rows = [summarise("model.search in process", in_process, time.perf_counter() - started, 1, 0)]
    del model

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(model_dir), "--port", str(port)]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "serving-server.log"
    with open(log, "w") as server_log:
        process = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            wait_until_up(base, process)
            search_paths = [f"/search?q={quote(q)}&k={args.k}" for q in queries]
            load(base, search_paths[:5], 1)  # warm-up
            for concurrency in args.concurrency:
                latencies, wall, errors = load(base, ["/health"] * args.requests, concurrency)
                rows.append(summarise("GET /health", latencies, wall, concurrency, errors))
                latencies, wall, errors = load(base, search_paths, concurrency)
                rows.append(summarise("GET /search", latencies, wall, concurrency, errors))
                print(rows[-2], rows[-1], flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    log.unlink(missing_ok=True)

    stem = args.out / f"serving-{args.dataset}"
    document = {
        "dataset": args.dataset,
        "model": str(model_dir),
        "beam_size": json.loads((model_dir / "generative.json").read_text())["config"]["beam_size"],
        "k": args.k,
        "results": rows,
        "environment": env,
        "command": " ".join(["python", *sys.argv]),
    }
    header = ["endpoint", "concurrency", "requests", "errors", "p50 ms", "p99 ms", "req/s"]
    keys = ["name", "concurrency", "requests", "errors", "p50_ms", "p99_ms", "requests_per_s"]
    table = markdown_table(header, [[r[key] for key in keys] for r in rows])
    write_results(
        stem,
        document,
        f"# Serving — /search on loopback\n\n{table}\n\n"
        f"Beam size {document['beam_size']}, k={args.k}, {os.cpu_count()} CPUs.\n\n![latency]({stem.name}.png)\n",
    )
    plot(rows, stem.with_suffix(".png"))
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
