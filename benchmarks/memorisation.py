"""How much of a sequential recommender's fit on MovieLens-100k is memorisation.

Each model ranks the next item of a step it trained on and of the step held out, both over the full ranking and
with the history left out:

- the **training step**: each user's second-to-last item (the validation item, which the training histories of
  benchmarks/downstream.py hold) from the items before it: a step every model here learnt, with the same history
  it read in training (a generative recommender's last window ends there);
- the **test step**: the last item from every item before it, as benchmarks/downstream.py scores it.

A model that generalises ranks the two about alike; the ratio of the training step's NDCG@10 to the test step's
says how much of what it learnt is the training steps by heart. Generative recommenders are loaded from the
directories benchmarks/downstream.py saves (--model LABEL=DIR, repeatable: models with the same label are seeds of
one recipe, summarised as mean +- SD); Cornac's SASRec trains at its own recipe (Cornac's defaults: 10 epochs over
every next-item step of the whole histories, as ``--peer-budget own``) for each of --sasrec-seeds.

    work=~/.cache/lmindexer/benchmarks/downstream/movielens-100k
    python benchmarks/memorisation.py --sasrec-seeds 0 \\
        --model "last-item, dropout 0.2=$work/model-rq-kmeans-sequence-trained-last-item-summary-dropout-0.2"

Writes <out>/memorisation-<dataset>[-<name>].json, .md and .png (--dataset: movielens-100k by default, or a
directory of another interaction log with its sequences.jsonl, as benchmarks/downstream.py reads it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    RESULTS,
    data_source,
    environment,
    format_mean_sd,
    markdown_table,
    mean_sd,
    result_file,
    stamp_figure,
    write_results,
)
from downstream import recommended_item_ids

from lmindexer import datasets
from lmindexer.downstream.generative import GenerativeModel
from lmindexer.downstream.peers import CornacRecommender
from lmindexer.downstream.ranking import rank_metrics

TOP_K = 10
STEPS = ("training step", "test step")
PROTOCOLS = {"full ranking": False, "history left out": True}
Recommend = Callable[[Sequence[Sequence[str]], int, bool], list[list[str]]]


def steps(sequences: Sequence[datasets.UserSequence]) -> dict[str, tuple[list[list[str]], list[set[str]]]]:
    """(histories, relevant) of each step; users whose history has a single item have no training step to rank."""
    return {
        "training step": (
            [list(s.history[:-1]) for s in sequences if len(s.history) > 1],
            [{s.history[-1]} for s in sequences if len(s.history) > 1],
        ),
        "test step": ([list(s.history) for s in sequences], [{s.test} for s in sequences]),
    }


def measure(recommend: Recommend, cases: dict[str, tuple[list[list[str]], list[set[str]]]]) -> dict[str, dict]:
    """NDCG@10 and Recall@10 of every step under both protocols, keyed "<step>, <protocol>"."""
    metrics = {}
    for step, (histories, relevant) in cases.items():
        for protocol, exclude_seen in PROTOCOLS.items():
            ranked = recommend(histories, TOP_K, exclude_seen)
            found = rank_metrics(ranked, relevant)
            metrics[f"{step}, {protocol}"] = {key: round(found[key], 4) for key in ("ndcg@10", "recall@10")}
    return metrics


def ratios(metrics: dict[str, dict]) -> dict[str, float]:
    """NDCG@10 of the training step over that of the test step, per protocol (inf where the test step scores 0)."""
    out = {}
    for protocol in PROTOCOLS:
        training, test = (metrics[f"{step}, {protocol}"]["ndcg@10"] for step in STEPS)
        out[protocol] = round(training / test, 2) if test else float("inf")
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Mean +- SD of every metric over the rows of each label (its seeds), in the order the labels first appear."""
    summary = []
    for label in dict.fromkeys(row["label"] for row in rows):
        found = [row for row in rows if row["label"] == label]
        summary.append({
            "label": label,
            "seeds": [row["seed"] for row in found],
            "metrics": {key: {m: mean_sd([r["metrics"][key][m] for r in found]) for m in ("ndcg@10", "recall@10")}
                        for key in found[0]["metrics"]},
        })  # fmt: skip
    return summary


