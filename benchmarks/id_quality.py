"""Semantic-ID quality of every indexer method, side by side, on one data set and one machine.

For each method at the same L and K: AMI/NMI of each prefix level against the label, collision rate, largest bucket,
per-level utilisation, fit time and assign time (a fresh snapshot load + codes for every item). The frozen-encoder
embeddings the two-stage baselines share are computed once up front (their cost is reported separately as encoder
throughput) so fit and assign times compare the methods themselves. ``lmindexer`` reads raw text end to end, so its
fit time includes encoding the catalogue and its assign throughput is compared with the frozen encoder's on the same
texts at the same max length.

    python benchmarks/id_quality.py                       # wiki-topics, L=3, K=32, all methods
    python benchmarks/id_quality.py --dataset clothing-reviews --label class_name
    python benchmarks/id_quality.py --methods rq-kmeans hkmeans --lm-preset default

Writes <out>/id_quality-<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from lmindexer import datasets
from lmindexer.catalog import read_items
from lmindexer.embeddings import DEFAULT_ENCODER, TextEncoder
from lmindexer.indexers import available_methods, create_indexer, load_snapshot
from lmindexer.indexers.embedding import EmbeddingIndexer
from lmindexer.metrics import evaluate_codes

ENCODER_SAMPLE = 512
LM_METHOD = "lmindexer"


def encoder_throughput(texts: list[str], max_length: int) -> float:
    """Items/s of the frozen encoder on uncached texts (what a cold catalogue costs the two-stage methods)."""
    encoder = TextEncoder(DEFAULT_ENCODER, max_length=max_length, use_cache=False)
    sample = texts[:ENCODER_SAMPLE]
    started = time.perf_counter()
    encoder.encode(sample)
    return len(sample) / (time.perf_counter() - started)


def run_method(method: str, items: list, labels: list, options: dict, workdir: Path) -> dict:
    indexer = create_indexer(method, options)
    if hasattr(indexer.config, "preset"):
        # a resumed fit would not measure the whole training: start from scratch
        indexer.checkpoint_dir = None
    started = time.perf_counter()
    indexer.fit(items, progress=True)
    fit_seconds = time.perf_counter() - started
    indexer.save(workdir / method)
    started = time.perf_counter()
    codes = load_snapshot(workdir / method).codes(items)
    assign_seconds = time.perf_counter() - started
    report = evaluate_codes(codes, indexer.codebook_sizes, labels, label_name="label")
    return {
        "method": method,
        "fit_seconds": round(fit_seconds, 2),
        "assign_seconds": round(assign_seconds, 2),
        "assign_items_per_second": round(len(items) / assign_seconds, 1),
        "agreement": report.agreement,
        "collision_rate": report.collisions["collision_rate"],
        "largest_bucket": report.collisions["largest_bucket"],
        "distinct_tuples": report.collisions["distinct_tuples"],
        "utilisation": [row["utilisation"] for row in report.levels],
        "perplexity": [round(row["perplexity"], 2) for row in report.levels],
        "config": indexer.config.model_dump(mode="json"),
        "manifest": indexer.manifest,
    }


def compare_with_baselines(results: list[dict], encoder_speed: dict[int, float]) -> dict | None:
    """lmindexer against the best two-stage baseline of the same run: the figures the method is judged by."""
    ours = next((r for r in results if r["method"] == LM_METHOD), None)
    baselines = [r for r in results if r["method"] != LM_METHOD]
    if ours is None or not baselines:
        return None

    def best(key) -> dict:
        return max(baselines, key=key)

    levels = len(ours["agreement"])
    first = best(lambda r: r["agreement"][0]["ami"])
    full = best(lambda r: r["agreement"][-1]["ami"])
    fewest = min(baselines, key=lambda r: r["collision_rate"])
    max_length = ours["config"]["max_length"]
    return {
        "ami_level_1": ours["agreement"][0]["ami"],
        "best_baseline_ami_level_1": first["agreement"][0]["ami"],
        "best_baseline_level_1": first["method"],
        "ami_level_1_ratio": round(ours["agreement"][0]["ami"] / first["agreement"][0]["ami"], 3),
        f"ami_level_{levels}": ours["agreement"][-1]["ami"],
        f"best_baseline_ami_level_{levels}": full["agreement"][-1]["ami"],
        f"best_baseline_level_{levels}": full["method"],
        "full_prefix_ami_ratio": round(ours["agreement"][-1]["ami"] / full["agreement"][-1]["ami"], 3),
        "collision_rate": ours["collision_rate"],
        "best_baseline_collision_rate": fewest["collision_rate"],
        "best_baseline_collisions": fewest["method"],
        "min_utilisation": min(ours["utilisation"]),
        "fit_seconds": ours["fit_seconds"],
        "preset": ours["config"]["preset"],
        "assign_items_per_second": ours["assign_items_per_second"],
        "encoder_items_per_second_same_max_length": round(encoder_speed[max_length], 1),
        "assign_throughput_ratio": round(ours["assign_items_per_second"] / encoder_speed[max_length], 3),
    }


def comparison_markdown(comparison: dict) -> str:
    level_keys = [k for k in comparison if k.startswith("ami_level_") and k != "ami_level_1" and "ratio" not in k]
    full_key = level_keys[0]
    levels = full_key.rsplit("_", 1)[1]
    rows = [
        ("AMI@1", f"{comparison['ami_level_1']:.4f}",
         f"{comparison['best_baseline_ami_level_1']:.4f} ({comparison['best_baseline_level_1']})",
         f"{comparison['ami_level_1_ratio']:.3f}x", ">= 1.1x"),
        (f"AMI@{levels} (full learned prefix)", f"{comparison[full_key]:.4f}",
         f"{comparison[f'best_baseline_ami_level_{levels}']:.4f} ({comparison[f'best_baseline_level_{levels}']})",
         f"{comparison['full_prefix_ami_ratio']:.3f}x", ">= 1.1x"),
        ("collision rate", f"{comparison['collision_rate']:.2%}",
         f"{comparison['best_baseline_collision_rate']:.2%} ({comparison['best_baseline_collisions']})", "",
         "no worse"),
        ("lowest per-level utilisation", f"{comparison['min_utilisation']:.0%}", "", "", ">= 90%"),
        ("assign items/s (vs the encoder, same max length)", f"{comparison['assign_items_per_second']:.1f}",
         f"{comparison['encoder_items_per_second_same_max_length']:.1f} (MiniLM embedding)",
         f"{comparison['assign_throughput_ratio']:.3f}x", ">= 0.5x"),
        (f"fit time, preset {comparison['preset']}", f"{comparison['fit_seconds']:.0f} s", "", "", ""),
    ]  # fmt: skip
    lines = ["| lmindexer vs best baseline | lmindexer | best baseline | ratio | aim |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(results: list[dict], levels: int) -> str:
    ami = " | ".join(f"AMI@{level}" for level in range(1, levels + 1))
    nmi = " | ".join(f"NMI@{level}" for level in range(1, levels + 1))
    header = f"| method | {ami} | {nmi} | collision rate | largest bucket | utilisation per level | fit s | assign s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        amis = " | ".join(f"{row['ami']:.4f}" for row in r["agreement"])
        nmis = " | ".join(f"{row['nmi']:.4f}" for row in r["agreement"])
        utilisation = " / ".join(f"{u:.0%}" for u in r["utilisation"])
        lines.append(
            f"| {r['method']} | {amis} | {nmis} | {r['collision_rate']:.2%} | {r['largest_bucket']} | "
            f"{utilisation} | {r['fit_seconds']:.1f} | {r['assign_seconds']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], levels: int, path: Path, title: str) -> None:
    fig, (ax_ami, ax_collision) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(len(results), 1)
    x = np.arange(levels)
    for i, r in enumerate(results):
        values = [row["ami"] for row in r["agreement"]]
        ax_ami.bar(x + i * width - 0.4 + width / 2, values, width, label=r["method"])
    ax_ami.set_xticks(x, [f"level {level}" for level in range(1, levels + 1)])
    ax_ami.set_ylabel("AMI against the label")
    ax_ami.set_title("Label agreement of each ID prefix")
    ax_ami.legend()
    ax_collision.bar([r["method"] for r in results], [r["collision_rate"] for r in results], color="#a55")
    ax_collision.set_ylabel("collision rate")
    ax_collision.set_title("Items sharing learned codes")
    ax_collision.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="wiki-topics", choices=datasets.DATASET_NAMES)
    parser.add_argument("--label", default="category")
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all ({', '.join(available_methods())})")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N items (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm-preset", default="fast", choices=["fast", "default"], help="preset of lmindexer")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    items, _ = read_items(datasets.items_path(args.dataset, progress=False))
    items = items[: args.limit] if args.limit else items
    labels = [item.field_value(args.label) for item in items]
    methods = args.methods or available_methods()
    common = {"levels": args.levels, "codebook_size": args.codebook_size, "seed": args.seed}

    # Warm the shared embedding cache once so that fit/assign times measure the methods, not the encoder.
    probe = create_indexer("rq-kmeans", common)
    assert isinstance(probe, EmbeddingIndexer)
    texts = probe.texts(items)
    print(f"{args.dataset}: {len(items)} items; measuring encoder throughput, then embedding (cached)", flush=True)
    throughput = encoder_throughput(texts, probe.config.max_length)
    encoder_speed = {probe.config.max_length: throughput}
    probe.embed(texts, progress=True)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            print(f"-- {method}", flush=True)
            options = {**common, "preset": args.lm_preset} if method == LM_METHOD else common
            results.append(run_method(method, items, labels, options, Path(tmp)))
    ours = next((r for r in results if r["method"] == LM_METHOD), None)
    if ours is not None and ours["config"]["max_length"] not in encoder_speed:
        length = ours["config"]["max_length"]
        encoder_speed[length] = encoder_throughput(texts, length)
    comparison = compare_with_baselines(results, encoder_speed)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"id_quality-{args.dataset}"
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    document = {
        "dataset": args.dataset,
        "label": args.label,
        "items": len(items),
        "levels": args.levels,
        "codebook_size": args.codebook_size,
        "encoder_items_per_second": round(throughput, 1),
        "encoder_items_per_second_by_max_length": {str(k): round(v, 1) for k, v in encoder_speed.items()},
        "comparison": comparison,
        "environment": environment,
        "command": " ".join(["python", *sys.argv]),
        "results": results,
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    table = markdown_table(results, args.levels)
    if comparison is not None:
        table += "\n\n" + comparison_markdown(comparison)
    title = f"{args.dataset}: {len(items)} items, L={args.levels}, K={args.codebook_size}"
    stem.with_suffix(".md").write_text(
        f"# Semantic-ID quality — {title}\n\n"
        f"Command: `{document['command']}`\n\n{table}\n\n"
        f"Frozen encoder ({DEFAULT_ENCODER}) throughput, uncached: {throughput:.1f} items/s "
        f"({environment['cpu_threads']} CPU threads). Fit and assign times exclude embedding.\n\n"
        f"![AMI per level and collision rate]({stem.name}.png)\n"
    )
    plot(results, args.levels, stem.with_suffix(".png"), title)
    print(table)
    print(f"written: {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
