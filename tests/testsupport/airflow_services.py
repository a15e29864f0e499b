"""A running Airflow 3 deployment for tests: the api-server, the dag-processor and the scheduler as subprocesses of
the test, each with its own log, stopped (by process group) when the block ends.

This is what ``airflow dags test`` skips: the scheduler queues task instances for its executor, the executor's
workers run them in task processes that talk to the api-server's execution API, and the dag-processor serialises
the DAGs into the metadata database. The test process still never imports Airflow; it reads the metadata database
with psycopg2 (:func:`query`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from testsupport.airflow_runs import AIRFLOW, ROOT

STOP_GRACE_S = 20.0


class AirflowDied(RuntimeError):
    """An Airflow service exited while the test still needed it."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Airflow:
    env: dict[str, str]
    logs: Path
    services: list[Service] = field(default_factory=list)

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {s.name} ({s.log}), last {lines} lines -----\n{s.tail(lines)}" for s in self.services)

    def check_alive(self) -> None:
        for service in self.services:
            if service.process.poll() is not None:
                raise AirflowDied(f"airflow {service.name} exited with {service.process.returncode}\n{self.tails()}")

    def cli(self, *args: str, timeout: float = 120) -> str:
        """One Airflow CLI command against this deployment's metadata database; its output."""
        done = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:  # ``with connection`` ends the transaction only
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


def wait_until(what: str, ready: Any, airflow: Airflow, timeout: float, every: float = 1.0) -> Any:
    """Poll ``ready()`` until it returns something truthy, failing early if a service died; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        airflow.check_alive()
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s\n{airflow.tails()}")
        time.sleep(every)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Service:
    log = logs / f"{name}.log"
    with log.open("wb") as sink:
        # Its own session: stopping the service signals its whole process group, which holds the executor's workers,
        # the task processes and the api-server's uvicorn workers, and nothing else.
        process = subprocess.Popen([AIRFLOW, *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return Service(name, process, log)


def _stop(service: Service) -> None:
    process = service.process
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    # SIGKILL the rest of the group too: a worker that outlived its parent would hold the database open.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)


@contextmanager
def running_airflow(env: dict[str, str], logs: Path, api_port: int, startup_timeout: float = 120) -> Iterator[Airflow]:
    """api-server, dag-processor and scheduler on a migrated metadata database until the block ends.

    ``env`` must already point the execution API URL at ``api_port``. On an error in the block the services' log
    tails are printed (pytest shows them with the failure) before everything is stopped."""
    logs.mkdir(parents=True, exist_ok=True)
    airflow = Airflow(env=env, logs=logs)
    try:
        # One uvicorn worker: a test needs no more, and the machine's cores go to the tasks.
        api_server = ["api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1"]
        airflow.services.append(_start("api-server", api_server, env, logs))
        airflow.services.append(_start("dag-processor", ["dag-processor"], env, logs))
        airflow.services.append(_start("scheduler", ["scheduler"], env, logs))
        health = f"http://127.0.0.1:{api_port}/api/v2/monitor/health"
        wait_until("the api-server answers", lambda: _answers(health), airflow, startup_timeout)
        yield airflow
    except BaseException:
        print(airflow.tails(80))
        raise
    finally:
        for service in reversed(airflow.services):  # the scheduler first: it stops handing out work
            _stop(service)