def markdown(summary: list[dict]) -> str:
    header = ["model (seeds)"]
    for protocol in PROTOCOLS:
        header += [f"{protocol}: training step NDCG@10", "test step NDCG@10", "training / test"]
    rows = []
    for entry in summary:
        cells = [f"{entry['label']} ({', '.join(str(s) for s in entry['seeds'])})"]
        for protocol in PROTOCOLS:
            cells += [
                format_mean_sd(entry["metrics"][f"training step, {protocol}"]["ndcg@10"]),
                format_mean_sd(entry["metrics"][f"test step, {protocol}"]["ndcg@10"]),
                format_mean_sd(entry["training_over_test_ndcg@10"][protocol], ".2f") + "x",
            ]
        rows.append(cells)
    return (
        "# Memorisation: the next item of a step each model trained on against the step held out "
        "(MovieLens-100k)\n\n" + markdown_table(header, rows)
    )


def plot(summary: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(11, 4.5), sharey=True)
    width = 0.8 / len(STEPS)
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        for n, step in enumerate(STEPS):
            means = [entry["metrics"][f"{step}, {protocol}"]["ndcg@10"]["mean"] for entry in summary]
            sds = [entry["metrics"][f"{step}, {protocol}"]["ndcg@10"]["sd"] for entry in summary]
            ax.bar([i + n * width for i in range(len(summary))], means, width, yerr=sds, label=step)
        ax.set_xticks([i + width / 2 for i in range(len(summary))], [e["label"] for e in summary], fontsize=7)
        ax.tick_params(axis="x", labelrotation=15)
        ax.set_title(protocol)
    axes[0].set_ylabel("NDCG@10")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_model(value: str) -> tuple[str, Path]:
    label, separator, directory = value.rpartition("=")
    if not separator or not label or not directory:
        raise argparse.ArgumentTypeError(f"--model takes LABEL=DIR, got {value!r}")
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no saved model at {path}")
    return label, path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=parse_model, action="append", default=[], help="LABEL=DIR, repeatable")
    parser.add_argument("--sasrec-seeds", type=int, nargs="*", default=[], help="Cornac's SASRec at its own recipe")
    parser.add_argument(
        "--dataset",
        default="movielens-100k",
        help="the data set the models were trained on: movielens-100k or a directory with a sequences.jsonl",
    )
    parser.add_argument("--name", default="", help="a part of the files' names after the data set's, e.g. dropout")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = data_source(parser, args.dataset, task="recommendation")
    if not args.model and not args.sasrec_seeds:
        parser.error("nothing to measure: give --model LABEL=DIR and/or --sasrec-seeds")
    env = environment(["cornac"])
    started = time.perf_counter()
    sequences = datasets.read_sequences(source.path() / datasets.SEQUENCES_FILE)
    cases = steps(sequences)
    rows = []
    for label, directory in args.model:
        print(f"-- {label}: {directory}", flush=True)
        model = GenerativeModel.load(directory)
        row = {"label": label, "model_dir": str(directory), "seed": model.config.seed,
               "options": model.config.model_dump(mode="json")}  # fmt: skip
        row["metrics"] = measure(lambda h, k, e, model=model: recommended_item_ids(model, h, k, e), cases)
        rows.append(row)
    for seed in args.sasrec_seeds:
        print(f"-- SASRec (cornac, own recipe), seed {seed}", flush=True)
        peer = CornacRecommender.sasrec(seed=seed)
        fit_started = time.perf_counter()
        peer.fit([s.history for s in sequences])
        row = {"label": "SASRec (cornac, own recipe)", "seed": seed, "epochs": peer.model.n_epochs,
               "train_s": round(time.perf_counter() - fit_started, 1)}  # fmt: skip
        row["metrics"] = measure(lambda h, k, e, peer=peer: peer.recommend(h, k, exclude_seen=e), cases)
        rows.append(row)
    for row in rows:
        row["training_over_test_ndcg@10"] = ratios(row["metrics"])
    summary = summarise(rows)
    for entry in summary:
        found = [row for row in rows if row["label"] == entry["label"]]
        entry["training_over_test_ndcg@10"] = {
            protocol: mean_sd([row["training_over_test_ndcg@10"][protocol] for row in found]) for protocol in PROTOCOLS
        }
    stem = args.out / (f"memorisation-{source.name}" + (f"-{args.name}" if args.name else ""))
    document = {"dataset": source.name, "top_k": TOP_K, "results": rows, "summary": summary,
                "wall_s": round(time.perf_counter() - started, 1), "environment": env}  # fmt: skip
    write_results(stem, document, markdown(summary))
    plot(summary, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print(markdown(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
