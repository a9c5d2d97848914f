"""A real PostgreSQL 15 server for the tests: `initdb` into a temporary folder, `pg_ctl` on 127.0.0.1 with a free port.

The binaries come from the system's packages (`postgresql-15` on Debian; `.ci/run` installs it). PostgreSQL refuses
to run as root, so under root the cluster runs as the `postgres` system user (or `nobody`), owning its folder
(made in /tmp when TMPDIR is a folder that user cannot enter).
One server serves the whole test session (about 2 s to start); each test that needs isolation makes its own
database with `fresh_database()`. The server is stopped when the session ends, with `pg_ctl stop -m immediate`.

Tests skip, saying why, only when no PostgreSQL server binaries exist on this machine.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from server_helpers import free_port

SUPERUSER = "mxcp_test"
PASSWORD = "test-password-not-secret"
SKIP_REASON = ("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql-15 "
               "(.ci/run installs it)")


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps it off PATH), or the one on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _run_as() -> str | None:
    """The user the server runs as: none (ourselves) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def _folder_base(owner: str | None) -> str | None:
    """Where the cluster's folder goes: the temporary folder, unless the server runs as another user (root's case)
    who cannot reach it (a private TMPDIR, pytest's 0700 tmp_path): then /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if owner is None:
        return None
    reachable = all(folder.stat().st_mode & stat.S_IXOTH for folder in (base, *base.parents))
    return None if reachable else "/tmp"


class PostgresServer:
    """One running cluster: where it listens, how to connect, and a way to make a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = SUPERUSER
        self.password = PASSWORD
        self.dbname = "postgres"
        self.owner = _run_as()
        self.folder = Path(tempfile.mkdtemp(prefix="mxcp-pg-", dir=_folder_base(self.owner)))
        self.data = self.folder / "data"

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _call(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self.owner, check=check,
                              capture_output=True, text=True, timeout=timeout, cwd=self.folder)

    def start(self) -> None:
        password_file = self.folder / "pwfile"
        password_file.write_text(self.password + "\n")
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        os.chmod(self.folder, 0o700)
        try:
            self._call("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}",
                       "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr or exc.stdout}") from None
        options = (f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories='' "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                   "-c shared_buffers=64MB")
        started = self._call("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options,
                             "-w", "-t", "60", "start", check=False)
        if started.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace") if (self.folder / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}{started.stdout}\n{log}")

    def stop(self) -> None:
        try:
            self._call("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False, timeout=30)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- connecting -------------------------------------------------------------------------------------
    def conninfo(self, dbname: str | None = None) -> str:
        return (f"host={self.host} port={self.port} dbname={dbname or self.dbname} user={self.user} "
                f"password={self.password}")

    def parameters(self, dbname: str | None = None) -> dict[str, object]:
        """The `parameters` of a `type: postgres` secret in the user config for this server."""
        return {"host": self.host, "port": self.port, "database": dbname or self.dbname, "user": self.user,
                "password": self.password}

    def sql(self, statement: str, dbname: str | None = None) -> list[tuple]:
        """Run one statement as the superuser (autocommit); its rows, if any."""
        import psycopg

        with psycopg.connect(self.conninfo(dbname), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def fresh_database(self, prefix: str = "t") -> str:
        """A new, empty database for one test; its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name


class PostgresUnavailable(Exception):
    """What this machine lacks to run a PostgreSQL server (the message says how to get it)."""


def start_postgres() -> PostgresServer:
    """A started server, or a skip naming what is missing."""
    try:
        return launch_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def launch_postgres() -> PostgresServer:
    """A started server; PostgresUnavailable naming what is missing (for the bench as for the tests)."""
    bindir = postgres_bindir()
    if bindir is None:
        raise PostgresUnavailable(SKIP_REASON)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("psycopg is not installed (it comes with the test extra: pip install -e "
                                  "'.[test]', or the postgres extra)") from None
    server = PostgresServer(bindir)
    deadline = time.monotonic() + 5
    while True:
        try:
            server.start()
            return server
        except RuntimeError:
            # Another process may have taken the free port between picking and listening: one retry on a new one.
            if time.monotonic() > deadline:
                server.stop()
                raise
            server.stop()
            server = PostgresServer(bindir)
        except BaseException:
            server.stop()  # an initdb or pg_ctl that timed out, an interrupt: no folder or server left behind
            raise
