"""Is a node using this storage right now? Asked by the commands that work on a stopped
node's data (`chatnode admin --offline`, `chatnode restore`).

- LMDB: a running node holds an exclusive lock on ``data_dir/node.lock`` (node/preflight.py);
  `lock_data_dir` takes the same lock, so no node can start while it is held.
- PostgreSQL: every node's sessions carry ``application_name = chatnode``
  (node/storage/postgres.py); `node_sessions` lists those connected to the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

LOCK_FILE = "node.lock"  # held by every running node (node/preflight.py)


class InUse(Exception):
    """A node is running on this data (the message says which, and what to do)."""


def open_lock_file(data_dir: Path) -> IO[str]:
    """The data dir's lock file, 0600 as every file in the data dir (it holds only a
    pid, but nothing there is for other users)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with contextlib.suppress(PermissionError):  # another user's lock file: flock tells the rest
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a+")


def _try_lock(data_dir: Path) -> IO[str]:
    lock = open_lock_file(data_dir)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise InUse(f"{data_dir} is in use by a running node (pid {holder})") from None
    return lock


@contextlib.contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[IO[str]]:
    """Hold the data dir's node lock for the block; `InUse` if a node holds it."""
    lock = _try_lock(data_dir)
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")  # who holds it, for a node refused meanwhile
        lock.flush()
        yield lock
    finally:
        lock.close()


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether a running node holds the data dir's lock (without taking it for long)."""
    if not (data_dir / LOCK_FILE).exists():
        return False
    try:
        _try_lock(data_dir).close()
    except InUse:
        return True
    return False


def node_sessions(dsn: str, timeout: float = 5.0, settle: float = 3.0) -> list[str]:
    """``pid@address`` of the sessions of chatnode nodes connected to the database (not
    this process's own). A node that just stopped leaves its server processes a moment
    longer: asked again for up to `settle` seconds while any are listed. Blocking: call it
    in a worker thread."""
    import psycopg

    from .api import StorageError

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout)),
                             application_name="chatnode-admin") as conn:
            deadline = time.monotonic() + settle
            while True:
                rows = conn.execute(
                    "SELECT pid, coalesce(host(client_addr), 'local') FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'chatnode'"
                ).fetchall()
                if not rows or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)  # (a worker thread)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    return [f"{pid}@{address}" for pid, address in rows]
