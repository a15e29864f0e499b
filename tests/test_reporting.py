from __future__ import annotations

import json

import numpy as np

from lmindexer.metrics import evaluate_codes
from lmindexer.reporting import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_files(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(200, 3))
    labels = [f"topic-{c % 3}" if i % 10 else None for i, c in enumerate(codes[:, 0])]
    report = evaluate_codes(codes, (8, 8, 8), labels, label_name="category")
    report.context = {"method": "test"}
    paths = write_report(report, tmp_path / "r", codes=codes, labels=labels)
    assert set(paths) == {"json", "markdown", "usage_plot", "heatmap"}
    data = json.loads(paths["json"].read_text())
    assert data["levels"][0]["counts"] == np.bincount(codes[:, 0], minlength=8).tolist()
    assert data["agreement"][0]["ami"] > 0.5  # labels are a function of the level-1 code
    markdown = paths["markdown"].read_text()
    assert "![code usage per level](code_usage.png)" in markdown
    assert "- method: test" in markdown
    for key in ("usage_plot", "heatmap"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC


def test_report_without_labels_has_no_heatmap(tmp_path):
    codes = np.zeros((10, 2), dtype=int)
    paths = write_report(evaluate_codes(codes, (2, 2)), tmp_path)
    assert "heatmap" not in paths
