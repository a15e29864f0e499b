"""What each training step of the generative retriever adds, measured one step at a time against dense retrieval.

The generative retriever learns, for every item, which texts lead to its ID. This script trains the same model on
the same IDs (rq-kmeans by default, ``--ids lmindexer`` for LMIndexer's; L=3, K=32) under a ladder of
configurations, each one change against the rung it names, and evaluates every rung on the same held-out queries
next to dense MiniLM retrieval and BM25 in the same run:

1. ``queries + item texts``: the training queries and each item's text, frozen encoder (states cached), 8 epochs
   (the retriever's configuration before pseudo-queries existed);
2. ``+ pseudo-queries``: 1 plus up to 5 sentences of each item's own text as more queries for it (document as query);
3. ``+ twice the epochs``: 2 at 16 epochs;
4. ``+ top 2 encoder layers train``: 2 with the top two of MiniLM's six layers training over cached states of the
   four below (the CPU-reach encoder training; ``--skip-encoder-training`` leaves it out: it is the slow rung);
5. ``+ dense prior``: 2 with the dense prior (``dense_prior``, :mod:`lmindexer.downstream.prior`): each next-token
   score gains the log-sum-exp of the query's cosines to the items under the prefix it makes. This is
   ``GenerativeConfig``'s default (what ``lmindexer retriever train`` and ``benchmarks/downstream.py`` train). The
   same model before training (decoder untrained, so the prior decides) is its own row, ``5, untrained``: what the
   training adds.

Each seed (``--seeds``, default 0 1 2) fits its own IDs and trains every rung on them; the generative rows are the
mean +- SD over the seeds, and each rung's gain is paired by seed. The aim: Recall@10 of the default configuration
>= 0.8x dense retrieval's, in the mean.

    python benchmarks/retrieval_steps.py --dataset clothing-reviews --skip-encoder-training   # ~35 min on 2 cores
    python benchmarks/retrieval_steps.py --dataset wiki-topics --seeds 0 --rungs 5           # ~35 min: the default only

Writes <out>/retrieval_steps-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    RESULTS,
    environment,
    format_gain,
    format_mean_sd,
    markdown_table,
    mean_sd,
    result_file,
    stamp_figure,
    write_results,
)
from downstream import ids_for, item_texts

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.catalog import read_items
from lmindexer.downstream.baselines import BM25Retriever, DenseRetriever
from lmindexer.downstream.dense import DenseIndexConfig
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.jobs import read_queries
from lmindexer.downstream.ranking import rank_metrics
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.indexers import create_indexer

KEYS = ("recall@1", "recall@10", "ndcg@10", "mrr@10")
# (name, the rung it changes, the options it sets over GenerativeConfig's defaults).
LADDER = (
    ("queries + item texts, 8 epochs", None, {"pseudo_queries": 0, "epochs": 8, "dense_prior": False}),
    ("+ pseudo-queries", 1, {"dense_prior": False}),
    ("+ twice the epochs", 2, {"epochs": 16, "dense_prior": False}),
    ("+ top 2 encoder layers train", 2, {"epochs": 8, "train_layers": 2, "dense_prior": False}),
    ("+ dense prior", 2, {"dense_prior": True}),
)
DEFAULT_RUNG = 5
# Each ID kind's options beyond L, K and the seed (benchmarks/downstream.py's).
ID_KIND_OPTIONS = {"rq-kmeans": {}, "lmindexer": {"preset": "fast"}}
OPTIONS_SHOWN = {"pseudo_queries", "epochs", "train_layers", "dense_prior"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clothing-reviews", choices=["wiki-topics", "clothing-reviews"])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="each seed fits its own IDs and trains every rung"
    )
    parser.add_argument(
        "--rungs",
        type=int,
        nargs="+",
        default=None,
        choices=range(1, len(LADDER) + 1),
        help=f"train only these rungs (default: all; rung {DEFAULT_RUNG}, the default configuration, always runs)",
    )
    parser.add_argument("--skip-encoder-training", action="store_true", help="leave out rung 4 (the slow one)")
    parser.add_argument(
        "--ids",
        default="rq-kmeans",
        choices=["rq-kmeans", "lmindexer"],
        help="the ID kind every rung writes (lmindexer: the fast preset, as benchmarks/downstream.py fits it)",
    )
    parser.add_argument("--dense-max-length", type=int, default=DenseIndexConfig().max_length)
    parser.add_argument("--work", type=Path, default=None, help="where the snapshots and ID tables are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rungs = sorted(set(args.rungs or range(1, len(LADDER) + 1)) | {DEFAULT_RUNG})
    if args.skip_encoder_training:
        rungs = [rung for rung in rungs if not LADDER[rung - 1][2].get("train_layers")]
    env = environment()
    started = time.perf_counter()

    data_dir = datasets.fetch(args.dataset)
    work = args.work or cache_root() / "benchmarks" / "downstream" / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    catalogue = data_dir / "items.jsonl"
    items = {item.item_id: item for item in read_items(catalogue)[0]}
    train = read_queries(data_dir / "queries-train.jsonl")
    test = read_queries(data_dir / "queries-test.jsonl")
    relevant = [{item_id} for _, item_id in test]
    queries = [query for query, _ in test]

    # Dense retrieval and BM25 do not depend on the seed: measured once, on the text the indexers read.
    ids = list(items)
    reference_texts = create_indexer("rq-kmeans").texts([items[i] for i in ids])
    print("-- dense MiniLM and BM25", flush=True)
    encoder = TextEncoder(DEFAULT_ENCODER, max_length=args.dense_max_length)
    dense = DenseRetriever(encoder).index(ids, reference_texts)
    rows = [{"name": "dense MiniLM", "metrics": rank_metrics(dense.search(queries, 10), relevant)}]
    bm25 = BM25Retriever.fit(ids, reference_texts)
    rows.append({"name": "BM25 (bm25s)", "metrics": rank_metrics(bm25.search(queries, 10), relevant)})
    dense_recall = rows[0]["metrics"]["recall@10"]

    runs: dict[int, list[dict]] = {rung: [] for rung in rungs}  # rung -> one run per seed
    id_reports = {}
    for seed in args.seeds:
        # Each seed fits its own IDs as well as its own model: both vary in what a user would run.
        id_options = {"levels": 3, "codebook_size": 32, "seed": seed, **ID_KIND_OPTIONS[args.ids]}
        snapshot, table, id_reports[seed] = ids_for(args.ids, catalogue, id_options, work, refit=False)
        texts = item_texts(snapshot, table, items)
        for rung in rungs:
            name, _, options = LADDER[rung - 1]
            print(f"-- seed {seed}, generative retriever, rung {rung}: {name} {options}", flush=True)
            model = GenerativeModel.create(table, snapshot, {"task": "retrieval", "seed": seed, **options})
            untrained = None
            if model.prior is not None:
                # The prior before any training (the decoder's scores are near zero): what the training adds to it.
                model.embed_items(texts, progress=True)
                untrained = rank_metrics([[i for i, _ in found] for found in model.search(queries, 10)], relevant)
            begun = time.perf_counter()
            stats = model.fit_retrieval(train, texts, progress=True)
            train_s = time.perf_counter() - begun
            ranked = model.search(queries, 10, progress=True)
            runs[rung].append(
                {
                    "seed": seed,
                    "options": model.config.model_dump(include=OPTIONS_SHOWN),
                    "metrics": rank_metrics([[item_id for item_id, _ in found] for found in ranked], relevant),
                    "examples": {key: stats[key] for key in ("pairs", "indexing_pairs", "pseudo_queries")},
                    "train_s": round(train_s, 1),
                    "final_epoch_loss": round(stats["epoch_loss"][-1], 4),
                    **({"metrics_untrained": untrained} if untrained is not None else {}),
                }
            )

    generative: dict[int, dict] = {}
    for rung in rungs:
        name, base, _ = LADDER[rung - 1]
        summary = {key: mean_sd([run["metrics"][key] for run in runs[rung]]) for key in KEYS}
        row = {
            "name": f"{rung}. {name}",
            "rung": rung,
            "changes_rung": base,
            "options": runs[rung][0]["options"],
            "metrics": {key: value["mean"] for key, value in summary.items()},
            "metrics_mean_sd": summary,
            "recall@10_vs_dense": ratio(summary["recall@10"], dense_recall),
            "examples": runs[rung][0]["examples"],
            "train_s": mean_sd([run["train_s"] for run in runs[rung]]),
            "per_seed": runs[rung],
        }
        if base in generative:
            # Paired by seed: the two rungs share each seed's IDs.
            gains = [
                run["metrics"]["recall@10"] - earlier["metrics"]["recall@10"]
                for run, earlier in zip(runs[rung], runs[base], strict=True)
            ]
            row["recall@10_gain"] = mean_sd(gains)
        generative[rung] = row
        rows.append(row)
        if all("metrics_untrained" in run for run in runs[rung]):
            before = {key: mean_sd([run["metrics_untrained"][key] for run in runs[rung]]) for key in KEYS}
            rows.append({
                "name": f"{rung}, untrained (the prior alone)", "rung": rung,
                "metrics": {key: value["mean"] for key, value in before.items()}, "metrics_mean_sd": before,
                "recall@10_vs_dense": ratio(before["recall@10"], dense_recall),
            })  # fmt: skip

    default = generative[DEFAULT_RUNG]
    aim = {
        "dense_recall@10": dense_recall,
        "default_recall@10": default["metrics_mean_sd"]["recall@10"],
        "ratio": default["recall@10_vs_dense"],
        "best_rung": max(generative.values(), key=lambda row: row["metrics"]["recall@10"])["name"],
        "best_rung_ratio": max(row["recall@10_vs_dense"]["mean"] for row in generative.values()),
        "aim": 0.8,
        "met_in_mean": default["recall@10_vs_dense"]["mean"] >= 0.8,
    }
    stem = args.out / (f"retrieval_steps-{args.dataset}" + ("" if args.ids == "rq-kmeans" else f"-{args.ids}-ids"))
    document = {
        "dataset": args.dataset,
        "seeds": args.seeds,
        "ids": {
            "method": args.ids,
            "levels": 3,
            "codebook_size": 32,
            **ID_KIND_OPTIONS[args.ids],
            "per_seed": id_reports,
        },
        "queries": {"train": len(train), "test": len(test)},
        "results": rows,
        "aim": aim,
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": env,
    }
    spread = (
        f"mean ± SD over seeds {', '.join(map(str, args.seeds))}"
        if len(args.seeds) > 1
        else f"seed {args.seeds[0]} alone (no spread to report)"
    )
    table_md = markdown_table(
        ["system", *KEYS, "Recall@10 vs dense", "Recall@10 gain (vs rung, paired by seed)", "examples", "train s"],
        [
            [
                row["name"],
                *(metric_cell(row, key) for key in KEYS),
                format_mean_sd(row["recall@10_vs_dense"], ".3f") if "recall@10_vs_dense" in row else "",
                f"{format_gain(row['recall@10_gain'])} (vs {row['changes_rung']})" if "recall@10_gain" in row else "",
                sum(row["examples"].values()) if "examples" in row else "",
                format_mean_sd(row["train_s"], ".0f") if "train_s" in row else "",
            ]
            for row in rows
        ],
    )
    verdict = (
        f"The default configuration (rung {DEFAULT_RUNG}): Recall@10 {format_mean_sd(aim['default_recall@10'])} = "
        f"{format_mean_sd(aim['ratio'], '.3f')}x dense MiniLM's {dense_recall:.4f} "
        f"(aim >= 0.8x in the mean: {'met' if aim['met_in_mean'] else 'not met'})."
    )
    write_results(
        stem,
        document,
        f"# Generative retrieval, step by step — {args.dataset}\n\nGenerative rows: {spread} (each seed fits its own "
        f"{args.ids} IDs and trains its own models); dense and BM25 do not vary with the seed.\n\n{table_md}\n\n"
        f"{verdict}\n\n![recall]({stem.name}.png)\n",
    )
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [row["name"] for row in rows][::-1]
    values = [row["metrics"]["recall@10"] for row in rows][::-1]
    errors = [row["metrics_mean_sd"]["recall@10"]["sd"] if "metrics_mean_sd" in row else 0 for row in rows][::-1]
    ax.barh(names, values, xerr=errors, capsize=3)
    ax.axvline(0.8 * dense_recall, color="black", linestyle="--", label="0.8x dense (aim)")
    ax.set_xlabel(f"Recall@10 ({spread})")
    ax.set_title(f"{args.dataset}: generative retrieval step by step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(result_file(stem, ".png"), dpi=110)
    plt.close(fig)
    stamp_figure(result_file(stem, ".png"))
    print(table_md)
    print(verdict)
    return 0


def metric_cell(row: dict, key: str) -> str:
    return format_mean_sd(row["metrics_mean_sd"][key]) if "metrics_mean_sd" in row else f"{row['metrics'][key]:.4f}"


def ratio(summary: dict, reference: float) -> dict:
    """Each seed's value over a reference that does not vary with the seed, as mean ± SD."""
    return mean_sd([value / reference for value in summary["values"]]) if reference else mean_sd([0.0])


if __name__ == "__main__":
    raise SystemExit(main())
