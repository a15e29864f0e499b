"""Which later commits each stored benchmark result predates, and whether each touches what its run executes.

For every ``benchmarks/results/*.json`` this lists the commits after the one the file names (``commit``) that touch
``lmindexer/`` or ``benchmarks/``, and splits them mechanically:

- **on its path**: the commit changes a file the run imports. The run's files are the benchmark script (found from
  the result's name), every project module it imports, transitively (import statements anywhere in a module,
  function bodies included, read with ``ast``), the modules named in its strings (``-m lmindexer.cli``, import
  probes) and sibling scripts it names (``locustfile.py``); ``lmindexer/`` holds no data files. Read at the
  current commit: a module the run imported at its own commit but no longer does is
  not counted. Whether such a change moves a figure is a judgement; docs/benchmarks.md gives it;
- **results only**: the commit changes nothing but ``benchmarks/results/``;
- **off its path**: every other commit (code the run never imports).

    python scripts/result_provenance.py > docs/result-provenance.md
    python scripts/result_provenance.py --check docs/benchmarks.md   # is every on-path commit judged there?

``--check`` reads the section "What each stored figure predates" of the given page: every on-path commit of every
result file must be named there by hash, in the list of recent commits (the paragraph starting **Recent commits**,
up to **Older figures**) or in a table row naming the file; a file listed under **Re-measured in this change** needs
its on-path commits in the list of recent commits; a file named under **Historical records** is not checked.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WATCHED = ("lmindexer", "benchmarks")
MODULE_IN_STRING = re.compile(r"\blmindexer(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
SCRIPT_IN_STRING = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\.py\b")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def module_file(name: str) -> Path | None:
    """The file of a project module ``name`` (``lmindexer.x.y``), or of a benchmark script/helper (``_harness``)."""
    parts = name.split(".")
    if parts[0] == "lmindexer":
        base = ROOT.joinpath(*parts)
    elif len(parts) == 1:
        base = ROOT / "benchmarks" / parts[0]
    else:
        return None
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "benchmarks":
        return parts[-1]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (relative imports resolved), and those its strings name."""
    source = path.read_text()
    tree = ast.parse(source)
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    # Docstrings name modules for the reader, not for the run.
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.update(MODULE_IN_STRING.findall(node.value))
            if path.parent.name == "benchmarks":
                names.update(SCRIPT_IN_STRING.findall(node.value))
    return names


def with_parents(name: str) -> Iterable[str]:
    parts = name.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def run_files(script: Path) -> set[Path]:
    """Every project file a run of ``script`` executes, as far as its imports and strings tell."""
    seen: set[Path] = set()
    pending = [script]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            for candidate in with_parents(name):
                found = module_file(candidate)
                if found is not None and found not in seen:
                    pending.append(found)
    return seen


