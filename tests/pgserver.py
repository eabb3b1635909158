"""A private PostgreSQL server for tests and benchmarks: initdb in a temp dir, a free
loopback port. (The pytest fixtures over it are in tests/conftest.py; bench/run.py imports
this module too, so it needs nothing but the standard library and psycopg.)

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
`postgres` system user (created by Debian's package) in a directory it owns, through
`runuser`; the client side stays root. The server is always stopped by its own data
dir (`pg_ctl stop`), never by a process name, and `atexit` stops it if a test run
ends without its fixture's finaliser.

    with PgServer() as server:           # or server = PgServer(); server.start() ... server.stop()
        dsn = server.create_database()
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self

import trio
from ports import free_port

from node.testing import wait_until_sync

BIN = Path(os.environ.get("CHATNODE_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "chat"  # the superuser initdb creates (trust authentication, loopback only)

#: Settings that make a throwaway server fast without changing what the engine sees:
#: sessions still ask for synchronous_commit = on; without fsync a commit is not durable
#: against an OS crash, which no test simulates (a killed server loses nothing the OS has).
FAST = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "64MB", "max_wal_size": "1GB"}


def available() -> bool:
    return (BIN / "initdb").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PgServer:
    """One private cluster. `fsync=True` keeps PostgreSQL's durable defaults (for
    durability tests and measurements); `settings` adds `-c name=value` options."""

    def __init__(self, *, fsync: bool = False, settings: dict[str, Any] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatnode-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "log"
        self.port = 0
        self.settings: dict[str, Any] = {} if fsync else dict(FAST)
        self.settings.update({"max_connections": 300, **(settings or {})})
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self.running = False

    # -- life cycle ----------------------------------------------------------------

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> Self:
        if not available():
            raise RuntimeError(f"PostgreSQL is not installed ({BIN}/initdb is missing): run `make postgres`")
        if self._as_postgres:
            uid = pwd.getpwnam("postgres").pw_uid
            os.chown(self.root, uid, -1)
        self.root.chmod(0o755)
        if not (self.data / "PG_VERSION").exists():  # (a replica's data dir is a base backup)
            self._run(BIN / "initdb", "-D", self.data, "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C.UTF-8",
                      "--no-sync")
        atexit.register(self.stop)
        self.resume()
        return self

    def replica(self, name: str = "standby1", port: int = 0) -> PgServer:
        """A streaming standby of this running server, named `name` (what
        synchronous_standby_names refers to), on `port` (0: a free one); `start()` it (or
        use it with `with`)."""
        standby = PgServer(settings=self.settings)
        standby.port = port
        if self._as_postgres:
            os.chown(standby.root, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-D", standby.data,
                  "-R", "-X", "stream", "-c", "fast", "--no-sync")
        with open(standby.data / "postgresql.auto.conf", "a") as conf:  # the last setting wins
            conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.port} user={USER} application_name={name}'\n")
        return standby

    def promote(self) -> None:
        """Make a standby the primary; returns once it accepts writes."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-w", "-t", "60", "promote")

    def resume(self) -> None:
        """Start the server on its data dir (again, after `stop`, `crash` or `kill`), same port."""
        self._drop_stale_lock()
        self.port = self.port or free_port()
        options = [f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        result = self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                           "-o", " ".join(options), "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {result.stdout}{result.stderr}\n{self.tail_log()}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server of this data dir; `mode="immediate"` is a crash (no checkpoint,
        recovery at the next start). A no-op when it is not running."""
        if self.running and (self.data / "postmaster.pid").exists():
            self._run(BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)
        self.running = False

    def crash(self) -> None:
        self.stop("immediate")

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL this data dir's postmaster, as a dying machine would: no shutdown at
        all. Its children (backends, walsenders) find it gone and exit; returns once they
        have, so the port is free. The data dir stays as the crash left it."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        family = [pid, *_children(pid)]
        os.kill(pid, signal.SIGKILL)
        self.running = False
        try:
            wait_until_sync(lambda: not any(_alive(p) for p in family), timeout)
        except trio.TooSlowError:
            raise RuntimeError(f"processes of the killed PostgreSQL {self.data} did not exit: {family}") from None

    def _drop_stale_lock(self) -> None:
        """After `kill`, the lock files name a postmaster that is gone, or a zombie not yet
        reaped, which PostgreSQL takes for a running server: remove them (and the socket)."""
        socket_lock = self.root / f".s.PGSQL.{self.port}.lock"
        for lock in (self.data / "postmaster.pid", socket_lock):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _alive(int(lock.read_text().split()[0])):
                    lock.unlink()
                    if lock == socket_lock:
                        (self.root / f".s.PGSQL.{self.port}").unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop("immediate")  # (its data goes next: nothing to checkpoint)
        atexit.unregister(self.stop)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def tail_log(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- databases -----------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", **extra: Any) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": USER, "dbname": dbname, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit); the rows it returns, if any."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dict(part.split("=", 1) for part in dsn.split())["dbname"]
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
