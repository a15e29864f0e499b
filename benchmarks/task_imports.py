"""What an Airflow task pays before it does anything: the time to import what it needs and load the pipeline config,
and which heavy libraries that drags in, against the model stack in the same run, and against the code at an
earlier commit when ``--baseline-commit`` is given.

Every measurement is a fresh Python process (imports are cached within one), rounds interleaved across the cases so
that a change in the machine's load hits all of them. The cases:

- ``config``: load a pipeline config naming the LMIndexer method (what every task does first);
- ``validate / publish task``: the steps, their typed results, validation and search, plus the config: what the
  discover, validate, merge, check, publish and commit tasks import;
- ``model stack``: the indexers (torch, transformers, faiss, scikit-learn): what train and assign_shard import.

    python benchmarks/task_imports.py [--rounds 7] [--baseline-commit ed0463e]

Writes <out>/task_imports.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    RESULTS,
    ROOT,
    environment,
    format_mean_sd,
    markdown_table,
    mean_sd,
    result_file,
    stamp_figure,
    write_results,
)

HEAVY = ("torch", "transformers", "faiss", "sklearn", "great_expectations", "opensearchpy", "elasticsearch", "fastapi")
CONFIG = "{'base_uri': 's3://b', 'method': 'lmindexer', 'indexer': {'levels': 2, 'codebook_size': 8}}"
CASES = {
    "config": "import lmindexer.pipeline as p; from lmindexer.options import parse_config as c",
    "validate / publish task": (
        "import lmindexer.pipeline as p, lmindexer.pipeline.steps, lmindexer.validation, lmindexer.search; "
        "from lmindexer.options import parse_config as c"
    ),
    "model stack": (
        "import lmindexer.pipeline as p, lmindexer.pipeline.steps, lmindexer.indexers; "
        "from lmindexer.options import parse_config as c"
    ),
}


def probe(case: str) -> str:
    """A program that times the case's imports and config load, and reports the heavy modules then loaded."""
    return (
        "import json, sys, time\n"
        "t = time.perf_counter()\n"
        f"{CASES[case]}\n"
        f"c(p.PipelineConfig, {CONFIG})\n"
        "seconds = time.perf_counter() - t\n"
        f"print(json.dumps({{'seconds': seconds, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )


def measure(code_root: Path, case: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", probe(case)],
        capture_output=True,
        text=True,
        check=True,
        cwd=code_root,
        env={**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1"},
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def baseline_tree(commit: str, into: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(into), commit], cwd=ROOT, check=True, capture_output=True)
    return into


def plot(summary: dict[str, dict[str, dict]], path: Path) -> None:
    cases = list(CASES)
    versions = list(summary)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(versions)
    for i, version in enumerate(versions):
        means = [summary[version][c]["seconds"]["mean"] for c in cases]
        sds = [summary[version][c]["seconds"]["sd"] for c in cases]
        ax.bar([x + i * width for x in range(len(cases))], means, width, yerr=sds, label=version, capsize=3)
    ax.set_xticks([x + width * (len(versions) - 1) / 2 for x in range(len(cases))], cases)
    ax.set_ylabel("seconds to import and load the config")
    ax.set_title("What a task imports before it starts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per case (and per version)")
    parser.add_argument("--baseline-commit", help="also measure the code at this commit (a temporary worktree)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    env = environment()
    versions = {"this commit": ROOT}
    with tempfile.TemporaryDirectory(prefix="task-imports-") as tmp:
        if args.baseline_commit:
            versions[f"at {args.baseline_commit[:12]}"] = baseline_tree(args.baseline_commit, Path(tmp) / "baseline")
        try:
            samples: dict[str, dict[str, list[dict]]] = {v: {c: [] for c in CASES} for v in versions}
            for _ in range(args.rounds):
                for version, code_root in versions.items():
                    for case in CASES:
                        samples[version][case].append(measure(code_root, case))
        finally:
            if args.baseline_commit:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "baseline")], cwd=ROOT)

    summary = {
        version: {
            case: {
                "seconds": mean_sd([s["seconds"] for s in runs]),
                "heavy_modules_loaded": sorted({m for s in runs for m in s["heavy"]}),
            }
            for case, runs in by_case.items()
        }
        for version, by_case in samples.items()
    }
    document = {
        "benchmark": "task_imports",
        "environment": env,
        "rounds": args.rounds,
        "baseline_commit": args.baseline_commit,
        "cases": CASES,
        "results": summary,
    }
    rows = [
        [version, case, format_mean_sd(result["seconds"], ".2f"), ", ".join(result["heavy_modules_loaded"]) or "none"]
        for version, by_case in summary.items()
        for case, result in by_case.items()
    ]
    markdown = (
        "# What a task imports before it starts\n\n"
        f"Seconds to import a task's modules and load a pipeline config, each in a fresh process, mean ± SD over "
        f"{args.rounds} rounds (interleaved).\n\n"
        + markdown_table(["code", "task", "seconds", "heavy libraries loaded"], rows)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "task_imports"
    write_results(stem, document, markdown)
    plot(summary, result_file(stem, ".png"))
    stamp_figure(result_file(stem, ".png"))
    print(result_file(stem, ".md").read_text())


if __name__ == "__main__":
    main()
