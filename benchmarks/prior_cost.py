"""What the prior costs a request: the same generative model decoding with its prior and with the decoder alone.

Loads the model ``benchmarks/downstream.py`` trained on the data set (the library's defaults, so with the prior,
:mod:`lmindexer.downstream.prior`: the dense prior of a retriever, the item prior of a recommender) and times
``GenerativeModel.search`` on the held-out queries (wiki-topics, clothing-reviews), or ``GenerativeModel.recommend``
with each user's history left out, as ``/recommend`` answers, on every user's history (movielens-100k), in batches of
1 and of 16 (the serving batcher's largest), in the model's default precision, with the prior and without it (the
same weights; the prior's scores are simply not added, which is what a model trained without it does per step).
The two variants alternate batch by batch within each of ``--repeats`` passes, so a host whose speed drifts weighs
on both alike; figures are medians over all batches, and the cost is the ratio of the medians of each pass, then its
median over the passes. Rankings with and without the prior differ, so the top-10 overlap is reported too (the
quality itself is measured by ``benchmarks/downstream.py``).

    python benchmarks/downstream.py --dataset clothing-reviews     # once: trains and saves the retriever used here
    python benchmarks/prior_cost.py --dataset clothing-reviews      # ~2 min on 2 cores
    python benchmarks/downstream.py --dataset movielens-100k --methods rq-kmeans --no-peers   # the recommender
    python benchmarks/prior_cost.py --dataset movielens-100k

Writes <out>/prior_cost-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, markdown_table, result_file, stamp_figure, write_results

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.jobs import read_queries

BATCH_SIZES = (1, 16)
VARIANTS = ("with the prior", "decoder alone")


def timed_request(model: GenerativeModel, batch: list, k: int, with_prior: bool) -> tuple[float, list]:
    """One batch's search (queries) or recommendation (histories, their items left out, as /recommend answers)."""
    prior = model.prior
    if not with_prior:
        model.prior = None  # _prior() then passes no scores: each step is the decoder's alone
    try:
        started = time.perf_counter()
        if model.config.task == "recommendation":
            found = model.recommend(batch, k=k, exclude_seen=True)
        else:
            found = model.search(batch, k=k)
        return time.perf_counter() - started, found
    finally:
        model.prior = prior


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", default="clothing-reviews", choices=["wiki-topics", "clothing-reviews", "movielens-100k"]
    )
    parser.add_argument("--ids", default="rq-kmeans", help="which of downstream's models: its ID method")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: downstream's)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries or histories")
    parser.add_argument(
        "--limit-queries", type=int, default=None, help="time only the first N held-out queries (or histories)"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    model_dir = args.model or cache_root() / "benchmarks" / "downstream" / args.dataset / f"model-{args.ids}"
    recommendation = args.dataset == "movielens-100k"
    if not (model_dir / "generative.json").is_file():
        raise SystemExit(
            f"no model at {model_dir}: run `python benchmarks/downstream.py --dataset {args.dataset}` first"
        )
    env = environment()
    model = GenerativeModel.load(model_dir)
    if model.config.task != ("recommendation" if recommendation else "retrieval"):
        raise SystemExit(f"the model at {model_dir} is for {model.config.task}, not for {args.dataset}")
    if model.prior is None:
        option = "item_prior" if recommendation else "dense_prior"
        raise SystemExit(f"the model at {model_dir} has no prior (trained with {option}: false)")
    data = datasets.fetch(args.dataset, progress=False)
    if recommendation:  # every user's history, the evaluation's (the test item is what it predicts)
        queries: list = [sequence.history for sequence in datasets.read_sequences(data / "sequences.jsonl")]
    else:
        queries = [query for query, _ in read_queries(data / "queries-test.jsonl")]
    queries = queries[: args.limit_queries]
    timed_request(model, queries[:16], args.k, True)  # warm-up: the prior's tables, the allocator, the kernels

    rows, per_pass = [], {}
    overlap: list[float] = []
    for size in BATCH_SIZES:
        batches = [queries[start : start + size] for start in range(0, len(queries), size)]
        times = {variant: [] for variant in VARIANTS}
        ratios = []
        for repeat in range(args.repeats):
            this_pass = {variant: [] for variant in VARIANTS}
            for number, batch in enumerate(batches):
                # Alternate which variant goes first, so neither always runs on a warmer cache.
                order = (True, False) if (number + repeat) % 2 == 0 else (False, True)
                found = {}
                for with_prior in order:
                    seconds, found[with_prior] = timed_request(model, batch, args.k, with_prior)
                    this_pass[VARIANTS[0] if with_prior else VARIANTS[1]].append(seconds * 1000.0)
                if repeat == 0 and size == BATCH_SIZES[-1]:
                    for a, b in zip(found[True], found[False], strict=True):
                        overlap.append(len({i for i, _ in a} & {i for i, _ in b}) / max(1, len(a)))
            ratios.append(statistics.median(this_pass[VARIANTS[0]]) / statistics.median(this_pass[VARIANTS[1]]))
            for variant in VARIANTS:
                times[variant].extend(this_pass[variant])
        per_pass[size] = ratios
        for variant in VARIANTS:
            values = times[variant]
            rows.append({
                "batch_size": size, "variant": variant, "batches": len(values),
                "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
                "ms_per_query": statistics.median(values) / size,
            })  # fmt: skip

    cost = {size: statistics.median(ratios) for size, ratios in per_pass.items()}
    # The same words for both tasks: what is timed, on what, with which prior.
    words = (
        {"prior": "item prior", "request": "recommendation", "model": "recommender", "inputs": "user histories "
         "(their items left out)", "call": "recommend", "per": "history"}
        if recommendation
        else {"prior": "dense prior", "request": "search", "model": "retriever", "inputs": "held-out queries",
              "call": "search", "per": "query"}
    )  # fmt: skip
    document = {
        "environment": env,
        "benchmark": "prior_cost",
        "dataset": args.dataset,
        "model": str(model_dir),
        "items": len(model.trie),
        "beam_size": model.config.beam_size,
        "precision": model.precision,
        "task": model.config.task,
        "queries": len(queries),  # held-out queries, or user histories for a recommender
        "repeats": args.repeats,
        "results": rows,
        "cost_with_prior": {str(size): value for size, value in cost.items()},
        "cost_per_pass": {str(size): value for size, value in per_pass.items()},
        "top10_overlap_mean": statistics.fmean(overlap) if overlap else None,
    }
    table = markdown_table(
        ["batch", "variant", "p50 ms per batch", "p90 ms", f"ms per {words['per']} (p50)"],
        [[r["batch_size"], r["variant"], f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['ms_per_query']:.2f}"]
         for r in rows],
    )  # fmt: skip
    lines = [
        f"# What the {words['prior']} costs a {words['request']}: {args.dataset}",
        "",
        f"The {words['model']} at `{model_dir.name}` ({len(model.trie)} items, beam {model.config.beam_size}, "
        f"{model.precision}), {len(queries)} {words['inputs']}, {args.repeats} passes, the two variants alternating "
        "batch by batch.",
        "",
        table,
        "",
        *(f"- Batches of {size}: with the prior {cost[size]:.2f}x the decoder alone's p50 (per pass: "
          f"{', '.join(f'{r:.2f}x' for r in per_pass[size])})." for size in BATCH_SIZES),
        f"- The two variants share {document['top10_overlap_mean']:.0%} of their top 10 on average (batches of 16, "
        "pass 1): the prior changes the rankings, as it is meant to.",
    ]  # fmt: skip
    stem = args.out / f"prior_cost-{args.dataset}"
    write_results(stem, document, "\n".join(lines))

    fig, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for n, variant in enumerate(VARIANTS):
        values = [next(r["ms_per_query"] for r in rows if r["batch_size"] == s and r["variant"] == variant)
                  for s in BATCH_SIZES]  # fmt: skip
        axis.bar([i + (n - 0.5) * width for i in range(len(BATCH_SIZES))], values, width, label=variant)
    axis.set_xticks(range(len(BATCH_SIZES)), [f"batch of {s}" for s in BATCH_SIZES])
    axis.set_ylabel(f"p50 ms per {words['per']}")
    axis.set_title(f"GenerativeModel.{words['call']} on {args.dataset}: the {words['prior']}'s cost")
    axis.legend()
    fig.tight_layout()
    fig.savefig(result_file(stem, ".png"), dpi=110)
    plt.close(fig)
    stamp_figure(result_file(stem, ".png"))
    print(result_file(stem, ".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
