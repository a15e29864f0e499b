"""Semantic-ID quality of every indexer method, side by side, over several seeds, on one data set and one machine.

For each method at the same L and K and each seed: the method is fitted and saved, a fresh load of the snapshot
assigns every item (timed: the assign path's throughput), and the stored IDs are allocated by the library's ID table
under both last-level policies (``argmax``: each item's own last code; ``balanced``: the most preferred free code
within its prefix, see docs/semantic-ids.md). Reported per method and policy as mean +- SD over the seeds: AMI/NMI of
each prefix level against the data set's label, collision rate (items that share all L learned codes with another
item and so need a suffix), largest bucket, per-level utilisation; fit time; assign items/s. For ``lmindexer`` also
the drift (share of items whose earlier code changed after its position was trained: 0 by construction) and, per
phase, the label-free criterion that decided whether the learned change was kept.

The frozen-encoder embeddings the two-stage baselines share are computed once up front (their cost is reported as
the encoder's throughput) so that fit times compare the methods themselves; ``lmindexer`` reads raw text end to end,
and its assign throughput is compared with the frozen encoder's on the same texts at the same max length.

    python benchmarks/id_quality.py                                   # wiki-topics, L=3, K=32, 3 seeds
    python benchmarks/id_quality.py --dataset clothing-reviews
    python benchmarks/id_quality.py --dataset clothing-reviews --lm-preset tuned --seeds 0 1 2
    python benchmarks/id_quality.py --dataset clothing-reviews --lm-preset tuned --lm-max-length 128
    python benchmarks/id_quality.py --dataset movielens-100k --lm-option keep_learned=always   # an ablation
    python benchmarks/id_quality.py --dataset ~/data/books --label genre   # a catalogue of any other domain

``--dataset`` takes a built-in name or a directory holding an ``items.jsonl`` in the catalogue contract (what
``lmindexer validate`` checks); ``--label`` names the item field the IDs are scored against (a directory's default:
``category``). A directory's results are named after it.

Writes <out>/id_quality-<dataset>[-<preset>][-max-length-<N>][-seeds-<first>-<last>].json, .md and .png (the fast
preset has no suffix; ``--lm-max-length`` overrides the preset's tokens per text for ``lmindexer`` only, to see what
the length moves; ``--lm-option KEY=VALUE`` likewise sets any other ``lmindexer`` option over the preset's and names
the files after it, ``keep_learned=always`` -> ``-keep-learned-always``; seeds other than the reference 0 1 2, or 0
alone, name themselves, as in ``--seeds 0 1 2 3 4 5 6 7 8 9`` -> ``-seeds-0-9``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

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

from lmindexer import datasets
from lmindexer.assign import code_items
from lmindexer.catalog import read_items
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.errors import ConfigError
from lmindexer.idtable import Candidate, IdSpace, IdTable
from lmindexer.indexers import available_methods, create_indexer, load_snapshot
from lmindexer.indexers.embedding import EmbeddingIndexer
from lmindexer.methods import indexer_options
from lmindexer.metrics import evaluate_codes

ENCODER_SAMPLE = 512
LM_METHOD = "lmindexer"
POLICIES = ("argmax", "balanced")
REFERENCE_SEEDS = [0, 1, 2]


def seeds_suffix(seeds: list[int]) -> str:
    """The file-name suffix of a run over ``seeds``: none for the reference seeds (0 1 2) or seed 0 alone (the
    reference seed of one-seed runs), so that a run over other seeds never overwrites the reference figures;
    ``-seeds-<first>-<last>`` for consecutive seeds, every seed named otherwise."""
    if seeds in (REFERENCE_SEEDS, REFERENCE_SEEDS[:1]):
        return ""
    consecutive = len(seeds) > 1 and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return "-seeds-" + (f"{seeds[0]}-{seeds[-1]}" if consecutive else "-".join(str(seed) for seed in seeds))


def lm_option_overrides(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, Any]:
    """``--lm-option KEY=VALUE`` pairs as options (a value that reads as JSON, a number say, is taken as such;
    otherwise as text), in the order given; a pair without ``=`` or a key given twice is a usage error."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.strip():
            parser.error(f"--lm-option takes KEY=VALUE, not {pair!r}")
        if key.strip() in options:
            parser.error(f"--lm-option {key.strip()} is given twice")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options[key.strip()] = value
    return options


