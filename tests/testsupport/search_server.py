"""A real search server for tests: ``osmem-server`` (an in-memory, OpenSearch-compatible server whose binary ships in
its wheel) on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SearchServer:
    url: str
    pid: int


def _wait_until_answering(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"osmem-server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.02)
    raise RuntimeError(f"osmem-server did not answer at {url} within {STARTUP_TIMEOUT_S} s")


def _stop(pid: int, process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def running_search_server(log: Path) -> Iterator[SearchServer]:
    """osmem-server on a free loopback port until the block ends; its output goes to ``log``."""
    from osmem_server import resolve_binary

    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                resolve_binary(),
                "--addr",
                f"127.0.0.1:{port}",
                "--no-ja",
                "--no-stdin-watch",
                # The server exits by itself if the test process dies without running the teardown.
                "--parent-pid",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, process, log)
        yield SearchServer(url=url, pid=process.pid)
    finally:
        _stop(process.pid, process)