def script_of(result: Path) -> Path | None:
    scripts = sorted((p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")),
                     key=lambda p: -len(p.stem))  # fmt: skip
    return next((p for p in scripts if result.stem == p.stem or result.stem.startswith(p.stem + "-")), None)


def later_commits(commit: str) -> list[tuple[str, str, list[str]]]:
    """(short hash, subject, files under lmindexer/ or benchmarks/) of each commit after ``commit``, newest first."""
    out = git("log", "--format=@@%h\t%s", "--name-only", f"{commit}..HEAD", "--", *WATCHED)
    commits: list[tuple[str, str, list[str]]] = []
    for block in out.split("@@")[1:]:
        head, *files = block.strip().splitlines()
        short, subject = head.split("\t", 1)
        commits.append((short, subject, [f for f in files if f.startswith(WATCHED)]))
    return commits


def split_later_commits(
    result: Path,
) -> tuple[str, Path, list[tuple[str, str, list[str]]], list[str], list[str]] | None:
    """``result``'s commit and the script that wrote it, and its later commits: on its path (hash, subject, files of
    the run changed), results only, off its path. None where the file names no commit or no script wrote it."""
    document = json.loads(result.read_text())
    commit = str(document.get("commit") or document.get("git_commit") or "")[:7]
    script = script_of(result)
    if not commit or script is None:
        return None
    files = {str(p.relative_to(ROOT)) for p in run_files(script)}
    on_path, results_only, off_path = [], [], []
    for short, subject, changed in later_commits(commit):
        touched = sorted(f for f in changed if f in files)
        if touched:
            on_path.append((short, subject, touched))
        elif all(f.startswith("benchmarks/results/") for f in changed):
            results_only.append(short)
        else:
            off_path.append(short)
    return commit, script, on_path, results_only, off_path


def unjudged(page: str, on_path: dict[str, list[str]]) -> dict[str, list[str]]:
    """The on-path commits (``on_path``: result file name -> hashes) that ``page``'s section "What each stored
    figure predates" does not name where it should (see the module's docstring), per result file."""
    section = page[page.index("## What each stored figure predates") :]
    following = section.find("\n## ", 1)
    section = section if following < 0 else section[:following]

    def part(start: str, end: str | None) -> str:
        begin = section.find(start)
        if begin < 0:
            return ""
        stop = section.find(end, begin) if end else -1
        return section[begin:] if stop < 0 else section[begin:stop]

    remeasured = part("**Re-measured in this change.**", "**Recent commits")
    recent = part("**Recent commits", "**Older figures")
    historical = part("**Historical records", None)
    missing: dict[str, list[str]] = {}
    for name, commits in on_path.items():
        stem = name.removesuffix(".json")
        if f"`{name}`" in historical:
            continue
        if f"`{stem}`" in remeasured:
            named = recent
        else:
            rows = [line for line in section.splitlines() if line.startswith("|") and f"`{name}`" in line]
            if not rows:
                missing[name] = ["(no row names the file)"]
                continue
            named = recent + "\n".join(rows)
        unnamed = [commit for commit in commits if f"`{commit}`" not in named]
        if unnamed:
            missing[name] = unnamed
    return missing


def check(page: Path) -> int:
    on_path = {}
    for result in sorted(RESULTS.glob("*.json")):
        split = split_later_commits(result)
        if split is not None and split[2]:
            on_path[result.name] = [short for short, _, _ in split[2]]
    missing = unjudged(page.read_text(), on_path)
    for name, commits in missing.items():
        print(f"{name}: on its path, not judged in {page}: {', '.join(commits)}")
    return 1 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", type=Path, metavar="PAGE", help="check that PAGE judges every on-path commit")
    args = parser.parse_args()
    if args.check:
        return check(args.check)
    head = git("rev-parse", "--short=7", "HEAD").strip()
    lines = [
        "# What each stored result predates",
        "",
        f"Generated by `python scripts/result_provenance.py` at commit `{head}`. For each",
        "result file in `benchmarks/results/`, the later commits that touch `lmindexer/` or `benchmarks/`, split by",
        "what they change: files the run imports or names (**on its path**: whether they move a figure is judged in",
        "[benchmarks.md](benchmarks.md#what-each-stored-figure-predates)), only result files, or code the run never",
        "imports (**off its path**). How a run's files are found: the script's docstring",
        "(`scripts/result_provenance.py`).",
        "",
    ]
    for result in sorted(RESULTS.glob("*.json")):
        split = split_later_commits(result)
        if split is None:
            lines += [f"## `{result.name}`", "", "No commit or no script recorded.", ""]
            continue
        commit, script, on_path, results_only, off_path = split
        lines += [f"## `{result.name}`", "",
                  f"Measured at `{commit}` by `benchmarks/{script.name}`; later commits: {len(on_path)} on its path, "
                  f"{len(results_only)} results only, {len(off_path)} off its path.", ""]  # fmt: skip
        if on_path:
            lines += ["| commit | subject | files of the run it changes |", "|---|---|---|"]
            for short, subject, touched in on_path:
                subject = subject if len(subject) <= 110 else subject[:107] + "..."
                cells = [f"`{short}`", subject.replace("|", "\\|"), ", ".join(f"`{f}`" for f in touched)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        if results_only:
            lines += ["Results only: " + ", ".join(f"`{c}`" for c in results_only) + ".", ""]
        if off_path:
            lines += ["Off its path: " + ", ".join(f"`{c}`" for c in off_path) + ".", ""]
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
