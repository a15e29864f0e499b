"""Serving throughput and latency of ``lmindexer serve`` under a bounded locust load on loopback.

Starts the real server (``lmindexer serve`` with uvicorn, one process) on a free port with the generative retriever
that ``benchmarks/downstream.py`` trained on the data set, in five configurations, one after another:

- ``one at a time, fp32``: batching off (``--batch-max-size 1``) and float32 decoding: the server as it was before
  batched decoding and bf16, the baseline of the same run;
- ``one at a time, bf16`` and ``batched, fp32``: each change alone;
- ``batched, bf16``: batching and bf16 forced;
- ``batched, one process per core``: the defaults in ``--workers`` processes, one per core (one torch thread each).

The server's defaults (``--batch-max-size 16 --batch-max-wait-ms 5 --precision auto``) are ``batched, bf16`` on a
CPU that computes bf16 natively (AVX-512 BF16 or AMX) and ``batched, fp32`` on one that would emulate it: the aim is
checked on the row of the defaults as this machine resolves them (``default_precision`` in the JSON) and on the
per-core row.

For each, locust (headless, ``FastHttpUser``, no think time) sends every held-out query once to ``GET /search``
from 1 and from 8 concurrent users (``--users``), and the run ends when the last query is answered (bounded by
``--max-run-time`` too). All of it runs ``--repeats`` times (3), the configurations in an order rotated by one in each
pass, so that a host whose speed drifts during the run weighs on every configuration alike: the figures are medians
over the passes, and each speedup is taken within a pass, then its median reported. Locust runs on the same machine
and takes some of its cores: the load average is recorded.

With ``--earlier-tree`` (a checkout of an earlier commit) and ``--earlier-model`` (a retriever that commit's code
trained and loads), the earlier server runs as one more row, one request at a time in fp32: the server before this
work, measured in the same run, which is what the aim (4x its requests/s) is about. The same-run row ``one at a time,
fp32`` already has the faster beam search (incremental decoding), so it is the stricter baseline.

    python benchmarks/downstream.py --dataset clothing-reviews     # once: trains and saves the models served here
    python benchmarks/serving.py --dataset clothing-reviews
    # with the server of commit fe12518 as a row (its retriever trained by that commit's downstream.py):
    python benchmarks/serving.py --dataset clothing-reviews --earlier-tree /tmp/earlier \
        --earlier-model /tmp/earlier-cache/benchmarks/downstream/clothing-reviews/model-lmindexer

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
import tempfile
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, markdown_table, medians_over_passes, result_file, stamp_figure, write_results

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.downstream.jobs import read_queries
from lmindexer.precision import resolve_precision
from lmindexer.threads import available_cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PER_CORE = "batched, one process per core"
CONFIGURATIONS = [
    # (name, serve options)
    ("one at a time, fp32", ["--batch-max-size", "1", "--precision", "fp32"]),
    ("one at a time, bf16", ["--batch-max-size", "1", "--precision", "bf16"]),
    ("batched, fp32", ["--precision", "fp32"]),
    ("batched, bf16", ["--precision", "bf16"]),
    # The defaults (precision auto) in one worker process per core, one torch thread each.
    (PER_CORE, ["--workers", str(available_cores())]),
]
BASELINE = CONFIGURATIONS[0][0]
# The server as it was before batching, bf16 and incremental decoding, where --earlier-tree gives its checkout.
EARLIER = "earlier server, one at a time, fp32"
EARLIER_OPTIONS = ["--batch-max-size", "1", "--precision", "fp32"]
AIM_SPEEDUP, AIM_P99_MS, AIM_USERS = 4.0, 300.0, 8


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The locust load options every serving benchmark takes, with the same names and defaults."""
    parser.add_argument("--users", type=int, nargs="+", default=[1, AIM_USERS], help="concurrent locust users")
    parser.add_argument("--limit-queries", type=int, default=None, help="send only the first N held-out queries")
    parser.add_argument("--max-run-time", default="15m", help="locust's bound on one setting's run")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def locust_run(
    base: str, queries_file: Path, users: int, k: int, max_run_time: str, work: Path, mode: str | None = None
) -> dict:
    """One headless locust run (``GET /search``, with ``mode`` when given); figures from every request's latency,
    recorded by the locustfile."""
    results = work / f"locust-{users}.json"
    results.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
        "--users", str(users), "--spawn-rate", str(users), "--host", base, "--run-time", max_run_time,
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30",
    ]  # fmt: skip
    env = {**os.environ, "LMINDEXER_BENCH_QUERIES": str(queries_file), "LMINDEXER_BENCH_RESULTS": str(results),
           "LMINDEXER_BENCH_K": str(k), **({"LMINDEXER_BENCH_MODE": mode} if mode else {})}  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    if not results.is_file():
        raise SystemExit(f"locust wrote no results (exit {completed.returncode}): {completed.stderr[-2000:]}")
    run = json.loads(results.read_text())
    latencies = run["latencies_ms"]
    if run["last_answered"] is None:
        raise SystemExit(f"locust stopped after {run['answered']} of {run['sent']} requests (--max-run-time?)")
    wall = run["last_answered"] - run["first_sent"]
    return {
        "users": users,
        "requests": len(latencies),
        "failures": run["failures"],
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
        "requests_per_s": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def serve_and_load(
    args, model_dir: Path, queries_file: Path, name: str, options: list[str], work: Path, tree: Path | None = None
) -> list:
    """Start a server with ``options`` (of this checkout's code, or of the checkout at ``tree``), load it from each
    number of users, stop it; one row per number of users."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lmindexer.cli", "serve", "--retriever", str(model_dir), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else dict(os.environ)
    rows = []
    with open(work / "server.log", "w") as server_log:
        process = subprocess.Popen(
            command + options, stdout=server_log, stderr=subprocess.STDOUT, env=env, cwd=tree or None
        )
        try:
            wait_until_up(base, process)
            # Warm-up: the first request of each input shape allocates (and in bf16 builds its kernels).
            for n in range(1, 65, 3):
                httpx.get(f"{base}/search", params={"q": " ".join(["warm"] * n), "k": args.k}, timeout=60)
            for users in args.users:
                row = {"configuration": name, **locust_run(base, queries_file, users, args.k, args.max_run_time, work)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return rows


def plot(rows: list[dict], users: list[int], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [name for name, _ in CONFIGURATIONS] + sorted(
        {r["configuration"] for r in rows} - dict(CONFIGURATIONS).keys()
    )
    width = 0.8 / len(users)
    for n, count in enumerate(users):
        found = {r["configuration"]: r for r in rows if r["users"] == count}
        xs = [i + (n - (len(users) - 1) / 2) * width for i in range(len(names))]
        left.bar(xs, [found[c]["requests_per_s"] if c in found else 0 for c in names], width, label=f"{count} users")
        right.bar(xs, [found[c]["p99_ms"] if c in found else 0 for c in names], width, label=f"{count} users")
    for axis, label in ((left, "requests/s"), (right, "p99 latency (ms)")):
        axis.set_xticks(range(len(names)), [n.replace(", ", ",\n") for n in names], fontsize=8)
        axis.set_ylabel(label)
        axis.legend()
    right.axhline(AIM_P99_MS, color="grey", linestyle="--", linewidth=1)
    fig.suptitle("lmindexer serve, GET /search on loopback (locust), medians over the passes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clothing-reviews", choices=["wiki-topics", "clothing-reviews"])
    parser.add_argument("--ids", default="lmindexer", help="which of downstream's retrievers: its ID method")
    parser.add_argument("--model", type=Path, default=None, help="retriever directory (default: downstream's)")
    parser.add_argument(
        "--earlier-tree",
        type=Path,
        default=None,
        help="a checkout of an earlier commit (e.g. `git worktree add /tmp/earlier fe12518`): its server runs as one "
        "more row, one request at a time in fp32, with --earlier-model (which that commit's code must load)",
    )
    parser.add_argument("--earlier-model", type=Path, default=None, help="the retriever the earlier server loads")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the configurations, each order rotated")
    add_load_options(parser)
    args = parser.parse_args()
    earlier = None
    if args.earlier_tree:
        if not args.earlier_model or not (args.earlier_model / "generative.json").is_file():
            raise SystemExit("--earlier-tree needs --earlier-model, a retriever that the earlier commit trained")
        commit = subprocess.run(
            ["git", "-C", str(args.earlier_tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        earlier = {"tree": args.earlier_tree.resolve(), "model": args.earlier_model.resolve(), "commit": commit}

    model_dir = args.model or cache_root() / "benchmarks" / "downstream" / args.dataset / f"model-{args.ids}"
    if not (model_dir / "generative.json").is_file():
        raise SystemExit(f"no retriever at {model_dir}: run `python benchmarks/downstream.py` first or give --model")
    env = environment(extra_packages=["locust", "uvicorn", "fastapi"])
    data = datasets.fetch(args.dataset, progress=False)
    queries = [query for query, _ in read_queries(data / "queries-test.jsonl")][: args.limit_queries]
    config = json.loads((model_dir / "generative.json").read_text())["config"]

    # Every pass runs every configuration, in an order rotated by one each pass, so that a machine whose speed drifts
    # during the run (shared hosts do) weighs on every configuration alike; figures are medians over the passes and
    # speedups are taken within each pass.
    plan = [(name, options, model_dir, None) for name, options in CONFIGURATIONS]
    if earlier:
        plan.append((EARLIER, EARLIER_OPTIONS, earlier["model"], earlier["tree"]))
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        work = Path(scratch)
        queries_file = work / "queries.json"
        queries_file.write_text(json.dumps(queries))
        for number in range(args.repeats):
            shift = number % len(plan)
            for name, options, model, tree in plan[shift:] + plan[:shift]:
                found = serve_and_load(args, model, queries_file, name, options, work, tree=tree)
                runs += [{"pass": number, **found_row} for found_row in found]
    names = [name for name, *_ in plan]
    rows = medians_over_passes(runs, "configuration", names, args.users, spread="requests_per_s", count_field="passes")

    def run_of(name: str, users: int, number: int) -> dict | None:
        return next(
            (r for r in runs if r["configuration"] == name and r["users"] == users and r["pass"] == number), None
        )

    # The candidates: the server's defaults as this CPU resolves them (batched, and bf16 only where the CPU computes
    # it natively, ``--precision auto``; elsewhere the forced-bf16 rows show what emulated bf16 costs), and the same
    # defaults in one worker process per core; each against the same run's one-at-a-time fp32 server (this code)
    # and, where measured, the earlier server.
    precision = resolve_precision("auto", "cpu")
    aims = []
    for candidate_name in (f"batched, {precision}", PER_CORE):
        for baseline_name in (BASELINE, EARLIER):
            pairs = [
                (run_of(candidate_name, AIM_USERS, number), run_of(baseline_name, AIM_USERS, number))
                for number in range(args.repeats)
            ]
            pairs = [(candidate, baseline) for candidate, baseline in pairs if candidate and baseline]
            if not pairs:
                continue
            speedups = [candidate["requests_per_s"] / baseline["requests_per_s"] for candidate, baseline in pairs]
            p99s = [candidate["p99_ms"] for candidate, _ in pairs]
            speedup, p99 = statistics.median(speedups), statistics.median(p99s)
            aims.append(
                {
                    "users": AIM_USERS,
                    "candidate": candidate_name,
                    "baseline": baseline_name,
                    "speedup": round(speedup, 2),
                    "speedup_per_pass": [round(x, 2) for x in speedups],
                    "p99_ms": p99,
                    "p99_ms_per_pass": p99s,
                    "aim": f">= {AIM_SPEEDUP}x requests/s with p99 <= {AIM_P99_MS:.0f} ms (medians over the passes)",
                    "met": speedup >= AIM_SPEEDUP and p99 <= AIM_P99_MS,
                    "passes_meeting_it": sum(
                        x >= AIM_SPEEDUP and y <= AIM_P99_MS for x, y in zip(speedups, p99s, strict=True)
                    ),
                }
            )
    stem = args.out / f"serving-{args.dataset}"
    document = {
        "benchmark": "serving",
        "dataset": args.dataset,
        "model": str(model_dir),
        "beam_size": config["beam_size"],
        "k": args.k,
        "queries": len(queries),
        "configurations": {name: options for name, options in CONFIGURATIONS},
        "earlier_server": {"commit": earlier["commit"], "model": str(earlier["model"]), "options": EARLIER_OPTIONS}
        if earlier
        else None,
        "default_precision": precision,
        "workers_per_core_run": available_cores(),
        "repeats": args.repeats,
        "results": rows,
        "runs": runs,
        "aims": aims,
        "environment": env,
    }
    header = ["configuration", "users", "requests", "failures", "p50 ms", "p99 ms", "req/s", "req/s range"]
    keys = ["configuration", "users", "requests", "failures", "p50_ms", "p99_ms", "requests_per_s",
            "requests_per_s_range"]  # fmt: skip
    table = markdown_table(header, [[r[key] for key in keys] for r in rows])
    verdict = "".join(
        f"\n\nAt {AIM_USERS} users, {aim['candidate']} (precision {precision}: this CPU computes bf16 "
        f"{'natively' if precision == 'bf16' else 'only by emulation'}) answers "
        f"{aim['speedup']}x the requests/s of {aim['baseline']} (per pass: "
        f"{', '.join(f'{x}x' for x in aim['speedup_per_pass'])}) with p99 {aim['p99_ms']:.0f} ms "
        f"(aim {aim['aim']}: {'met' if aim['met'] else 'not met'}; met in {aim['passes_meeting_it']} of "
        f"{len(aim['speedup_per_pass'])} passes)."
        for aim in aims
    )
    write_results(
        stem,
        document,
        f"# Serving: GET /search on loopback, locust\n\n{table}{verdict}\n\n"
        f"Medians over {args.repeats} passes, the configurations in a rotated order in each; "
        f"{len(queries)} held-out queries per setting and pass, beam size {config['beam_size']}, k={args.k}, "
        f"{os.cpu_count()} CPUs shared by the server and locust.\n\n![throughput and latency]({stem.name}.png)\n",
    )
    plot(rows, args.users, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print(table + verdict)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
