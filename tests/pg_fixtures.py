"""A throwaway PostgreSQL cluster for the tests: ``initdb`` into a temp dir, run as the ``postgres``
user (PostgreSQL refuses to run as root) on a free loopback port, stopped at the end of the session.

``pg_cluster`` is session-scoped; ``pg_url`` gives each test a fresh, empty database in it.
Tests that need PostgreSQL skip, saying why, only when Debian's server binaries are not installed
(``scripts/test.sh`` installs them).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bin_dir() -> Path | None:
    """The newest installed PostgreSQL server binaries (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running throwaway cluster: where it is and how to reach it."""

    port: int
    directory: Path
    _names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the session, stopped and removed afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed: run scripts/test.sh, which installs "
                    "Debian's postgresql package")
    as_postgres: list[str] = []
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    directory = Path(tempfile.mkdtemp(prefix="personalizer-pg-"))
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    port = _free_port()
    data = directory / "data"
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "timeout": 60}
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], **run)  # type: ignore[arg-type]
    options = f"-p {port} -k {directory} -h 127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                    "-l", str(directory / "log"), "-w", "start"], **run)  # type: ignore[arg-type]
    try:
        yield PgCluster(port, directory)
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty database in the session's cluster."""
    return pg_cluster.new_database()
