"""Training mechanics: progressive stages, resuming after a kill, and a two-process (gloo) run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from testsupport.lm import TINY_LM

from lmindexer.indexers import load_snapshot
from lmindexer.indexers.base import WEIGHTS_FILE
from lmindexer.training.checkpoint import PROGRESS_FILE
from lmindexer.training.loop import schedule_factor

CLI = [sys.executable, "-m", "lmindexer.cli"]


def _config_file(tmp_path: Path, **options) -> Path:
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump({**TINY_LM, **options}))
    return path


def _environment() -> dict[str, str]:
    # One thread per process keeps two training processes from fighting over two cores; no GPU is used.
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_one_schedule_warms_up_then_decays_across_all_phases():
    factors = [schedule_factor(step, 100, 0.1) for step in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0  # ten warm-up steps
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))  # then it only decays
    assert factors[-1] < 0.01
    assert schedule_factor(0, 0, 0.1) == 1.0  # nothing to train: no division by zero


def _fit_command(catalogue: Path, options: Path, out: Path, checkpoint: Path) -> list[str]:
    return [*CLI, "fit", "--method", "lmindexer", "--catalog", str(catalogue), "--out", str(out),
            "--config", str(options), "--checkpoint-dir", str(checkpoint), "--quiet"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_killed_fit_resumes_from_its_checkpoint(warm, wiki_sample_path, wiki_items, tmp_path):
    options = _config_file(tmp_path, checkpoint_every=3, encoder_epochs=2, writer_epochs=2)
    warm_from: list[str] = []
    if warm:
        # A warm retrain renumbers each position's codes after the previous snapshot's when the position ends: the
        # resumed fit must number them as the uninterrupted one does.
        first = tmp_path / "first.jsonl"
        first.write_text("".join(wiki_sample_path.read_text().splitlines(keepends=True)[:200]))
        fit_previous = _fit_command(first, options, tmp_path / "previous", tmp_path / "previous-ckpt")
        previous = subprocess.run(fit_previous, env=_environment(), capture_output=True, text=True, timeout=300)
        assert previous.returncode == 0, previous.stderr[-2000:]
        warm_from = ["--warm-from", str(tmp_path / "previous")]
    out, checkpoint = tmp_path / "snap", tmp_path / "ckpt"
    command = _fit_command(wiki_sample_path, options, out, checkpoint) + warm_from
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    # Kill it once it has got past the first phase: a checkpoint at step > 0 of a later phase.
    while time.monotonic() < deadline and process.poll() is None:
        progress = checkpoint / PROGRESS_FILE
        if progress.is_file():
            try:
                state = json.loads(progress.read_text())
            except (json.JSONDecodeError, OSError):
                state = {}
            if state.get("phase", 0) >= 1 and state.get("step", 0) > 0:
                break
        time.sleep(0.02)
    assert process.poll() is None, f"the fit finished before it could be killed: {process.stdout.read()!r}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "snapshot.json").exists()
    killed_at = json.loads((checkpoint / PROGRESS_FILE).read_text())

    rerun = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    document = json.loads((out / "snapshot.json").read_text())
    resumed = document["manifest"]["training"]["resumed_from"]
    assert resumed is not None and resumed["phase"] >= killed_at["phase"] >= 1
    assert not checkpoint.exists(), "the checkpoint is removed once the snapshot is written"
    # the phases finished before the kill are reported from the checkpoint, not redone
    assert len(document["manifest"]["training"]["phases"]) == 4
    if warm:
        renumbered = [phase for phase in document["manifest"]["training"]["phases"] if "prefix_agreement" in phase]
        assert len(renumbered) == 3

    # The same fit, never killed: resuming continues the very same training (weights, optimizer state, step,
    # assigned codes), so both snapshots hold the same weights and give every item the same codes.
    reference = tmp_path / "uninterrupted"
    command = _fit_command(wiki_sample_path, options, reference, tmp_path / "uninterrupted-ckpt") + warm_from
    uninterrupted = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=300, check=False
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    resumed_weights = load_file(str(out / WEIGHTS_FILE))
    reference_weights = load_file(str(reference / WEIGHTS_FILE))
    assert resumed_weights.keys() == reference_weights.keys()
    differ = [name for name, tensor in reference_weights.items() if not torch.equal(resumed_weights[name], tensor)]
    assert not differ, f"the resumed fit ended with other weights: {differ[:5]}"
    np.testing.assert_array_equal(load_snapshot(out).codes(wiki_items), load_snapshot(reference).codes(wiki_items))


@pytest.mark.slow
def test_two_gloo_processes_train_one_snapshot(wiki_sample_path, tmp_path, wiki_items):
    options = _config_file(tmp_path, batch_size=16)
    out = tmp_path / "snap"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "lmindexer.cli", "fit", "--method", "lmindexer", "--catalog", str(wiki_sample_path),
        "--out", str(out), "--config", str(options), "--quiet",
    ]  # fmt: skip
    completed = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert completed.stdout.count("snapshot lmindexer-") == 1, "only the main process writes and reports"
    training = json.loads((out / "snapshot.json").read_text())["manifest"]["training"]
    assert training["processes"] == 2
    codes = load_snapshot(out).codes(wiki_items)
    assert codes.shape == (len(wiki_items), 3) and len(np.unique(codes[:, 0])) >= 2
