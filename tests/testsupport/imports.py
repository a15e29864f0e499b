"""Which parts of the model stack a piece of code loads, run in a fresh interpreter (imports are cached in this one)."""

from __future__ import annotations

import json
import subprocess
import sys

MODEL_STACK = ("torch", "faiss", "sklearn", "transformers")


def model_stack_loaded_by(code: str) -> list[str]:
    """The modules of :data:`MODEL_STACK` in ``sys.modules`` after running ``code`` in a new Python process."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {MODEL_STACK!r} if m in sys.modules)))\n"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])
