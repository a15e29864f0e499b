"""docs/reliability.md names the test behind every row of its fault matrix; those tests must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"([\w/]+\.py)::(\w+)")


def test_every_test_the_fault_matrix_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 42
    missing = []
    for path, name in references:
        source = ROOT / "tests" / path
        defined = set()
        if source.is_file():
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.FunctionDef | ast.ClassDef):
                    defined.add(node.name)
                elif isinstance(node, ast.Assign):  # e.g. a hypothesis state machine's TestCase
                    defined.update(target.id for target in node.targets if isinstance(target, ast.Name))
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_the_fault_matrix_covers_at_least_thirty_inputs_and_twelve_faults():
    text = (ROOT / "docs" / "reliability.md").read_text()
    inputs = re.findall(r"^\| (\d+) \|", text, flags=re.MULTILINE)
    faults = re.findall(r"^\| (F\d+) \|", text, flags=re.MULTILINE)
    assert len(inputs) >= 30 and len(set(inputs)) == len(inputs)
    assert len(faults) >= 12 and len(set(faults)) == len(faults)
