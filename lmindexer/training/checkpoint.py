"""Resumable training state as safetensors + JSON: model weights, optimizer state, assigned codes and progress.

Optimizer state is flattened into named tensors (``state.<param>.<key>``) plus its param groups in JSON, so resuming
never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmindexer.errors import SnapshotError
from lmindexer.integrity import write_safetensors

PROGRESS_FILE = "progress.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], document: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in document.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})


def save_checkpoint(
    directory: Path,
    *,
    progress: Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    arrays: Mapping[str, torch.Tensor],
) -> None:
    """Replace the checkpoint in ``directory`` atomically (a kill mid-write leaves the previous one intact)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        write_safetensors({k: v.detach().cpu().contiguous() for k, v in model.items()}, staging / "model.safetensors")
        write_safetensors({k: v.detach().cpu().contiguous() for k, v in arrays.items()}, staging / "arrays.safetensors")
        document = dict(progress)
        if optimizer is not None:
            tensors, optimizer_document = optimizer_tensors(optimizer)
            write_safetensors(tensors, staging / "optimizer.safetensors")
            document["optimizer"] = optimizer_document
        (staging / PROGRESS_FILE).write_text(json.dumps(document, indent=1) + "\n")
        previous = directory.with_name(directory.name + ".old")
        if directory.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(directory, previous)
        os.replace(staging, directory)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class Checkpoint:
    """A checkpoint read back from disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self.progress: dict[str, Any] = json.loads((directory / PROGRESS_FILE).read_text())
            self.model = load_file(str(directory / "model.safetensors"))
            self.arrays = load_file(str(directory / "arrays.safetensors"))
            optimizer_file = directory / "optimizer.safetensors"
            self.optimizer = load_file(str(optimizer_file)) if optimizer_file.is_file() else None
        except (OSError, ValueError, KeyError, SafetensorError) as exc:
            raise SnapshotError(f"cannot read the training checkpoint in {directory}: {exc}") from exc

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is not None and "optimizer" in self.progress:
            load_optimizer_tensors(optimizer, self.optimizer, self.progress["optimizer"])


def find_checkpoint(directory: Path | None) -> Checkpoint | None:
    if directory is None:
        return None
    # A kill between the two renames of save_checkpoint leaves only the ".old" copy.
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / PROGRESS_FILE).is_file():
            return Checkpoint(candidate)
    return None
