"""The micro-batcher: concurrent requests decoded together, bounded batches and queue, failures kept apart."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from lmindexer.serving.batching import Closed, MicroBatcher, Overloaded, _Pending


class GatedRun:
    """A batched call that records each batch and holds the first one until released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, requests: Sequence[str]) -> list[str]:
        self.batches.append(list(requests))
        self.started.set()
        self.release.wait(30)
        if any(r.startswith("bad") for r in requests):
            raise ValueError("a bad request")
        return [f"{r}!" for r in requests]


def submit_in_threads(batcher: MicroBatcher, requests: Sequence[str]) -> tuple[list[threading.Thread], dict]:
    answers: dict[str, object] = {}

    def ask(request: str) -> None:
        try:
            answers[request] = batcher.submit(request)
        except Exception as exc:  # the test inspects what each request got
            answers[request] = exc

    threads = [threading.Thread(target=ask, args=(request,)) for request in requests]
    for thread in threads:
        thread.start()
    return threads, answers


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def queued(batcher: MicroBatcher) -> int:
    return batcher._queue.qsize()


@pytest.fixture
def run() -> GatedRun:
    return GatedRun()


def test_requests_that_queue_while_a_batch_runs_are_decoded_together_in_order(run):
    batcher = MicroBatcher(run, max_batch=16, max_wait_s=0, max_pending=64)
    first, answers = submit_in_threads(batcher, ["a"])
    assert run.started.wait(30)
    later, more = submit_in_threads(batcher, ["b", "c", "d", "e"])
    wait_for(lambda: queued(batcher) == 4)
    run.release.set()
    for thread in first + later:
        thread.join(30)
    assert run.batches[0] == ["a"]
    assert sorted(run.batches[1]) == ["b", "c", "d", "e"] and len(run.batches) == 2
    assert answers | more == {"a": "a!", "b": "b!", "c": "c!", "d": "d!", "e": "e!"}
    assert batcher.stats.batches == 2 and batcher.stats.largest_batch == 4
    batcher.close()


def test_a_batch_never_holds_more_than_max_batch_requests(run):
    batcher = MicroBatcher(run, max_batch=3, max_wait_s=0, max_pending=64)
    first, _ = submit_in_threads(batcher, ["a"])
    assert run.started.wait(30)
    later, answers = submit_in_threads(batcher, [f"r{n}" for n in range(7)])
    wait_for(lambda: queued(batcher) == 7)
    run.release.set()
    for thread in first + later:
        thread.join(30)
    assert [len(batch) for batch in run.batches] == [1, 3, 3, 1]
    assert answers == {f"r{n}": f"r{n}!" for n in range(7)}
    batcher.close()


def test_a_lone_request_waits_for_company_within_the_bound(run):
    run.release.set()
    batcher = MicroBatcher(run, max_batch=2, max_wait_s=30, max_pending=64)
    first, answers = submit_in_threads(batcher, ["a"])
    wait_for(lambda: queued(batcher) == 0)  # the worker holds "a" and waits for a second request
    second, more = submit_in_threads(batcher, ["b"])
    for thread in first + second:
        thread.join(30)
    # The batch was full at two, so neither waited out the 30 s.
    assert run.batches == [["a", "b"]] and answers | more == {"a": "a!", "b": "b!"}
    batcher.close()


def test_a_full_queue_refuses_the_next_request_at_once(run):
    batcher = MicroBatcher(run, max_batch=16, max_wait_s=0, max_pending=2)
    first, _ = submit_in_threads(batcher, ["a"])
    assert run.started.wait(30)
    waiting, answers = submit_in_threads(batcher, ["b", "c"])
    wait_for(lambda: queued(batcher) == 2)
    with pytest.raises(Overloaded, match="2 requests are already waiting"):
        batcher.submit("d")
    run.release.set()
    for thread in first + waiting:
        thread.join(30)
    assert answers == {"b": "b!", "c": "c!"}
    batcher.close()


def test_a_failing_request_fails_alone_and_the_rest_of_its_batch_is_answered(run):
    batcher = MicroBatcher(run, max_batch=16, max_wait_s=0, max_pending=64)
    first, _ = submit_in_threads(batcher, ["a"])
    assert run.started.wait(30)
    later, answers = submit_in_threads(batcher, ["b", "bad", "c"])
    wait_for(lambda: queued(batcher) == 3)
    run.release.set()
    for thread in first + later:
        thread.join(30)
    assert answers["b"] == "b!" and answers["c"] == "c!"
    assert isinstance(answers["bad"], ValueError)
    batcher.close()


def test_close_answers_what_is_queued_and_a_later_request_starts_a_new_worker(run):
    run.release.set()
    batcher = MicroBatcher(run, max_batch=4, max_wait_s=0, max_pending=64)
    for request in ("a", "b"):  # b comes after the first worker was stopped
        threads, answers = submit_in_threads(batcher, [request])
        threads[0].join(30)
        assert answers == {request: f"{request}!"}, "no worker answered"
        batcher.close()
    batcher.close()  # closing twice is harmless


def test_a_request_queued_behind_the_stop_is_refused_not_left_waiting(run):
    batcher = MicroBatcher(run, max_batch=1, max_wait_s=0, max_pending=64)
    first, answers = submit_in_threads(batcher, ["a"])
    assert run.started.wait(30)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    wait_for(lambda: queued(batcher) == 1)  # the stop marker
    late = _Pending("late")
    batcher._queue.put_nowait(late)
    run.release.set()
    closing.join(30)
    first[0].join(30)
    assert answers == {"a": "a!"}
    with pytest.raises(Closed, match="shutting down"):
        late.future.result(timeout=30)


def test_submit_nowait_returns_before_the_batch_runs_and_its_future_holds_the_result(run):
    batcher = MicroBatcher(run, max_batch=16, max_wait_s=0, max_pending=1)
    future = batcher.submit_nowait("a")
    assert run.started.wait(30)
    assert not future.done()  # the batch is still held: the call did not wait for it
    queued_future = batcher.submit_nowait("b")
    wait_for(lambda: queued(batcher) == 1)
    with pytest.raises(Overloaded, match="1 requests are already waiting"):
        batcher.submit_nowait("c")
    run.release.set()
    assert future.result(30) == "a!" and queued_future.result(30) == "b!"
    failing = batcher.submit_nowait("bad one")
    with pytest.raises(ValueError, match="a bad request"):
        failing.result(30)
    batcher.close()
