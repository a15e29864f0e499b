"""Quality report files: JSON, Markdown and PNG plots (code usage per level; label x level-1 code heat map)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written on servers without a display

import matplotlib.pyplot as plt
import numpy as np

from lmindexer.metrics import QualityReport

_MAX_HEATMAP_LABELS = 40


def plot_code_usage(report: QualityReport, path: Path) -> None:
    levels = report.levels
    fig, axes = plt.subplots(len(levels), 1, figsize=(10, 2.4 * len(levels)), squeeze=False)
    for ax, row in zip(axes[:, 0], levels, strict=True):
        counts = np.asarray(row["counts"])
        ax.bar(np.arange(len(counts)), counts, width=1.0, color="#3b6ea5")
        ax.set_title(
            f"level {row['level']}: {row['used']}/{row['codebook_size']} codes used, "
            f"perplexity {row['perplexity']:.1f}",
            fontsize=10,
        )
        ax.set_xlim(-0.5, len(counts) - 0.5)
        ax.set_ylabel("items")
    axes[-1, 0].set_xlabel("code")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_label_heatmap(
    first_codes: np.ndarray, labels: Sequence[Any], codebook_size: int, path: Path, label_name: str
) -> None:
    """Share of each label's items that took each level-1 code (rows sum to 1)."""
    mask = np.array([label is not None for label in labels], dtype=bool)
    names = [str(label) for label in np.asarray(labels, dtype=object)[mask]]
    codes = first_codes[mask]
    frequent = [name for name, _ in Counter(names).most_common(_MAX_HEATMAP_LABELS)]
    index = {name: i for i, name in enumerate(sorted(frequent))}
    matrix = np.zeros((len(index), codebook_size))
    for name, code in zip(names, codes, strict=True):
        if name in index:
            matrix[index[name], code] += 1
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(4 + codebook_size * 0.25, 24), 1.5 + 0.32 * len(index)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(matrix.max(), 1e-9))
    ax.set_yticks(range(len(index)), list(index))
    ax.set_xlabel("level-1 code")
    ax.set_title(f"{label_name} × level-1 code (share of each {label_name}'s items)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    report: QualityReport,
    directory: str | Path,
    *,
    codes: np.ndarray | None = None,
    labels: Sequence[Any] | None = None,
    title: str = "Semantic ID quality",
) -> dict[str, Path]:
    """Write ``quality.json``, ``quality.md`` and the plots into ``directory``; returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "quality.json", "markdown": out / "quality.md", "usage_plot": out / "code_usage.png"}
    paths["json"].write_text(json.dumps(report.to_dict(with_counts=True), indent=2) + "\n")
    plot_code_usage(report, paths["usage_plot"])
    figures = [f"![code usage per level]({paths['usage_plot'].name})"]
    if codes is not None and labels is not None and report.label and report.labelled_items:
        paths["heatmap"] = out / "label_heatmap.png"
        plot_label_heatmap(codes[:, 0], labels, report.levels[0]["codebook_size"], paths["heatmap"], report.label)
        figures.append(f"![{report.label} by level-1 code]({paths['heatmap'].name})")
    context = "".join(f"- {k}: {v}\n" for k, v in report.context.items())
    paths["markdown"].write_text(f"# {title}\n\n{context}\n{report.to_markdown()}\n" + "\n\n".join(figures) + "\n")
    return paths
