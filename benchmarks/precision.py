"""bf16 against fp32 inference, in the same run: speed, and whether the IDs and rankings stay the same.

For one data set, with the models ``benchmarks/downstream.py`` fitted and trained on it:

- the frozen encoder (all-MiniLM-L6-v2) embedding the catalogue's texts: items/s in fp32 and in bf16, rounds
  interleaved (fp32, bf16, fp32, ...) so that a change in the machine's load hits both, at every thread count asked
  for; and the cosine of each bf16 embedding to its fp32 embedding;
- the share of items whose codes equal their fp32 codes: rq-kmeans (its quantiser over bf16 vs fp32 embeddings) and
  the LMIndexer snapshot assigning in bf16 vs fp32 (its encoder under autocast; code writers in float32), with the
  assign time of each;
- the generative retriever over the held-out queries: queries/s, NDCG@10 and the overlap of the top 10.

    python benchmarks/downstream.py --dataset clothing-reviews       # once: the snapshots and the retriever
    python benchmarks/precision.py --dataset clothing-reviews

Without a downstream run, ``--fit-missing`` fits the two snapshots as downstream.py would (L=3, K=32, seed 0; the
LMIndexer's ``fast`` preset) in the work directory; the retriever's part is then skipped.

Writes <out>/precision-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, environment, markdown_table, result_file, stamp_figure, write_results

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.catalog import read_items
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.jobs import read_queries
from lmindexer.downstream.ranking import rank_metrics
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.indexers import create_indexer, load_snapshot
from lmindexer.precision import native_bf16
from lmindexer.text import DEFAULT_TEMPLATE, TextTemplate

PRECISIONS = ("fp32", "bf16")


def timed(work) -> tuple[object, float]:
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def encoder_speed(texts: list[str], threads: int, rounds: int, max_length: int) -> dict:
    torch.set_num_threads(threads)
    encoders = {
        p: TextEncoder(DEFAULT_ENCODER, max_length=max_length, use_cache=False, precision=p) for p in PRECISIONS
    }
    encoders["fp32"].encode(texts[:64])  # warm-up: first calls allocate
    encoders["bf16"].encode(texts[:64])
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    embeddings: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for precision in PRECISIONS:
            embedded, seconds = timed(lambda p=precision: encoders[p].encode(texts))
            rates[precision].append(len(texts) / seconds)
            embeddings[precision] = embedded
    cosine = (embeddings["fp32"] * embeddings["bf16"]).sum(axis=1)
    ratios = [b / f for f, b in zip(rates["fp32"], rates["bf16"], strict=True)]
    return {
        "threads": threads,
        "texts": len(texts),
        "items_per_s": {
            p: {"mean": statistics.fmean(v), "sd": statistics.stdev(v), "values": v} for p, v in rates.items()
        },
        "speedup": {"mean": statistics.fmean(ratios), "sd": statistics.stdev(ratios), "values": ratios},
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }


def with_precision(indexer, precision: str):
    """The same fitted snapshot, assigning in ``precision`` (what a snapshot fitted with that precision does), with
    no embedding cache: both precisions compute every embedding, so their times compare."""
    indexer.config = indexer.config.model_copy(update={"inference_precision": precision})
    if hasattr(indexer, "_encoder"):
        config = indexer.config
        indexer._encoder = TextEncoder(
            config.encoder,
            max_length=config.max_length,
            batch_size=config.embed_batch_size,
            use_cache=False,
            precision=precision,
        )
    return indexer


# What benchmarks/downstream.py fits by default (its --levels, --codebook-size, --seed and --lm-preset).
SNAPSHOT_OPTIONS = {"rq-kmeans": {"levels": 3, "codebook_size": 32, "seed": 0},
                    "lmindexer": {"levels": 3, "codebook_size": 32, "seed": 0, "preset": "fast"}}  # fmt: skip


def fit_missing_snapshots(work: Path, items: list) -> None:
    for method, options in SNAPSHOT_OPTIONS.items():
        directory = work / f"snapshot-{method}"
        if directory.is_dir():
            continue
        print(f"fitting {method} into {directory}", flush=True)
        indexer = create_indexer(method, options)
        if hasattr(indexer, "checkpoint_dir"):
            indexer.checkpoint_dir = None
        indexer.fit(items, progress=False)
        indexer.save(directory)


def code_agreement(work: Path, items: list) -> list[dict]:
    rows = []
    for method in ("rq-kmeans", "lmindexer"):
        directory = work / f"snapshot-{method}"
        if not directory.is_dir():
            print(f"skipping {method}: no snapshot at {directory}", file=sys.stderr)
            continue
        codes, seconds, rechecked = {}, {}, None
        for precision in PRECISIONS:
            indexer = with_precision(load_snapshot(directory), precision)
            texts = indexer.texts(items)
            indexer.codes_for_texts(texts[:32])  # warm-up (and, for rq-kmeans, the encoder's load)
            codes[precision], seconds[precision] = timed(lambda i=indexer, t=texts: i.codes_for_texts(t))
            if precision == "bf16":
                # Items near a code boundary that the bf16 coding computed again in float32.
                rechecked = getattr(indexer, "last_recheck", None)
        same = (codes["fp32"] == codes["bf16"]).all(axis=1)
        rows.append(
            {
                "method": method,
                "items": len(items),
                "same_codes_share": float(same.mean()),
                "same_first_code_share": float((codes["fp32"][:, 0] == codes["bf16"][:, 0]).mean()),
                "assign_s": {p: round(s, 2) for p, s in seconds.items()},
                "assign_speedup": round(seconds["fp32"] / seconds["bf16"], 3),
                "bf16_recomputed_in_fp32": None if rechecked is None else rechecked["recomputed_in_fp32"],
            }
        )
    return rows


def generative(model_dir: Path, test: list[tuple[str, str]]) -> dict | None:
    if not (model_dir / "generative.json").is_file():
        print(f"skipping the retriever: none at {model_dir}", file=sys.stderr)
        return None
    model = GenerativeModel.load(model_dir, device="cpu")
    queries = [q for q, _ in test]
    relevant = [{item_id} for _, item_id in test]
    model.search(queries[:16], k=10)  # warm-up
    found, seconds, quality = {}, {}, {}
    for precision in PRECISIONS:
        model.precision = precision
        ranked, seconds[precision] = timed(lambda: model.search(queries, k=10))
        found[precision] = [[item_id for item_id, _ in r] for r in ranked]
        quality[precision] = rank_metrics(found[precision], relevant)["ndcg@10"]
    overlap = [len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(found["fp32"], found["bf16"], strict=True)]
    return {
        "queries": len(queries),
        "queries_per_s": {p: round(len(queries) / s, 2) for p, s in seconds.items()},
        "speedup": round(seconds["fp32"] / seconds["bf16"], 3),
        "ndcg@10": {p: round(v, 4) for p, v in quality.items()},
        "top10_overlap": round(statistics.fmean(overlap), 4),
        "same_top1_share": round(
            statistics.fmean(a[:1] == b[:1] for a, b in zip(found["fp32"], found["bf16"], strict=True)), 4
        ),
    }


def plot(speed: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}" for row in speed]
    x = np.arange(len(speed))
    for offset, precision in ((-0.2, "fp32"), (0.2, "bf16")):
        means = [row["items_per_s"][precision]["mean"] for row in speed]
        sds = [row["items_per_s"][precision]["sd"] for row in speed]
        ax.bar(x + offset, means, 0.4, yerr=sds, capsize=4, label=precision)
    ax.set_xticks(x, labels)
    ax.set_ylabel("encoder items/s (mean ± SD)")
    ax.set_title("all-MiniLM-L6-v2, fp32 vs bf16 autocast")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clothing-reviews", choices=["clothing-reviews", "wiki-topics"])
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and all cores")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per precision (interleaved)")
    parser.add_argument("--texts", type=int, default=1000, help="catalogue texts in each timed encoder round")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--work", type=Path, default=None, help="downstream.py's work directory")
    parser.add_argument("--fit-missing", action="store_true", help="fit the snapshots the work directory lacks")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the figures are mean ± SD)")

    env = environment()
    data_dir = datasets.fetch(args.dataset)
    work = args.work or cache_root() / "benchmarks" / "downstream" / args.dataset
    items, _ = read_items(data_dir / "items.jsonl")
    texts = [TextTemplate(DEFAULT_TEMPLATE).render(item) for item in items]
    cores = torch.get_num_threads()
    threads = args.threads or sorted({1, cores})

    speed = [encoder_speed(texts[: args.texts], n, args.rounds, args.max_length) for n in threads]
    torch.set_num_threads(cores)
    if args.fit_missing:
        fit_missing_snapshots(work, items)
    agreement = code_agreement(work, items)
    retrieval = generative(work / "model-lmindexer", read_queries(data_dir / "queries-test.jsonl"))

    best = max(speed, key=lambda row: row["threads"])
    aims = {
        "encoder_speedup_at_all_cores": {"value": round(best["speedup"]["mean"], 3), "aim": 1.8},
        "same_codes_share": {
            row["method"]: {"value": round(row["same_codes_share"], 5), "aim": 0.999} for row in agreement
        },
    }
    aims["encoder_speedup_at_all_cores"]["met"] = aims["encoder_speedup_at_all_cores"]["value"] >= 1.8
    for row in aims["same_codes_share"].values():
        row["met"] = row["value"] >= 0.999
    document = {
        "benchmark": "precision",
        "dataset": args.dataset,
        "native_bf16": native_bf16("cpu"),
        "environment": env,
        "encoder": speed,
        "codes": agreement,
        "retriever": retrieval,
        "aims": aims,
    }

    lines = [f"# bf16 vs fp32 inference on {args.dataset}", ""]
    lines.append(f"CPU computes bf16 natively: {document['native_bf16']}. {args.rounds} interleaved rounds each.")
    lines += ["", "## Frozen encoder (all-MiniLM-L6-v2)", ""]
    lines.append(
        markdown_table(
            ["threads", "texts", "fp32 items/s", "bf16 items/s", "speedup", "min cosine"],
            [
                [
                    row["threads"],
                    row["texts"],
                    f"{row['items_per_s']['fp32']['mean']:.1f} ± {row['items_per_s']['fp32']['sd']:.1f}",
                    f"{row['items_per_s']['bf16']['mean']:.1f} ± {row['items_per_s']['bf16']['sd']:.1f}",
                    f"{row['speedup']['mean']:.2f}x ± {row['speedup']['sd']:.2f}",
                    f"{row['cosine_min']:.5f}",
                ]
                for row in speed
            ],
        )
    )
    lines += ["", "## Codes: share of items whose bf16 codes equal their fp32 codes", ""]
    lines.append(
        markdown_table(
            [
                "method",
                "items",
                "same codes",
                "same first code",
                "assign s fp32",
                "assign s bf16",
                "speedup",
                "bf16: recomputed in fp32",
            ],
            [
                [
                    row["method"],
                    row["items"],
                    f"{100 * row['same_codes_share']:.2f}%",
                    f"{100 * row['same_first_code_share']:.2f}%",
                    row["assign_s"]["fp32"],
                    row["assign_s"]["bf16"],
                    f"{row['assign_speedup']:.2f}x",
                    "-" if row["bf16_recomputed_in_fp32"] is None else row["bf16_recomputed_in_fp32"],
                ]
                for row in agreement
            ],
        )
    )
    if retrieval:
        lines += ["", "## Generative retriever (LMIndexer IDs), held-out queries", ""]
        lines.append(
            markdown_table(
                ["queries", "fp32 q/s", "bf16 q/s", "speedup", "NDCG@10 fp32", "NDCG@10 bf16", "top-10 overlap"],
                [
                    [
                        retrieval["queries"],
                        retrieval["queries_per_s"]["fp32"],
                        retrieval["queries_per_s"]["bf16"],
                        f"{retrieval['speedup']:.2f}x",
                        retrieval["ndcg@10"]["fp32"],
                        retrieval["ndcg@10"]["bf16"],
                        f"{100 * retrieval['top10_overlap']:.1f}%",
                    ]
                ],
            )
        )
    stem = args.out / f"precision-{args.dataset}"
    write_results(stem, document, "\n".join(lines))
    plot(speed, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
