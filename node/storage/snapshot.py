"""Consistent copies of a node's database while it serves, and checks of such copies:
the storage half of `chatnode backup` and `chatnode restore` (node/backup.py).

Everything a backup records about the database comes from ONE snapshot, the same one
the copy is made from: the schema version, the rows per table, and the keys of the
plugin namespaces asked for (the media plugin's content records, so the backup copies
exactly the files the copied database refers to).

- **LMDB**: a read-only handle on the environment (another process may write meanwhile:
  LMDB readers never block the writer) and one read transaction; the copy is
  `Environment.copy(dest, compact=True, txn=...)` of that transaction, so it is the
  database as of that instant, compacted (free pages left out).
- **PostgreSQL**: a ``REPEATABLE READ`` transaction exports its snapshot
  (``pg_export_snapshot()``); ``pg_dump --snapshot`` dumps exactly that snapshot while the
  transaction reads the counts and keys from it.

All functions here block: call them in worker threads (`pg_dump` runs as a child process).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from .api import StorageError


@attrs.frozen
class Snapshot:
    """What a backup knows of the database it copied."""

    engine: str
    schema_version: int
    counts: dict[str, int]  # rows (LMDB: entries) per table (LMDB: named database)
    keys: dict[str, list[bytes]]  # plugin namespace -> its keys, as of the snapshot
    size: int = 0  # bytes of the database when the snapshot began (for progress)


# -- LMDB --------------------------------------------------------------------------------------


def _lmdb_open(path: Path, *, readonly_copy: bool) -> Any:
    import lmdb

    if not (path / "data.mdb").is_file():
        raise StorageError(f"no LMDB environment at {path}")
    try:
        # A copy is read without a lock file (its folder may be read-only); a live
        # environment is read with one, as one more reader of the running node's.
        return lmdb.open(str(path), readonly=True, lock=not readonly_copy, max_dbs=64, max_readers=512,
                         readahead=False)
    except lmdb.Error as exc:
        raise StorageError(f"cannot open the LMDB environment at {path}: {exc}") from None


def _lmdb_read(env: Any, txn: Any, namespaces: Iterable[str]) -> tuple[int, dict[str, int], dict[str, list[bytes]]]:
    from .lmdb_engine import DATABASES, kv_key

    handles = {}
    for name in DATABASES:
        try:
            handles[name] = env.open_db(name.encode(), txn=txn, create=False)
        except Exception:  # a database a newer schema added (and this copy lacks): none
            continue
    raw = txn.get(b"schema_version", db=handles["meta"]) if "meta" in handles else None
    if raw is None:
        raise StorageError("the environment has no schema version: not a chatnode database")
    counts = {name: txn.stat(handle)["entries"] for name, handle in handles.items()}
    keys: dict[str, list[bytes]] = {}
    for namespace in namespaces:
        prefix = kv_key(namespace, b"")
        found = []
        if "plugin_kv" in handles:
            cursor = txn.cursor(db=handles["plugin_kv"])
            if cursor.set_range(prefix):
                for key in cursor.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    found.append(bytes(key[len(prefix):]))
        keys[namespace] = found
    return int(raw), counts, keys


def lmdb_copy(db_dir: Path, dest_dir: Path, namespaces: Iterable[str] = (),
              on_start: Callable[[int], None] = lambda _size: None) -> Snapshot:
    """Copy the environment at `db_dir` (a node may be writing it) into `dest_dir` (made,
    must not exist) as of one snapshot, compacted. `on_start(bytes)` is told the size of
    what is being copied once the snapshot is taken."""
    env = _lmdb_open(db_dir, readonly_copy=False)
    try:
        with env.begin() as txn:
            version, counts, keys = _lmdb_read(env, txn, namespaces)
            info = env.info()
            size = (info["last_pgno"] + 1) * env.stat()["psize"]
            on_start(size)
            dest_dir.mkdir(mode=0o700)
            env.copy(str(dest_dir), compact=True, txn=txn)
    finally:
        env.close()
    os.chmod(dest_dir / "data.mdb", 0o600)
    return Snapshot("lmdb", version, counts, keys, size)


def lmdb_examine(db_dir: Path, namespaces: Iterable[str] = ()) -> Snapshot:
    """Schema version, counts and keys of an environment nothing writes (a backup's copy)."""
    env = _lmdb_open(db_dir, readonly_copy=True)
    try:
        with env.begin() as txn:
            version, counts, keys = _lmdb_read(env, txn, namespaces)
    finally:
        env.close()
    return Snapshot("lmdb", version, counts, keys, (db_dir / "data.mdb").stat().st_size)


def lmdb_schema_version() -> int:
    from .lmdb_engine import SCHEMA_VERSION

    return SCHEMA_VERSION


# -- PostgreSQL ------------------------------------------------------------------------------------


def _pg_tables(conn: Any) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename")
    return [name for (name,) in rows.fetchall()]


def _pg_read(conn: Any, namespaces: Iterable[str]) -> tuple[int, dict[str, int], dict[str, list[bytes]]]:
    from psycopg import sql

    tables = _pg_tables(conn)
    if "schema_version" not in tables:
        raise StorageError("the database has no chatnode tables")
    version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
              for t in tables}
    keys = {ns: [bytes(k) for (k,) in conn.execute(
        "SELECT key FROM plugin_kv WHERE namespace = %s ORDER BY key", (ns,)).fetchall()] for ns in namespaces}
    return int(version), counts, keys