def options_suffix(options: dict[str, Any]) -> str:
    """The file-name suffix of ``--lm-option`` overrides: ``-<key>-<value>`` each, in the order given, with a decimal
    point as ``p`` and any other run of characters that are not letters or digits as one ``-`` (a value may be a
    path or an ``s3://`` address), so ``keep_learned=always`` -> ``-keep-learned-always``."""
    parts = (f"{key}-{value}".replace(".", "p") for key, value in options.items())
    return "".join("-" + re.sub(r"[^A-Za-z0-9]+", "-", part).strip("-") for part in parts)


def encoder_throughput(texts: list[str], max_length: int) -> float:
    """Items/s of the frozen encoder on uncached texts (what a cold catalogue costs the two-stage methods)."""
    encoder = TextEncoder(DEFAULT_ENCODER, max_length=max_length, use_cache=False)
    sample = texts[:ENCODER_SAMPLE]
    started = time.perf_counter()
    encoder.encode(sample)
    return len(sample) / (time.perf_counter() - started)


def stored_codes(indexer: Any, items: list, candidates: list[Candidate], policy: str) -> np.ndarray:
    """The learned codes the ID table stores for every item under ``policy`` (an allocation into an empty table)."""
    space = IdSpace(indexer.version, indexer.method, tuple(indexer.codebook_sizes), policy)
    table, _ = IdTable.empty(space).allocate(candidates)
    by_item = table.codes_of(item.item_id for item in items)
    return np.asarray([by_item[item.item_id] for item in items], dtype=np.int64)


def run_once(method: str, items: list, labels: list, options: dict, workdir: Path) -> dict[str, Any]:
    indexer = create_indexer(method, options)
    if hasattr(indexer, "checkpoint_dir"):
        indexer.checkpoint_dir = None  # a resumed fit would not measure the whole training
    started = time.perf_counter()
    indexer.fit(items, progress=True)
    fit_seconds = time.perf_counter() - started
    indexer.save(workdir / method)
    started = time.perf_counter()
    loaded = load_snapshot(workdir / method)
    candidates = code_items(loaded, items)  # the platform's one assignment path (lmindexer.assign)
    assign_seconds = time.perf_counter() - started
    run: dict[str, Any] = {
        "fit_seconds": round(fit_seconds, 2),
        "assign_items_per_second": round(len(items) / assign_seconds, 1),
        "config": loaded.config.model_dump(mode="json"),
        "policies": {},
    }
    for policy in POLICIES:
        report = evaluate_codes(stored_codes(loaded, items, candidates, policy), loaded.codebook_sizes, labels)
        run["policies"][policy] = {
            "ami": [row["ami"] for row in report.agreement],
            "nmi": [row["nmi"] for row in report.agreement],
            "collision_rate": report.collisions["collision_rate"],
            "largest_bucket": report.collisions["largest_bucket"],
            "utilisation": [row["utilisation"] for row in report.levels],
        }
    if method == LM_METHOD:
        training = indexer.manifest["training"]
        run["drift"] = training["earlier_codes_changed"]
        run["phases"] = [
            {k: phase.get(k) for k in ("phase", "kept", "heldout_cross_entropy", "seconds")}
            for phase in training["phases"]
        ]
    return run


