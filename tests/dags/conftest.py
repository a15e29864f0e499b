"""Airflow on SQLite in a temporary AIRFLOW_HOME, with the project's dags/ and plugins/, and the local stack.

DAGs run with ``airflow dags test`` in a subprocess (a real Airflow run, in-process executor), so the test process
never imports Airflow and each run starts from a clean interpreter.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import boto3
import pytest
from testsupport.airflow_runs import AIRFLOW, airflow_environment

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