def _libpq_env(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and an environment that carries the password (so it
    never shows in a process list)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def find_tool(name: str) -> str:
    """`pg_dump` or `pg_restore`: on PATH, else Debian's PostgreSQL 15."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise StorageError(f"{name} was not found: install the PostgreSQL client tools (Debian: postgresql-client)")
    return found


def postgres_dump(dsn: str, dest_file: Path, namespaces: Iterable[str] = (),
                  on_start: Callable[[int], None] = lambda _size: None) -> Snapshot:
    """`pg_dump` (custom format) of the node's database into `dest_file`, of one
    snapshot that the counts and keys are read from too."""
    import psycopg

    try:
        conn = psycopg.connect(dsn, application_name="chatnode-backup")
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    try:
        with conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            version, counts, keys = _pg_read(conn, namespaces)
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            on_start(int(size))
            where, env = _libpq_env(dsn)
            fd = os.open(dest_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            done = subprocess.run(
                [find_tool("pg_dump"), "--format=custom", f"--snapshot={snapshot}", "--no-password",
                 f"--file={dest_file}", f"--dbname={where}"],
                env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StorageError(f"pg_dump failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done}")
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    finally:
        conn.close()
    return Snapshot("postgresql", version, counts, keys, int(size))


def postgres_dump_tables(dump_file: Path) -> set[str]:
    """The tables whose data a custom-format dump holds (`pg_restore --list`): it reads."""
    done = subprocess.run([find_tool("pg_restore"), "--list", str(dump_file)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise StorageError(f"pg_restore cannot read {dump_file}: {done.stderr.strip()}")
    out = set()
    for line in done.stdout.splitlines():
        parts = line.split()
        if "TABLE DATA" in line and len(parts) >= 2:
            out.add(parts[-2])
    return out


def postgres_target_empty(dsn: str) -> bool:
    """Whether the database has no tables yet (a restore's target)."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, application_name="chatnode-restore") as conn:
            return not _pg_tables(conn)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}") from None


def postgres_restore(dump_file: Path, dsn: str, namespaces: Iterable[str] = ()) -> Snapshot:
    """`pg_restore` a dump into the (empty) database in one transaction; then what the
    database holds, to compare with the backup's manifest."""
    import psycopg

    where, env = _libpq_env(dsn)
    done = subprocess.run(
        [find_tool("pg_restore"), "--exit-on-error", "--single-transaction", "--no-owner", "--no-privileges",
         "--no-password", f"--dbname={where}", str(dump_file)],
        env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StorageError(f"pg_restore failed (nothing was restored): {done.stderr.strip()[-500:]}")
    try:
        with psycopg.connect(dsn, application_name="chatnode-restore") as conn:
            version, counts, keys = _pg_read(conn, namespaces)
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL: {str(exc).strip().splitlines()[0]}") from None
    return Snapshot("postgresql", version, counts, keys)


def postgres_schema_version() -> int:
    from .pg_schema import SCHEMA_VERSION

    return SCHEMA_VERSION
