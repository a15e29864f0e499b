"""Which heavy libraries a piece of code loads, run in a fresh interpreter (imports are cached in this one)."""

from __future__ import annotations

import json
import subprocess
import sys

MODEL_STACK = ("torch", "faiss", "sklearn", "transformers")
# What reading and writing stored tables and objects loads: a task needs it, parsing a config does not.
STORAGE_STACK = ("pyarrow", "numpy", "boto3")


def model_stack_loaded_by(code: str, modules: tuple[str, ...] = MODEL_STACK) -> list[str]:
    """The ``modules`` (default :data:`MODEL_STACK`) in ``sys.modules`` after running ``code`` in a new process."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])
