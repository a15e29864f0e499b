"""Airflow on SQLite in a temporary AIRFLOW_HOME, with the project's dags/ and plugins/, and the local stack.

DAGs run with ``airflow dags test`` in a subprocess (a real Airflow run, in-process executor), so the test process
never imports Airflow and each run starts from a clean interpreter. ``postgres`` is a throwaway PostgreSQL server for
the tests that run Airflow as deployed (scheduler, LocalExecutor), see test_catalog_reindex_production.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import boto3
import pytest
from testsupport.airflow_runs import AIRFLOW, airflow_environment
from testsupport.postgres import Postgres, PostgresUnavailable, running_postgres

from lmindexer import devstack


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, **airflow_environment(home)}
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.Stack]:
    directory = tmp_path_factory.mktemp("stack")
    stack = devstack.start(directory)
    yield stack
    devstack.stop(directory)


@pytest.fixture
def s3(local_stack, monkeypatch):
    for name, value in devstack.client_env(local_stack).items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server with an empty ``airflow`` database, stopped after the test.

    Missing binaries fail the test rather than skip it: CI machines have PostgreSQL, so a skip would hide a broken
    image."""
    problem = None
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        problem = str(exc)
    if problem:  # outside the except block, so the failure is the message alone, not a chained traceback
        pytest.fail(problem, pytrace=False)
