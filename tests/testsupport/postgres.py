"""A throwaway PostgreSQL server for tests: ``initdb`` in a temporary directory, ``pg_ctl start`` on a free loopback
port, one database, and ``pg_ctl stop`` (then the directory removed) when the block ends.

The binaries are looked up on ``PATH``, then in ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu keep them off
``PATH``); ``LMINDEXER_PG_BIN`` names a directory to use instead. PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` system user, in a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Settings of a server whose data is thrown away: durability costs fsyncs that a test does not need, and the rest
# keeps the server off the network and its sockets out of system directories.
_SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c listen_addresses=127.0.0.1 -c max_connections=200"
)
_BINARIES = ("initdb", "pg_ctl", "createdb")
DEBIAN_ROOT = Path("/usr/lib/postgresql")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries needed to start a server are not installed here."""


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    database: str
    directory: Path

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (trust authentication on loopback: no password)."""
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The libpq connection string, for psycopg2 in the test process."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.database}"


def find_binaries() -> Path:
    """The directory holding initdb, pg_ctl and createdb; :class:`PostgresUnavailable` says where it looked."""
    candidates: list[Path] = []
    if os.environ.get("LMINDEXER_PG_BIN"):
        candidates.append(Path(os.environ["LMINDEXER_PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    # 15 first (the version the platform is checked against), then the newest.
    versions = [p for p in DEBIAN_ROOT.glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: (p.parent.name != "15", -int(p.parent.name)))
    for directory in candidates:
        if all((directory / name).is_file() for name in _BINARIES):
            return directory
    looked = ", ".join(str(c) for c in candidates) or "nothing found"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(_BINARIES)}) not found (looked at LMINDEXER_PG_BIN, PATH and "
        f"{DEBIAN_ROOT}/*/bin: {looked}); install PostgreSQL 15 (e.g. apt-get install postgresql-15) or set "
        "LMINDEXER_PG_BIN to its bin directory"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (this user) unless we are root, which initdb and postgres refuse."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server as") from exc


def _run(args: list[str], account: pwd.struct_passwd | None, timeout: float) -> None:
    ids = {"user": account.pw_uid, "group": account.pw_gid} if account else {}
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **ids)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@contextmanager
def running_postgres(database: str = "airflow") -> Iterator[Postgres]:
    """A fresh server with one empty ``database`` until the block ends; the server is always stopped."""
    binaries = find_binaries()
    account = _server_user()
    # Not under pytest's tmp_path: that sits in a 0700 directory of the test's user, which the postgres user (under
    # root) could not enter.
    directory = Path(tempfile.mkdtemp(prefix="lmindexer-pg-"))
    data, log = directory / "data", directory / "server.log"
    if account:
        os.chown(directory, account.pw_uid, account.pw_gid)
    user, port = "airflow", _free_port()
    try:
        try:
            _run([str(binaries / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
                 account, timeout=120)  # fmt: skip
            # The unix socket goes into the throwaway directory: the system one (/var/run/postgresql) may not exist.
            options = f"{_SERVER_OPTIONS} -p {port} -k {directory}"
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
                 account, timeout=90)  # fmt: skip
            _run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database], None, 60)
        except RuntimeError as exc:
            tail = log.read_text()[-3000:] if log.is_file() else "(no server log)"
            raise RuntimeError(f"{exc}\nserver log:\n{tail}") from exc
        yield Postgres(host="127.0.0.1", port=port, user=user, database=database, directory=directory)
    finally:
        if (data / "postmaster.pid").exists():
            # fast: ends the clients' sessions (a killed Airflow may leave some) and shuts down cleanly.
            stop = [str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"]
            try:
                _run(stop, account, timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                _run([*stop[:4], "immediate", *stop[5:]], account, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
