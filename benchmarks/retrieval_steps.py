"""What each training step of the generative retriever adds, measured one step at a time against dense retrieval.

The generative retriever learns, for every item, which texts lead to its ID. This script trains the same model on
the same rq-kmeans IDs (L=3, K=32) under a ladder of configurations, each one change against the rung it names,
and evaluates every rung on the same held-out queries next to dense MiniLM retrieval and BM25 in the same run:

1. ``queries + item texts``: the training queries and each item's text, frozen encoder (states cached), 8 epochs
   (the retriever's configuration before pseudo-queries existed);
2. ``+ pseudo-queries``: 1 plus up to 5 sentences of each item's own text as more queries for it (document as query);
3. ``+ twice the epochs``: 2 at 16 epochs, which is ``GenerativeConfig``'s default (what ``lmindexer retriever
   train`` and ``benchmarks/downstream.py`` train);
4. ``+ top 2 encoder layers train``: 2 with the top two of MiniLM's six layers training over cached states of the
   four below (the CPU-reach encoder training; ``--skip-encoder-training`` leaves it out: it is the slow rung).

The aim: Recall@10 of the default configuration >= 0.8x dense retrieval's.

    python benchmarks/retrieval_steps.py --dataset clothing-reviews
    python benchmarks/retrieval_steps.py --dataset wiki-topics --skip-encoder-training

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
from _harness import RESULTS, environment, markdown_table, stamp_figure, write_results
from downstream import ids_for

from lmindexer import datasets
from lmindexer.cache import cache_root
from lmindexer.catalog import read_items
from lmindexer.downstream.baselines import BM25Retriever, DenseRetriever
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.jobs import read_queries
from lmindexer.downstream.ranking import rank_metrics
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder

KEYS = ("recall@1", "recall@10", "ndcg@10", "mrr@10")
# (name, the rung it changes, the options it sets over GenerativeConfig's defaults).
LADDER = (
    ("queries + item texts, 8 epochs", None, {"pseudo_queries": 0, "epochs": 8}),
    ("+ pseudo-queries", 1, {"epochs": 8}),
    ("+ twice the epochs (the default)", 2, {}),
    ("+ top 2 encoder layers train", 2, {"epochs": 8, "train_layers": 2}),
)
DEFAULT_RUNG = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="clothing-reviews", choices=["wiki-topics", "clothing-reviews"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-encoder-training", action="store_true", help="leave out rung 4 (the slow one)")
    parser.add_argument("--dense-max-length", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="where the snapshot and ID table are kept")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = environment()
    started = time.perf_counter()

    data_dir = datasets.fetch(args.dataset)
    work = args.work or cache_root() / "benchmarks" / "downstream" / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    catalogue = data_dir / "items.jsonl"
    snapshot, table, id_report = ids_for(
        "rq-kmeans", catalogue, {"levels": 3, "codebook_size": 32, "seed": args.seed}, work, refit=False
    )
    items = {item.item_id: item for item in read_items(catalogue)[0]}
    train = read_queries(data_dir / "queries-train.jsonl")
    test = read_queries(data_dir / "queries-test.jsonl")
    relevant = [{item_id} for _, item_id in test]
    queries = [query for query, _ in test]
    texts = dict(zip(table.item_ids, snapshot.texts([items[i] for i in table.item_ids]), strict=True))

    rows = []
    ids = list(items)
    reference_texts = snapshot.texts([items[i] for i in ids])  # what the IDs and the generative model read
    print("-- dense MiniLM and BM25", flush=True)
    encoder = TextEncoder(DEFAULT_ENCODER, max_length=args.dense_max_length)
    dense = DenseRetriever(encoder).index(ids, reference_texts)
    rows.append({"name": "dense MiniLM", "metrics": rank_metrics(dense.search(queries, 10), relevant)})
    bm25 = BM25Retriever.fit(ids, reference_texts)
    rows.append({"name": "BM25 (bm25s)", "metrics": rank_metrics(bm25.search(queries, 10), relevant)})
    dense_recall = rows[0]["metrics"]["recall@10"]

    generative: dict[int, dict] = {}
    for rung, (name, base, options) in enumerate(LADDER, start=1):
        if args.skip_encoder_training and options.get("train_layers"):
            continue
        print(f"-- generative retriever, rung {rung}: {name} {options}", flush=True)
        model = GenerativeModel.create(table, snapshot, {"task": "retrieval", "seed": args.seed, **options})
        begun = time.perf_counter()
        stats = model.fit_retrieval(train, texts, progress=True)
        train_s = time.perf_counter() - begun
        ranked = model.search(queries, 10, progress=True)
        metrics = rank_metrics([[item_id for item_id, _ in found] for found in ranked], relevant)
        row = {
            "name": f"{rung}. {name}",
            "rung": rung,
            "changes_rung": base,
            "options": model.config.model_dump(include={"pseudo_queries", "epochs", "train_layers"}),
            "metrics": metrics,
            "recall@10_vs_dense": round(metrics["recall@10"] / dense_recall, 3) if dense_recall else None,
            "examples": {key: stats[key] for key in ("pairs", "indexing_pairs", "pseudo_queries")},
            "train_s": round(train_s, 1),
            "final_epoch_loss": round(stats["epoch_loss"][-1], 4),
        }
        if base in generative:
            row["recall@10_gain"] = round(metrics["recall@10"] - generative[base]["metrics"]["recall@10"], 4)
        generative[rung] = row
        rows.append(row)

    default = generative[DEFAULT_RUNG]
    aim = {
        "dense_recall@10": dense_recall,
        "default_recall@10": default["metrics"]["recall@10"],
        "ratio": default["recall@10_vs_dense"],
        "best_rung": max(generative.values(), key=lambda row: row["metrics"]["recall@10"])["name"],
        "aim": 0.8,
    }
    stem = args.out / f"retrieval_steps-{args.dataset}"
    document = {
        "dataset": args.dataset,
        "ids": {"method": "rq-kmeans", "levels": 3, "codebook_size": 32, **id_report},
        "queries": {"train": len(train), "test": len(test)},
        "results": rows,
        "aim": aim,
        "wall_s": round(time.perf_counter() - started, 1),
        "environment": env,
    }
    table_md = markdown_table(
        ["system", *KEYS, "Recall@10 vs dense", "Recall@10 gain (vs rung)", "examples", "train s"],
        [
            [
                row["name"],
                *(f"{row['metrics'][key]:.4f}" for key in KEYS),
                row.get("recall@10_vs_dense", ""),
                f"{row['recall@10_gain']:+.4f} (vs {row['changes_rung']})" if "recall@10_gain" in row else "",
                sum(row["examples"].values()) if "examples" in row else "",
                row.get("train_s", ""),
            ]
            for row in rows
        ],
    )
    verdict = (
        f"The default configuration (rung {DEFAULT_RUNG}): Recall@10 {aim['default_recall@10']:.4f} = "
        f"{aim['ratio']}x dense MiniLM's {dense_recall:.4f} "
        f"(aim >= 0.8x: {'met' if aim['ratio'] and aim['ratio'] >= 0.8 else 'not met'})."
    )
    write_results(
        stem,
        document,
        f"# Generative retrieval, step by step — {args.dataset}\n\n{table_md}\n\n{verdict}\n\n"
        f"![recall]({stem.name}.png)\n",
    )
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh([row["name"] for row in rows][::-1], [row["metrics"]["recall@10"] for row in rows][::-1])
    ax.axvline(0.8 * dense_recall, color="black", linestyle="--", label="0.8x dense (aim)")
    ax.set_xlabel("Recall@10")
    ax.set_title(f"{args.dataset}: generative retrieval step by step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    stamp_figure(stem.with_suffix(".png"))
    print(table_md)
    print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
