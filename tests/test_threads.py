"""Threads per task: a task of parallel work takes its share of the cores, not every core."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from lmindexer.errors import ConfigError
from lmindexer.threads import THREADS_ENV, available_cores, limited_threads, threads_per_task


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_tasks_sharing_the_cores_divide_them(eight_cores):
    assert available_cores() == 8
    assert threads_per_task() == 8
    assert threads_per_task(4) == 2
    assert threads_per_task(3) == 2
    assert threads_per_task(16) == 1  # never none


def test_lmindexer_threads_sets_every_task(eight_cores, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert threads_per_task(1) == threads_per_task(4) == 3
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=f"{THREADS_ENV} must be a whole number of threads, 1 or more"):
            threads_per_task()


def test_an_explicit_omp_num_threads_caps_the_share(eight_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_task(2) == 1


def test_limited_threads_holds_for_the_block_only():
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 3
    with limited_threads(wanted) as threads:
        assert threads == torch.get_num_threads() == wanted
        # NumPy's BLAS and the OpenMP runtimes too.
        assert {pool["num_threads"] for pool in threadpool_info()} == {wanted}
    assert torch.get_num_threads() == before
