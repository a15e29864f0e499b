"""The embedded local stack: a local S3 server (moto) and a local search server (osmem), on free loopback ports.

``start`` launches both as background processes, waits until they answer, and records their PIDs and endpoints in
``<state_dir>/stack.json``; ``stop`` ends exactly those processes by PID. The environment a client needs (S3
endpoint, dummy local credentials, Airflow connection URIs) comes from :func:`client_env`. Nothing here is used in
production, where the endpoints are real AWS services.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from lmindexer.errors import UserError

STACK_FILE = "stack.json"
S3_CONN_ID = "lmindexer_s3"
SEARCH_CONN_ID = "lmindexer_search"
# The local S3 server accepts any key pair; these name it and are not secrets.
LOCAL_ACCESS_KEY = "local-stack"
LOCAL_SECRET_KEY = "local-stack"  # noqa: S105 - a placeholder the local S3 stand-in accepts
LOCAL_REGION = "us-east-1"


class StackError(UserError):
    """The local stack cannot be started, reached or stopped."""


@dataclass(frozen=True)
class Stack:
    s3_endpoint: str
    search_url: str
    s3_pid: int
    search_pid: int
    state_dir: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _search_binary() -> str:
    try:
        from osmem_server import resolve_binary
    except ImportError as exc:
        raise StackError("the local search server needs the osmem-server package") from exc
    return resolve_binary()


def _wait_until_up(url: str, process: subprocess.Popen, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"the local {name} server exited with code {process.returncode} while starting")
        if _answers(url):
            return
        time.sleep(0.1)
    raise StackError(f"the local {name} server did not answer on {url} within {timeout:.0f}s")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    # A new session, so that stopping the stack (or Ctrl-C in the shell) signals exactly these processes.
    return subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def start(state_dir: str | os.PathLike[str], *, timeout: float = 60.0) -> Stack:
    """Start both servers (or return the running stack recorded in ``state_dir``)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    existing = status(directory)
    if existing is not None:
        return existing
    s3_port, search_port = free_port(), free_port()
    moto = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], directory / "s3.log")
    search = _spawn(
        [_search_binary(), "-addr", f"127.0.0.1:{search_port}", "-no-stdin-watch", "-no-ja"],
        directory / "search.log",
    )
    stack = Stack(
        s3_endpoint=f"http://127.0.0.1:{s3_port}",
        search_url=f"http://127.0.0.1:{search_port}",
        s3_pid=moto.pid,
        search_pid=search.pid,
        state_dir=str(directory.resolve()),
    )
    try:
        _wait_until_up(stack.s3_endpoint, moto, "S3", timeout)
        _wait_until_up(stack.search_url, search, "search", timeout)
    except StackError:
        for process in (moto, search):
            process.kill()
            process.wait()
        raise
    (directory / STACK_FILE).write_text(stack.to_json() + "\n")
    return stack


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; its state letter in /proc says it is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a loopback URL we recorded
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def status(state_dir: str | os.PathLike[str]) -> Stack | None:
    """The stack recorded in ``state_dir`` if both of its processes are still running."""
    path = Path(state_dir) / STACK_FILE
    if not path.is_file():
        return None
    stack = Stack(**json.loads(path.read_text()))
    if all(_alive(pid) for pid in (stack.s3_pid, stack.search_pid)) and all(
        _answers(url) for url in (stack.s3_endpoint, stack.search_url)
    ):
        return stack
    return None


def _terminate(pid: int, grace: float) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its disappearance instead
            finished = 0 if _alive(pid) else pid
        if finished == pid or not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def stop(state_dir: str | os.PathLike[str], *, grace: float = 5.0) -> bool:
    """Stop the processes recorded in ``state_dir``; returns whether there was anything to stop."""
    path = Path(state_dir) / STACK_FILE
    if not path.is_file():
        return False
    stack = Stack(**json.loads(path.read_text()))
    for pid in (stack.s3_pid, stack.search_pid):
        _terminate(pid, grace)
    path.unlink()
    return True


def client_env(stack: Stack) -> dict[str, str]:
    """Environment for the CLI, the library and Airflow to use the local stack through their standard chains."""
    s3_connection = {
        "conn_type": "aws",
        "login": LOCAL_ACCESS_KEY,
        "password": LOCAL_SECRET_KEY,
        "extra": {"endpoint_url": stack.s3_endpoint, "region_name": LOCAL_REGION},
    }
    host, port = stack.search_url.removeprefix("http://").split(":")
    search_connection = {
        "conn_type": "opensearch",
        "host": host,
        "port": int(port),
        "schema": "http",
        "extra": {"engine": "opensearch", "use_ssl": False},
    }
    return {
        "AWS_ENDPOINT_URL_S3": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_DEFAULT_REGION": LOCAL_REGION,
        "LMINDEXER_SEARCH_HOSTS": stack.search_url,
        f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(s3_connection),
        f"AIRFLOW_CONN_{SEARCH_CONN_ID.upper()}": json.dumps(search_connection),
    }
