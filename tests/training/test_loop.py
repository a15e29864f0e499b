"""The shared training loop's parts: the schedule, the batches each process takes, and the fingerprint a checkpoint
must carry."""

from __future__ import annotations

import itertools

import pytest

from lmindexer.training.loop import epoch_batches, process_share, schedule_factor, training_fingerprint


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_the_schedule_warms_up_then_decays_to_zero(decay):
    factors = [schedule_factor(step, 100, 0.1, decay) for step in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert factors[-1] < 0.02
    assert schedule_factor(0, 0, 0.1, decay) == 1.0


def test_linear_and_cosine_decay_differ_halfway():
    assert schedule_factor(55, 100, 0.1, "linear") == pytest.approx(0.5)
    assert schedule_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)
    assert schedule_factor(30, 100, 0.1, "cosine") > schedule_factor(30, 100, 0.1, "linear")


def test_every_epoch_visits_every_example_once():
    batches = epoch_batches(10, 4, 3, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    for epoch in range(3):
        assert sorted(itertools.chain(*batches[3 * epoch : 3 * epoch + 3])) == list(range(10))
    assert batches[:3] != batches[3:6]  # reshuffled each epoch
    assert epoch_batches(10, 4, 3, seed=0) == batches  # and the same on a rerun


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_processes_take_equal_shares_that_cover_every_batch(world):
    batches = [[n] for n in range(7)]
    shares = [process_share(batches, rank, world) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1, "every process must join every step's all-reduce"
    assert len(shares[0]) == -(-7 // world)
    assert {b[0] for share in shares for b in share} == set(range(7))
    if world == 1:
        assert shares[0] == batches


def test_the_fingerprint_follows_options_and_examples_in_order():
    base = training_fingerprint({"epochs": 2}, ["a", "b"])
    assert training_fingerprint({"epochs": 2}, ["a", "b"]) == base
    assert training_fingerprint({"epochs": 3}, ["a", "b"]) != base
    assert training_fingerprint({"epochs": 2}, ["b", "a"]) != base
    assert training_fingerprint({"epochs": 2}, ["ab"]) != base  # parts are delimited
