"""The retriever trains on the platform's one Accelerate loop: it resumes mid-run from its checkpoint, and several
processes under ``accelerate launch`` train one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from testsupport.retriever_state import (
    TINY_RETRIEVER,
    one_torch_thread,
    retriever_files,
)

from lmindexer.downstream import jobs
from lmindexer.downstream.generative import WEIGHTS, GenerativeModel
from lmindexer.downstream.model import GenerativeIdModel
from lmindexer.training.checkpoint import PROGRESS_FILE

# 40 items: 40 title queries + 40 indexing pairs = 80 examples, 3 batches of 32 per epoch, 24 steps in all.
OPTIONS = {**TINY_RETRIEVER, "epochs": 8, "checkpoint_every": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def files(wiki_items, tmp_path_factory):
    return retriever_files(tmp_path_factory.mktemp("retriever-training"), wiki_items[:40], OPTIONS)


def _fit(files, checkpoint):
    return jobs.fit_retriever(
        files.snapshot, files.ids, files.catalog, files.queries, OPTIONS, checkpoint_dir=checkpoint
    )


def test_a_crashed_training_resumes_from_its_checkpoint_to_the_same_model(files, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    real_loss = GenerativeIdModel.loss
    calls = {"n": 0}

    def crashing_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # step 11: the checkpoint of step 8 is on disk
            raise RuntimeError("worker lost")
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(GenerativeIdModel, "loss", crashing_loss)
    with pytest.raises(RuntimeError, match="worker lost"):
        _fit(files, checkpoint)
    monkeypatch.setattr(GenerativeIdModel, "loss", real_loss)
    assert json.loads((checkpoint / PROGRESS_FILE).read_text())["step"] == 8

    resumed, summary = _fit(files, checkpoint)
    assert summary["training"]["resumed_at_step"] == 8
    assert summary["training"]["steps"] == 24 and len(summary["training"]["epoch_loss"]) == 8

    # The same training, never interrupted: resuming continued the very same sequence (weights, optimiser state,
    # step, per-step seeds), so both end with the same weights and the same losses.
    uninterrupted, reference = _fit(files, None)
    assert reference["training"]["resumed_at_step"] is None
    expected = dict(uninterrupted.network.named_parameters())
    differ = [n for n, p in resumed.network.named_parameters() if not torch.equal(p.detach(), expected[n].detach())]
    assert not differ, f"the resumed training ended with other weights: {differ[:5]}"
    assert summary["training"]["epoch_loss"] == pytest.approx(reference["training"]["epoch_loss"], rel=1e-6)


def test_a_checkpoint_of_other_options_is_not_resumed(files, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    jobs.fit_retriever(files.snapshot, files.ids, files.catalog, files.queries,
                       {**OPTIONS, "epochs": 2, "checkpoint_every": 1}, checkpoint_dir=checkpoint)  # fmt: skip
    assert (checkpoint / PROGRESS_FILE).is_file()  # fit_retriever leaves it; train_model removes it after saving
    _, summary = _fit(files, checkpoint)
    assert summary["training"]["resumed_at_step"] is None and summary["training"]["steps"] == 24


def test_train_model_removes_the_checkpoint_once_the_model_is_saved(files, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    summary = jobs.train_model(files.snapshot, files.ids, files.catalog, files.queries, tmp_path / "model", OPTIONS,
                               checkpoint_dir=checkpoint)  # fmt: skip
    assert summary is not None and (tmp_path / "model" / WEIGHTS).is_file()
    assert not checkpoint.exists()


@pytest.mark.slow
def test_two_gloo_processes_train_one_retriever(files, tmp_path):
    out = tmp_path / "model"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "lmindexer.cli", "retriever", "train", "--snapshot", files.snapshot, "--ids", files.ids,
        "--catalog", files.catalog, "--queries", files.queries, "--out", str(out), "--options", files.options,
        "--quiet",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-3000:]
    assert completed.stdout.count('"model_uri"') == 1, "only the main process saves and reports"
    training = json.loads((out / "generative.json").read_text())["training"]
    # 24 batches shared between two processes: 12 steps each, every gradient averaged across both.
    assert (training["processes"], training["steps"], len(training["epoch_loss"])) == (2, 12, 8)
    assert set(load_file(str(out / WEIGHTS))) and GenerativeModel.load(out).search(["anything"], k=3)
