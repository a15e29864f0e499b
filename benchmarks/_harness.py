"""What every benchmark records and writes: the machine, the code's commit, the load while it ran, and its results
as JSON, Markdown and PNG side by side.

A benchmark figure is only worth quoting with the commit it was measured at and how busy the machine was: a second
process on a 2-core machine changes timings several-fold. So every JSON carries ``environment`` from
:func:`environment` (load average at the start) and :func:`finish` adds the load average at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lmindexer import datasets

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "transformers", "faiss-cpu", "scikit-learn", "numpy", "pyarrow", "lmindexer")


def git_commit() -> dict[str, Any]:
    """The commit the measured code is at, and whether the working tree differed from it."""

    def git(*args: str) -> str:
        completed = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return completed.stdout.strip() if completed.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or None
    # Measured code only: result files written by earlier runs are not the code being measured.
    dirty = bool(
        git("status", "--porcelain", "--untracked-files=no", "--", "lmindexer", "benchmarks", ":!benchmarks/results")
    )
    return {"commit": commit, "uncommitted_changes": dirty}


def package_versions(names: Sequence[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where there is no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(extra_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Machine, versions (:data:`PACKAGES` and ``extra_packages``), commit and the load average at the start."""
    import torch

    from lmindexer.precision import native_bf16

    versions = package_versions([*PACKAGES, *extra_packages])
    return {
        **git_commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        # Figures from two machines compare only with the same CPU: bf16, for one, is native on some and emulated
        # (several times slower) on others, which decides what ``--precision auto`` runs.
        "cpu_model": cpu_model(),
        "native_bf16": native_bf16("cpu"),
        "cpu_count": os.cpu_count(),
        "cpu_threads_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
        "command": " ".join(["python", *sys.argv]),
    }


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end to the document's environment (a busy machine shows in the figures)."""
    document.setdefault("environment", {})["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return document


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation of per-seed values (SD 0 for a single value)."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def format_mean_sd(summary: dict[str, Any], spec: str = ".4f") -> str:
    """``mean ± SD``; a single seed's value alone, since an SD of 0 would read as no spread at all (the table's
    caption says it is one seed)."""
    if summary.get("n", 2) == 1:
        return f"{summary['mean']:{spec}}"
    return f"{summary['mean']:{spec}} ± {summary['sd']:{spec}}"


def format_gain(summary: dict[str, Any], spec: str = ".4f") -> str:
    """A signed gain ``+mean ± SD`` (the SD unsigned); a single seed's gain alone, as :func:`format_mean_sd`."""
    if summary.get("n", 2) == 1:
        return f"{summary['mean']:+{spec}}"
    return f"{summary['mean']:+{spec}} ± {summary['sd']:{spec}}"


LOAD_FIGURES = ("p50_ms", "p99_ms", "mean_ms", "requests_per_s")


def medians_over_passes(
    runs: Sequence[dict[str, Any]],
    by: str,
    names: Sequence[str],
    users: Sequence[int],
    *,
    spread: str,
    count_field: str,
) -> list[dict[str, Any]]:
    """Load-test rows summarised per ``by`` value (in ``names`` order) and user count: requests and failures summed,
    the median over the passes of each of :data:`LOAD_FIGURES`, the passes' range of ``spread`` (as
    ``<spread>_range``) and their number (as ``count_field``)."""
    summary = []
    for name in names:
        for count in users:
            found = [r for r in runs if r[by] == name and r["users"] == count]
            if not found:
                continue
            summary.append({
                by: name, "users": count, count_field: len(found),
                "requests": sum(r["requests"] for r in found), "failures": sum(r["failures"] for r in found),
                **{key: round(statistics.median(r[key] for r in found), 2) for key in LOAD_FIGURES},
                f"{spread}_range": [min(r[spread] for r in found), max(r[spread] for r in found)],
            })  # fmt: skip
    return summary


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def result_file(stem: Path, extension: str) -> Path:
    """``<stem><extension>``: the extension appended, never replacing part of the stem. A result's stem may hold a
    dot (``downstream-movielens-100k-dropout-0.2-seed-1``) that ``Path.with_suffix`` would take for an extension
    and cut off, so that runs differing only after the dot would write one file."""
    return stem.with_name(stem.name + extension)


def write_results(stem: Path, document: dict[str, Any], markdown: str) -> None:
    """``<stem>.json`` (with the load at the end) and ``<stem>.md``; the caller writes ``result_file(stem, ".png")``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    finish(document)
    # At the top level too, so that a reader (or a check) ties the figures to code without knowing the layout: under
    # both names such readers look for, ``git_commit`` and ``commit``.
    env = document["environment"]
    document = {"git_commit": env.get("commit"), "commit": env.get("commit"),
                "uncommitted_changes": env.get("uncommitted_changes"),
                "load_average": {"start": env["load_average_at_start"], "end": env["load_average_at_end"]},
                **document}  # fmt: skip
    result_file(stem, ".json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    env = document["environment"]
    footer = (
        f"\n\nMeasured at commit `{(env.get('commit') or 'unknown')[:12]}`"
        f"{' (with uncommitted changes)' if env.get('uncommitted_changes') else ''}; load average "
        f"{env['load_average_at_start'][0]:.2f} at the start, {env['load_average_at_end'][0]:.2f} at the end "
        f"({env['cpu_threads_available']} CPU threads). Command: `{env['command']}`\n"
    )
    result_file(stem, ".md").write_text(markdown.rstrip() + footer)


def stamp_figure(png: Path) -> None:
    """Write into ``png`` (a PNG text chunk) the commit and load its sibling ``.json`` records, so the figure can be
    tied to the code it measured even when it travels alone (in docs, a slide, an issue)."""
    from PIL import Image, PngImagePlugin

    document = json.loads(png.with_suffix(".json").read_text())
    load = document.get("load_average") or {}
    info = PngImagePlugin.PngInfo()
    info.add_text("lmindexer-git-commit", str(document["git_commit"]))
    info.add_text("lmindexer-uncommitted-changes", json.dumps(document.get("uncommitted_changes")))
    info.add_text("lmindexer-load-average", json.dumps(load))
    with Image.open(png) as image:
        image.load()
        image.save(png, pnginfo=info)


def data_source(parser: argparse.ArgumentParser, spec: str, **options: Any) -> datasets.DataSource:
    """``--dataset``'s data set (:func:`lmindexer.datasets.data_source` with ``options``); one it refuses is a usage
    error of the script, naming what is missing."""
    try:
        return datasets.data_source(spec, **options)
    except ValueError as error:
        parser.error(str(error))
