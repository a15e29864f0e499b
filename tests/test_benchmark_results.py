"""Every stored benchmark figure can be tied to code: its JSON names the full commit it was measured at (one this
repository's history holds) and the load average, and its Markdown and its chart (a PNG text chunk) name the same
commit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))


def in_history(commit: str) -> bool | None:
    """Whether the repository's history holds ``commit`` (None where there is no git checkout to ask)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    return found.returncode == 0


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_a_stored_figure_names_the_commit_and_load_it_was_measured_at(path):
    document = json.loads(path.read_text())
    commit = document.get("git_commit")
    assert isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit), f"{path.name}: git_commit {commit!r}"
    assert document["environment"]["commit"] == commit
    assert document.get("commit") == commit, f"{path.name}: no top-level commit"
    assert isinstance(document.get("uncommitted_changes"), bool)
    assert len(document["load_average"]["start"]) == 3 and len(document["load_average"]["end"]) == 3
    assert f"Measured at commit `{commit[:12]}`" in path.with_suffix(".md").read_text()
    assert in_history(commit) is not False, f"{path.name}: commit {commit} is not in this repository's history"


def test_there_are_stored_figures_to_check():
    assert len(RESULTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_a_stored_chart_carries_the_commit_of_its_figures(path):
    from PIL import Image

    document = json.loads(path.read_text())
    with Image.open(path.with_suffix(".png")) as image:
        text = dict(image.text)
    assert text.get("lmindexer-git-commit") == document["git_commit"], f"{path.name}: the chart names no commit"
    assert json.loads(text["lmindexer-load-average"]) == document["load_average"]


def test_a_new_figure_records_the_cpu_it_ran_on_and_whether_it_computes_bf16_natively(monkeypatch):
    """What the benchmarks record of the machine: a CPU model and its bf16 support, which decide what
    ``--precision auto`` runs and how fast, so figures from two machines can be told apart."""
    import sys

    from lmindexer.precision import native_bf16

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("_harness", None)
    import _harness

    recorded = _harness.environment()
    assert recorded["native_bf16"] is native_bf16("cpu")
    assert recorded["cpu_model"] and recorded["cpu_model"] != "unknown"


def test_a_new_figure_names_its_commit_at_the_top_level_under_both_names(monkeypatch, tmp_path):
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("_harness", None)
    import _harness

    _harness.write_results(tmp_path / "figure", {"environment": _harness.environment()}, "# figure")
    document = json.loads((tmp_path / "figure.json").read_text())
    commit = document["environment"]["commit"]
    assert document["git_commit"] == document["commit"] == commit
    assert list(document)[:2] == ["git_commit", "commit"]


def test_runs_whose_names_differ_only_after_a_dot_write_separate_files(monkeypatch, tmp_path):
    """A result's stem may hold a dot (an option's value, ``-dropout-0.2-seed-1``): the extension is appended, so
    the seeds' files neither overwrite each other nor lose the part after the dot."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("_harness", None)
    import _harness

    for seed in (1, 2):
        stem = tmp_path / f"downstream-dropout-0.2-seed-{seed}"
        _harness.write_results(stem, {"environment": _harness.environment(), "seed": seed}, f"# seed {seed}")
        assert _harness.result_file(stem, ".png").name == f"downstream-dropout-0.2-seed-{seed}.png"
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == [f"downstream-dropout-0.2-seed-{seed}{ext}" for seed in (1, 2) for ext in (".json", ".md")]
    assert json.loads((tmp_path / "downstream-dropout-0.2-seed-1.json").read_text())["seed"] == 1


def test_a_figure_from_one_seed_shows_no_spread_it_does_not_have(monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("_harness", None)
    import _harness

    assert _harness.format_mean_sd(_harness.mean_sd([0.25])) == "0.2500"
    assert _harness.format_mean_sd(_harness.mean_sd([0.2, 0.3]), ".2f") == "0.25 ± 0.07"
    assert _harness.format_mean_sd(_harness.mean_sd([0.2, 0.3]), ".1%") == "25.0% ± 7.1%"
    assert _harness.format_gain(_harness.mean_sd([0.33])) == "+0.3300"
    assert _harness.format_gain(_harness.mean_sd([-0.01, 0.03]), ".2f") == "+0.01 ± 0.03"
