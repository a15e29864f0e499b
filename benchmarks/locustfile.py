"""Locust users for ``benchmarks/serving.py`` and ``benchmarks/search_modes.py``: together they send each held-out
query once to ``GET /search`` (with ``mode=LMINDEXER_BENCH_MODE`` when that is set).

Not meant to be run by hand (serving.py starts the server and passes the settings), but it can be:

    LMINDEXER_BENCH_QUERIES=queries.json LMINDEXER_BENCH_RESULTS=out.json \\
        locust -f benchmarks/locustfile.py --headless -u 8 -r 8 --host http://127.0.0.1:8000 --run-time 10m

Every user takes the next query that no one has sent yet and sends it as soon as its previous answer is back (no
think time: the clients are as many concurrent requests as users). When every query has been answered the run
ends, so a setting's figures cover exactly the held-out queries, whatever the server's speed. Every request's
latency is written to ``LMINDEXER_BENCH_RESULTS`` when locust quits (locust's own CSV is written on a timer and can
miss the last second of a run that ends itself).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

QUERIES: list[str] = json.loads(Path(os.environ["LMINDEXER_BENCH_QUERIES"]).read_text())
RESULTS = Path(os.environ["LMINDEXER_BENCH_RESULTS"])
K = int(os.environ.get("LMINDEXER_BENCH_K", "10"))
MODE = os.environ.get("LMINDEXER_BENCH_MODE")
# gevent switches only at I/O, so these read-and-update steps are never interleaved.
_run = {"sent": 0, "answered": 0, "failures": 0, "first_sent": None, "last_answered": None, "latencies_ms": []}


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None = None, **_: object) -> None:
    _run["latencies_ms"].append(response_time)
    _run["failures"] += exception is not None


@events.quitting.add_listener
def _write(**_: object) -> None:
    RESULTS.write_text(json.dumps(_run))


class SearchUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def search(self) -> None:
        if _run["sent"] >= len(QUERIES):
            raise StopUser()
        query = QUERIES[_run["sent"]]
        _run["sent"] += 1
        if _run["first_sent"] is None:
            _run["first_sent"] = time.perf_counter()
        params: dict[str, str | int] = {"q": query, "k": K}
        if MODE:
            params["mode"] = MODE
        self.client.get("/search", params=params, name="/search")
        _run["answered"] += 1
        if _run["answered"] == len(QUERIES):
            _run["last_answered"] = time.perf_counter()
            # Not from this user's own greenlet: quitting kills every user greenlet, and killing the caller's
            # own can leave the run hanging.
            gevent.spawn(self.environment.runner.quit)
