"""scripts/result_provenance.py: which project files a benchmark's run executes, so that a later commit can be told
on or off its path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def provenance():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield importlib.import_module("result_provenance")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def _files(provenance, script: str) -> set[str]:
    return {str(path.relative_to(ROOT)) for path in provenance.run_files(ROOT / "benchmarks" / script)}


def test_a_run_includes_the_modules_its_script_imports_transitively_and_not_those_a_docstring_names(provenance):
    files = _files(provenance, "id_quality.py")
    # id_quality -> lmindexer.indexers -> .lm -> .indexer -> .training -> lmindexer.training.checkpoint
    assert {"benchmarks/id_quality.py", "benchmarks/_harness.py", "lmindexer/indexers/lm/training.py",
            "lmindexer/training/checkpoint.py", "lmindexer/idtable.py"} <= files  # fmt: skip
    # lmindexer/training/__init__.py names the generative retriever in its docstring only: not imported
    assert "lmindexer/downstream/generative.py" not in files
    assert "lmindexer/serving/app.py" not in files


def test_modules_and_scripts_a_run_names_in_its_strings_are_on_its_path(provenance):
    files = _files(provenance, "serving.py")
    # the server runs as `python -m lmindexer.cli serve`, the load from `locustfile.py`
    assert {"lmindexer/cli.py", "lmindexer/serving/app.py", "benchmarks/locustfile.py"} <= files
    # the task import probes are strings too
    assert "lmindexer/pipeline/steps.py" in _files(provenance, "task_imports.py")


@pytest.mark.parametrize(
    ("result", "script"),
    [
        ("id_quality-wiki-topics-tuned-seeds-1-2.json", "id_quality.py"),
        ("serving-clothing-reviews-native-bf16.json", "serving.py"),
        ("incremental_cost-1m-uncached.json", "incremental_cost.py"),
        ("task_imports.json", "task_imports.py"),
    ],
)
def test_a_result_is_traced_to_the_script_that_wrote_it(provenance, result, script):
    assert provenance.script_of(Path(result)) == ROOT / "benchmarks" / script


PAGE = """# Benchmarks

## What each stored figure predates

**Re-measured in this change.** At `aaaaaaa`: `fresh`.

**Recent commits on many files' paths**:

- `1111111`: a refactor.

**Older figures, file by file.**

| result file | measured at | on its path since | effect |
|---|---|---|---|
| `old.json` | `0000000` | `2222222` | none |

**Historical records, not judged commit by commit.**

| `kept.json` | `0000000` | 9 | a record |

## Next section

| `old.json` | `3333333` | named outside the section |
"""


@pytest.mark.parametrize(
    ("on_path", "missing"),
    [
        ({"old.json": ["1111111", "2222222"]}, {}),  # one named in the recent list, one in the file's row
        ({"old.json": ["3333333"]}, {"old.json": ["3333333"]}),  # named only outside the section
        ({"fresh.json": ["1111111"]}, {}),  # re-measured: its later commits are in the recent list
        ({"fresh.json": ["2222222"]}, {"fresh.json": ["2222222"]}),  # another file's row does not judge it
        ({"kept.json": ["4444444"]}, {}),  # a historical record is not judged commit by commit
        ({"other.json": ["1111111"]}, {"other.json": ["(no row names the file)"]}),
    ],
)
def test_every_on_path_commit_must_be_judged_where_the_page_says(provenance, on_path, missing):
    assert provenance.unjudged(PAGE, on_path) == missing
