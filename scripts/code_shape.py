"""The shape of the code, for a clean-up's before and after: long files, long functions, and string-keyed lookups
(``x["key"]``) in the modules that pass results between pipeline steps.

    python scripts/code_shape.py [--root lmindexer] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

LONG_FILE = 500
LONG_FUNCTION = 80
# The modules where one step's result is read by the next: a string key there is an untyped contract.
STEP_MODULES = ("lmindexer/pipeline/steps.py", "lmindexer/downstream/jobs.py", "lmindexer/pipeline/runner.py")


def string_subscripts(tree: ast.AST) -> int:
    return sum(
        isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
        for node in ast.walk(tree)
    )


def shape(root: Path, repo: Path) -> dict[str, object]:
    long_files, long_functions = [], []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.count("\n")
        name = path.relative_to(repo).as_posix()
        if lines > LONG_FILE:
            long_files.append({"file": name, "lines": lines})
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONG_FUNCTION:
                    long_functions.append({"function": f"{name}:{node.lineno} {node.name}", "lines": length})
    keyed = {m: string_subscripts(ast.parse((repo / m).read_text())) for m in STEP_MODULES if (repo / m).exists()}
    return {
        f"files_over_{LONG_FILE}_lines": long_files,
        f"functions_over_{LONG_FUNCTION}_lines": sorted(long_functions, key=lambda f: -f["lines"]),
        "string_keyed_lookups_in_step_modules": keyed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="lmindexer")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    result = shape(repo / args.root, repo)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            parts = ", ".join(f"{Path(module).name} {count}" for module, count in value.items())
            print(f"{key}: {sum(value.values())} ({parts})")
        else:
            print(f"{key}: {len(value)}")
            for entry in value:
                print("   ", *entry.values())


if __name__ == "__main__":
    main()
