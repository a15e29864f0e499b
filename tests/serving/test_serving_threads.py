"""A serving process gives each model its share of the cores: each model computes one request at a time."""

from __future__ import annotations

import pytest
import torch

from lmindexer.serving import serving_threads
from lmindexer.threads import THREADS_ENV


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_each_served_model_gets_its_share_of_the_cores(torch_threads, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert serving_threads(2) == torch.get_num_threads() == 4
    assert serving_threads(1) == torch.get_num_threads() == 8
    monkeypatch.setenv(THREADS_ENV, "3")
    assert serving_threads(2) == torch.get_num_threads() == 3
    assert serving_threads(2, threads=1) == torch.get_num_threads() == 1  # --threads wins


def test_worker_processes_share_the_cores_among_them(torch_threads, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert serving_threads(1, workers=2) == torch.get_num_threads() == 4
    assert serving_threads(2, workers=4) == torch.get_num_threads() == 1
    assert serving_threads(1, workers=16) == torch.get_num_threads() == 1  # never fewer than one
    assert serving_threads(1, threads=3, workers=4) == torch.get_num_threads() == 3  # --threads wins