def summarise(method: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- SD over seeds of every figure, per policy."""
    summary: dict[str, Any] = {
        "method": method,
        "seeds": len(runs),
        "fit_seconds": mean_sd([r["fit_seconds"] for r in runs]),
        "assign_items_per_second": mean_sd([r["assign_items_per_second"] for r in runs]),
        "policies": {},
    }
    for policy in POLICIES:
        rows = [r["policies"][policy] for r in runs]
        levels = len(rows[0]["ami"])
        summary["policies"][policy] = {
            "ami": [mean_sd([row["ami"][level] for row in rows]) for level in range(levels)],
            "nmi": [mean_sd([row["nmi"][level] for row in rows]) for level in range(levels)],
            "collision_rate": mean_sd([row["collision_rate"] for row in rows]),
            "largest_bucket": mean_sd([row["largest_bucket"] for row in rows]),
            "min_utilisation": mean_sd([min(row["utilisation"]) for row in rows]),
        }
    if method == LM_METHOD:
        summary["max_drift"] = max(max(r["drift"], default=0.0) for r in runs)
        summary["phases_kept"] = [[p["kept"] for p in r["phases"]] for r in runs]
    return summary


def compare(summaries: list[dict[str, Any]], encoder_speed: float | None) -> dict[str, Any] | None:
    """lmindexer against the best baseline of the same run, under the same last-level policy."""
    ours = next((s for s in summaries if s["method"] == LM_METHOD), None)
    baselines = [s for s in summaries if s["method"] != LM_METHOD]
    if ours is None or not baselines:
        return None
    result: dict[str, Any] = {"max_drift": ours["max_drift"]}
    for policy in POLICIES:
        mine = ours["policies"][policy]
        first = max(baselines, key=lambda s: s["policies"][policy]["ami"][0]["mean"])
        full = max(baselines, key=lambda s: s["policies"][policy]["ami"][-1]["mean"])
        rq = next((s for s in baselines if s["method"] == "rq-kmeans"), None)
        fewest = min(baselines, key=lambda s: s["policies"][policy]["collision_rate"]["mean"])
        best_first = first["policies"][policy]["ami"][0]
        result[policy] = {
            "ami_level_1": mine["ami"][0],
            "best_baseline_level_1": first["method"],
            "best_baseline_ami_level_1": best_first,
            "ami_level_1_ratio": mine["ami"][0]["mean"] / best_first["mean"],
            "ami_level_1_within_one_sd": mine["ami"][0]["mean"]
            >= best_first["mean"] - max(best_first["sd"], mine["ami"][0]["sd"]),
            "ami_full": mine["ami"][-1],
            "best_baseline_full": full["method"],
            "best_baseline_ami_full": full["policies"][policy]["ami"][-1],
            "collision_rate": mine["collision_rate"],
            "rq_kmeans_collision_rate": rq["policies"][policy]["collision_rate"] if rq else None,
            "fewest_collisions": fewest["method"],
            "fewest_collision_rate": fewest["policies"][policy]["collision_rate"],
            "min_utilisation": mine["min_utilisation"],
        }
    if encoder_speed:
        result["assign_items_per_second"] = ours["assign_items_per_second"]["mean"]
        result["encoder_items_per_second_same_max_length"] = round(encoder_speed, 1)
        result["assign_throughput_ratio"] = round(ours["assign_items_per_second"]["mean"] / encoder_speed, 3)
    return result


def methods_markdown(summaries: list[dict[str, Any]], levels: int) -> str:
    header = ["method", "last level", *[f"AMI@{n}" for n in range(1, levels + 1)], f"NMI@{levels}", "collision rate",
              "largest bucket", "min utilisation", "fit s", "assign items/s"]  # fmt: skip
    rows = []
    for s in summaries:
        for policy in POLICIES:
            p = s["policies"][policy]
            rows.append([
                s["method"], policy, *[format_mean_sd(a) for a in p["ami"]], format_mean_sd(p["nmi"][-1]),
                format_mean_sd(p["collision_rate"], ".2%"),
                format_mean_sd(p["largest_bucket"], ".1f"),
                f"{p['min_utilisation']['mean']:.0%}", format_mean_sd(s["fit_seconds"], ".1f"),
                format_mean_sd(s["assign_items_per_second"], ".0f"),
            ])  # fmt: skip
    return markdown_table(header, rows)


def comparison_markdown(comparison: dict[str, Any]) -> str:
    rows = []
    for policy in POLICIES:
        c = comparison[policy]
        rq = c["rq_kmeans_collision_rate"]
        rows += [
            [policy, "AMI@1", format_mean_sd(c["ami_level_1"]),
             f"{format_mean_sd(c['best_baseline_ami_level_1'])} ({c['best_baseline_level_1']})",
             f"{c['ami_level_1_ratio']:.3f}x", "yes" if c["ami_level_1_within_one_sd"] else "no"],
            [policy, "AMI@L (full learned prefix)", format_mean_sd(c["ami_full"]),
             f"{format_mean_sd(c['best_baseline_ami_full'])} ({c['best_baseline_full']})",
             f"{c['ami_full']['mean'] / c['best_baseline_ami_full']['mean']:.3f}x", ""],
            [policy, "collision rate", f"{c['collision_rate']['mean']:.2%}",
             f"rq-kmeans {rq['mean']:.2%}; fewest {c['fewest_collision_rate']['mean']:.2%} ({c['fewest_collisions']})"
             if rq else f"{c['fewest_collision_rate']['mean']:.2%} ({c['fewest_collisions']})", "",
             "yes" if rq and c["collision_rate"]["mean"] <= rq["mean"] else "no"],
            [policy, "lowest per-level utilisation", f"{c['min_utilisation']['mean']:.0%}", "", "",
             "yes" if c["min_utilisation"]["mean"] >= 0.9 else "no"],
        ]  # fmt: skip
    rows.append(["", "earlier-code drift (max over seeds and levels)", f"{comparison['max_drift']:.4f}", "", "",
                 "yes" if comparison["max_drift"] == 0 else "no"])  # fmt: skip
    if "assign_throughput_ratio" in comparison:
        rows.append(["", "assign items/s vs the frozen encoder, same max length",
                     f"{comparison['assign_items_per_second']:.0f}",
                     f"{comparison['encoder_items_per_second_same_max_length']:.0f}",
                     f"{comparison['assign_throughput_ratio']:.2f}x",
                     "yes" if comparison["assign_throughput_ratio"] >= 0.5 else "no"])  # fmt: skip
    header = ["last level", "figure", "lmindexer", "best baseline", "ratio", "aim met"]
    return markdown_table(header, rows)


def plot(summaries: list[dict[str, Any]], path: Path, title: str) -> None:
    fig, (ax_ami, ax_collision) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [s["method"] for s in summaries]
    x = np.arange(len(names))
    for offset, policy in ((-0.2, "argmax"), (0.2, "balanced")):
        ami = [s["policies"][policy]["ami"][0] for s in summaries]
        ax_ami.bar(x + offset, [a["mean"] for a in ami], 0.4, yerr=[a["sd"] for a in ami], capsize=3, label=policy)
        collisions = [s["policies"][policy]["collision_rate"] for s in summaries]
        ax_collision.bar(x + offset, [c["mean"] for c in collisions], 0.4, yerr=[c["sd"] for c in collisions],
                         capsize=3, label=policy)  # fmt: skip
    for ax, label in ((ax_ami, "AMI@1 against the label (mean ± SD)"), (ax_collision, "collision rate")):
        ax.set_xticks(x, names, rotation=20)
        ax.set_ylabel(label)
        ax.legend(title="last level")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        default="wiki-topics",
        help=f"a built-in data set ({', '.join(datasets.DATASET_NAMES)}) or a directory holding an items.jsonl",
    )
    parser.add_argument(
        "--label", default=None, help="item field the IDs are scored against (default: the data set's; category)"
    )
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all ({', '.join(available_methods())})")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N items (quick runs)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=REFERENCE_SEEDS,
        help="default: 0 1 2; other seeds than these (or 0 alone) write files of their own (-seeds-<first>-<last>)",
    )
    parser.add_argument("--lm-preset", default="fast", choices=["fast", "tuned", "default"])
    parser.add_argument(
        "--lm-max-length", type=int, default=None, help="lmindexer's tokens per text (default: the preset's)"
    )
    parser.add_argument(
        "--lm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an lmindexer option over the preset's, e.g. keep_learned=always (repeatable; a measurement, not a "
        "preset: each names the result files, -keep-learned-always)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    source = data_source(parser, args.dataset, label_field=args.label)
    env = environment()
    label = source.label_field
    items, read = read_items(source.path(progress=False) / datasets.ITEMS_FILE)
    if not items:
        parser.error(f"no item of {source.name} meets the catalogue contract ({read.rejected} rows rejected)")
    items = items[: args.limit] if args.limit else items
    labels = [item.field_value(label) for item in items]
    if all(value is None for value in labels):  # AMI would have nothing to score against
        parser.error(f"no item of {source.name} has a {label!r} field to score the IDs against: name one with --label")
    methods = args.methods or available_methods()
    common = {"levels": args.levels, "codebook_size": args.codebook_size}
    lm_options = {"preset": args.lm_preset}
    if args.lm_max_length is not None:
        if LM_METHOD not in methods:
            parser.error(f"--lm-max-length applies to {LM_METHOD}, which --methods leaves out")
        lm_options["max_length"] = args.lm_max_length
    extra_options = lm_option_overrides(parser, args.lm_option)
    if extra_options and LM_METHOD not in methods:
        parser.error(f"--lm-option applies to {LM_METHOD}, which --methods leaves out")
    lm_options.update(extra_options)
    if LM_METHOD in methods:
        try:  # refuse bad options before any method trains, not after the first baselines
            indexer_options(LM_METHOD, {**common, **lm_options})
        except ConfigError as error:
            parser.error(str(error))

    # Warm the shared embedding cache once so that fit/assign times measure the methods, not the encoder.
    probe = create_indexer("rq-kmeans", common)
    assert isinstance(probe, EmbeddingIndexer)
    texts = probe.texts(items)
    print(f"{source.name}: {len(items)} items; embedding once (cached)", flush=True)
    probe.embed(texts, progress=True)

    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in methods:
                print(f"-- {method}, seed {seed}", flush=True)
                options = {**common, "seed": seed}
                if method == LM_METHOD:
                    options.update(lm_options)
                run = run_once(method, items, labels, options, Path(tmp) / f"seed-{seed}")
                run["seed"] = seed
                runs[method].append(run)
    summaries = [summarise(method, runs[method]) for method in methods]
    encoder_speed = None
    if LM_METHOD in runs:
        encoder_speed = encoder_throughput(texts, runs[LM_METHOD][0]["config"]["max_length"])
    comparison = compare(summaries, encoder_speed)

    suffix = "" if args.lm_preset == "fast" else f"-{args.lm_preset}"
    if args.lm_max_length is not None:
        suffix += options_suffix({"max_length": args.lm_max_length})
    suffix += options_suffix(extra_options)
    suffix += seeds_suffix(args.seeds)
    stem = args.out / f"id_quality-{source.name}{suffix}"
    document = {
        "dataset": source.name,
        "built_in": source.directory is None,
        "label": label,
        "items": len(items),
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "seeds": args.seeds,
        "lm_preset": args.lm_preset,
        "lm_max_length": args.lm_max_length,
        "lm_options": extra_options,
        "environment": env,
        "comparison": comparison,
        "summaries": summaries,
        "runs": runs,
    }
    title = f"{source.name}: {len(items)} items, L={args.levels}, K={args.codebook_size}, seeds {args.seeds}"
    if LM_METHOD in runs:
        title += f", lmindexer preset {args.lm_preset}"
        if args.lm_max_length is not None:
            title += f" at {args.lm_max_length} tokens"
        if extra_options:
            title += ", " + ", ".join(f"{key}={value}" for key, value in extra_options.items())
    table = methods_markdown(summaries, args.levels)
    if comparison is not None:
        table += "\n\n" + comparison_markdown(comparison)
    spread = f"Mean ± SD over {len(args.seeds)} seeds." if len(args.seeds) > 1 else "One seed: no spread to report."
    markdown = (
        f"# Semantic-ID quality — {title}\n\nLabel: `{label}`. {spread}\n\n{table}\n\n"
        f"![AMI@1 and collision rate per method and last-level policy]({stem.name}.png)\n"
    )
    write_results(stem, document, markdown)
    plot(summaries, result_file(stem, ".png"), title)
    stamp_figure(result_file(stem, ".png"))
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
