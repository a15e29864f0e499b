"""How a pipeline task trains: ``accelerate launch`` of a CLI entry point in a subprocess, the same command on a CPU
box and a GPU worker (one process per GPU with ``processes`` > 1).

The subprocess reads and writes local files only: the task copies its inputs in and its outputs out, so the
storage credentials the task was given (an Airflow connection, say) never have to reach the training processes.
Nothing here imports torch: the task that launches training need not load the model stack itself.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from lmindexer.errors import UserError

log = logging.getLogger(__name__)
# Lines of the failed training's output quoted in the error: enough to show the cause, short enough for an alert.
FAILURE_TAIL_LINES = 5


class TrainingFailed(UserError):
    """The training subprocess did not produce what it was launched to produce."""


def accelerate_command(processes: int, mixed_precision: str, entry_point: Sequence[str]) -> list[str]:
    """``accelerate launch`` of ``python -m lmindexer.cli <entry_point...>``."""
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
    ]  # fmt: skip
    if processes > 1:
        launcher.append("--multi_gpu")
    return [*launcher, "-m", "lmindexer.cli", *entry_point]


def run_training(command: Sequence[str], produces: Path) -> None:
    """Run a training command; :class:`TrainingFailed` with the tail of its output unless it exits 0 and wrote
    ``produces``."""
    log.info("training: %s", " ".join(command))
    completed = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not produces.is_file():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-FAILURE_TAIL_LINES:]
        raise TrainingFailed(f"training exited with code {completed.returncode}: {' | '.join(tail)}")
