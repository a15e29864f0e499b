"""Where a generative recommender's ranking comes from, on a held-out step of MovieLens-100k (or another log).

For each saved recommender, the same test step (each user's last item from every item before it, as
benchmarks/downstream.py scores it; the validation step with ``--split valid``) ranked five ways, over the full
ranking and with the history left out:

- the **whole model** with the beam it was trained and served with (``beam_size``, 20 by default): what
  benchmarks/downstream.py reports, measured again from the saved model;
- the whole model with a **wider beam** (each of ``--beams``): whether the search misses items the model scores
  higher (if the figures do not move, the search is not what limits the ranking);
- the **item prior alone** (``GenerativeModel.rank_by_item_prior``): every item scored by the cosine of the
  history's summary to its learned vector, exhaustively, the decoder and its ID tokens left out: the two-tower part
  of the model, and so how much the spelled-out IDs add on top of it;
- the **whole model and its item prior fused** (``GenerativeModel.recommend_fused``), by score fusion and by
  reciprocal rank fusion of the beam's items and the prior's top as many: whether the two parts, which rank about
  equally well alone, rank better together.

``--split valid`` scores each user's validation item from the items before it instead (for models trained with
benchmarks/downstream.py ``--split valid``: the test item is then never read), where a way to rank is chosen.

Recommenders are loaded from the directories benchmarks/downstream.py saves (--model LABEL=DIR, repeatable: models
with the same label are seeds of one recipe, summarised as mean +- SD).

    work=~/.cache/lmindexer/benchmarks/downstream/movielens-100k
    python benchmarks/recommender_parts.py \\
        --model "last-item, dropout 0.2=$work/model-rq-kmeans-sequence-trained-last-item-summary-dropout-0.2"

Writes <out>/recommender_parts-<dataset>[-<name>][-valid].json, .md and .png (--dataset: movielens-100k by default, or a
directory of another interaction log with its sequences.jsonl, as benchmarks/downstream.py reads it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
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
    result_file,
    stamp_figure,
    write_results,
)
from downstream import recommended_item_ids, scored_users, split_suffix
from memorisation import PROTOCOLS, parse_model, summarise

from lmindexer import datasets
from lmindexer.catalog import read_items
from lmindexer.downstream.generative import GenerativeConfig, GenerativeModel
from lmindexer.downstream.ranking import rank_metrics

TOP_K = 10
ITEM_PRIOR = "item prior alone"
# Each way recommend_fused combines the beam with the item prior, by its row's name.
FUSED = {
    "score": "whole model and item prior, score fusion",
    "rrf": "whole model and item prior, reciprocal rank fusion",
}
METRICS = ("ndcg@10", "recall@10")
# One way to rank: each history's top item_ids, with or without its own items.
Rank = Callable[[bool], list[list[str]]]


def item_ids(found: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[item_id for item_id, _ in ranked] for ranked in found]


def measure(model: GenerativeModel, beams: list[int], histories: list[list[str]], relevant: list[set[str]]) -> dict:
    """NDCG@10 and Recall@10 of each way to rank under both protocols, keyed "<way>, <protocol>": the model at its
    own beam, at each wider one (its options with only the beam changed, for the measurement's length), the item
    prior alone, and the two fused each way."""
    trained = model.config

    def at_beam(beam: int) -> Rank:
        def rank(exclude_seen: bool) -> list[list[str]]:
            model.config = GenerativeConfig.model_validate({**trained.model_dump(), "beam_size": beam})
            try:
                return recommended_item_ids(model, histories, TOP_K, exclude_seen, progress=True)
            finally:
                model.config = trained

        return rank

    def fused(fusion: str) -> Rank:
        return lambda exclude_seen: item_ids(
            model.recommend_fused(histories, TOP_K, fusion=fusion, exclude_seen=exclude_seen)
        )

    own = trained.beam_size
    ways: dict[str, Rank] = {f"whole model, beam {own} (as trained)": at_beam(own)}
    ways.update({f"whole model, beam {beam}": at_beam(beam) for beam in sorted(set(beams) - {own})})
    ways[ITEM_PRIOR] = lambda exclude_seen: item_ids(
        model.rank_by_item_prior(histories, TOP_K, exclude_seen=exclude_seen)
    )
    ways.update({name: fused(fusion) for fusion, name in FUSED.items()})
    metrics = {}
    for way, rank in ways.items():
        for protocol, exclude_seen in PROTOCOLS.items():
            scores = rank_metrics(rank(exclude_seen), relevant)
            metrics[f"{way}, {protocol}"] = {key: round(scores[key], 4) for key in METRICS}
            print(f"   {way}, {protocol}: {metrics[f'{way}, {protocol}']}", flush=True)
    return metrics


def markdown(summary: list[dict], dataset: str, split: str) -> str:
    header = ["model (seeds)", "ranked by"] + [f"{protocol}: {m}" for protocol in PROTOCOLS for m in METRICS]
    rows = []
    for entry in summary:
        for way in dict.fromkeys(key.rpartition(", ")[0] for key in entry["metrics"]):
            cells = [f"{entry['label']} ({', '.join(str(s) for s in entry['seeds'])})", way]
            cells += [format_mean_sd(entry["metrics"][f"{way}, {p}"][m]) for p in PROTOCOLS for m in METRICS]
            rows.append(cells)
    return (
        "# Where the recommender's ranking comes from: the whole model at its beam and a wider one, its item "
        f"prior alone, and the two fused ({dataset}, {split} step)\n\n" + markdown_table(header, rows)
    )


def plot(summary: list[dict], path: Path, split: str) -> None:
    fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(11, 4.5), sharey=True)
    for ax, protocol in zip(axes, PROTOCOLS, strict=True):
        ways_of = [list(dict.fromkeys(key.rpartition(", ")[0] for key in entry["metrics"])) for entry in summary]
        names = list(dict.fromkeys(way for found in ways_of for way in found))
        width = 0.8 / len(names)
        for n, way in enumerate(names):
            means = [e["metrics"].get(f"{way}, {protocol}", {}).get("ndcg@10", {}).get("mean", 0.0) for e in summary]
            sds = [e["metrics"].get(f"{way}, {protocol}", {}).get("ndcg@10", {}).get("sd", 0.0) for e in summary]
            ax.bar([i + n * width for i in range(len(summary))], means, width, yerr=sds, label=way)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(summary))], [e["label"] for e in summary], fontsize=7)
        ax.set_title(protocol)
    axes[0].set_ylabel(f"NDCG@10 ({split} step)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=parse_model, action="append", required=True, help="LABEL=DIR, repeatable")
    parser.add_argument("--beams", type=int, nargs="*", default=[100], help="wider beams to search with")
    parser.add_argument(
        "--dataset",
        default="movielens-100k",
        help="the data set the models were trained on: movielens-100k or a directory with a sequences.jsonl",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=datasets.SPLITS,
        help="score each user's test item (default) or validation item (models trained with benchmarks/downstream.py "
        "--split valid): where to choose a way to rank; a file of its own (-valid)",
    )
    parser.add_argument("--name", default="", help="a part of the files' names after the data set's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    source = data_source(parser, args.dataset, task="recommendation")
    env = environment()
    started = time.perf_counter()
    sequences = datasets.read_sequences(source.path() / datasets.SEQUENCES_FILE)
    catalogue = {item.item_id for item in read_items(source.path() / datasets.ITEMS_FILE)[0]}
    histories, targets, users = scored_users(sequences, args.split, catalogue)
    relevant = [{target} for target in targets]
    rows = []
    for label, directory in args.model:
        print(f"-- {label}: {directory}", flush=True)
        model = GenerativeModel.load(directory)
        rows.append({"label": label, "model_dir": str(directory), "seed": model.config.seed,
                     "options": model.config.model_dump(mode="json"),
                     "metrics": measure(model, args.beams, histories, relevant)})  # fmt: skip
    summary = summarise(rows)
    named = f"recommender_parts-{source.name}" + (f"-{args.name}" if args.name else "")
    stem = args.out / (named + split_suffix(args.split))
    document = {"dataset": source.name, "split": args.split, "users": users, "top_k": TOP_K, "beams": args.beams,
                "results": rows,
                "summary": summary, "wall_s": round(time.perf_counter() - started, 1), "environment": env}  # fmt: skip
    write_results(stem, document, markdown(summary, source.name, args.split))
    plot(summary, result_file(stem, ".png"), args.split)
    stamp_figure(result_file(stem, ".png"))
    print(markdown(summary, source.name, args.split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
