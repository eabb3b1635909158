"""`chatnode storage copy` and `chatnode storage verify`: a stopped node's data, from one
engine to the other (LMDB to PostgreSQL when a node joins a cluster, and back).

Both engines export and import the same engine-neutral rows (`Storage.export` and
`Storage.import_rows`, node/storage/api.py), so one tool serves every direction and
checks the result the same way:

- **Copy**: table by table (`EXPORT_TABLES`), one page of rows per transaction. Import
  skips rows already stored, so a copy that stopped part-way (killed, a lost connection)
  goes on where it stopped when run again.
- **The target** must be empty, or an unfinished copy of this same source: a marker in
  its `meta` (`storage_copy`) names the source and says whether the copy was verified.
  A target holding anything else is refused before a row is written, so a copy never
  merges two nodes' data. A verified copy is never written again, only verified.
- **Verification**: per table, the number of rows and a SHA-256 over every row in key
  order, read from both sides (both engines export in the same order). Where a table
  differs, the first differing rows are named.
- **Stopped**: the caller (node/cli.py) holds the node lock of each data dir involved;
  for PostgreSQL this module refuses a database a node is connected to, and holds an
  advisory lock so that two copies never share a database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import IO, Any

import attrs
import orjson
import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .api import EXPORT_TABLES, Storage, StorageError
from .batch import WriteBatch
from .lmdb_engine import DEDUPE_BACKFILL, SEARCH_INDEX_ID, LmdbStorage, open_lmdb
from .postgres import PostgresStorage, open_postgres

#: The key in the target's `meta` that says what it is a copy of (never copied or compared).
MARKER = "storage_copy"
#: The application_name of the copy's own PostgreSQL sessions; a node's are "chatnode".
COPY_APPLICATION = "chatnode-copy"
#: pg_try_advisory_lock key held by a copy on each database it uses ("chatcopy").
COPY_LOCK = 0x63686174_636F7079
PAGE = 1000

#: The key columns of each exported table (rows come in this order from both engines).
KEYS: dict[str, tuple[str, ...]] = {
    "meta": ("key",), "users": ("user_id",), "tokens": ("hash",), "chats": ("chat_id",),
    "members": ("chat_id", "user_id"), "directs": ("low", "high"), "messages": ("chat_id", "seq"),
    "dedupe": ("user_id", "client_msg_id"), "blocks": ("blocker", "blocked"), "kv": ("namespace", "key"),
}
_LMDB_DATABASES = {"directs": "direct", "messages": "log", "kv": "plugin_kv"}
_PG_COUNTS = {
    "meta": f"SELECT count(*) FROM meta WHERE key <> '{MARKER}'",
    "users": "SELECT count(*) FROM users WHERE record IS NOT NULL",
    "tokens": "SELECT count(*) FROM tokens",
    "chats": "SELECT count(*) FROM chats WHERE record IS NOT NULL",
    "members": "SELECT count(*) FROM members",
    "directs": "SELECT count(*) FROM direct_chats",
    "messages": "SELECT count(*) FROM messages",
    "dedupe": "SELECT count(*) FROM dedupe",
    "blocks": "SELECT count(*) FROM blocks",
    "kv": "SELECT count(*) FROM plugin_kv",
}


class CopyRefused(Exception):
    """The copy or verification cannot run as asked (nothing was written)."""


# -- where data lives --------------------------------------------------------------------


@attrs.frozen
class Location:
    """One side of a copy: ``lmdb`` with a node data dir (the environment is its ``db/``),
    or ``postgresql`` with a libpq DSN (which may hold a password: never printed)."""

    engine: str
    where: str

    @classmethod
    def parse(cls, text: str) -> Location:
        """`postgresql://...` (or `postgres://`), `postgresql:KEY=VALUE ...`, or `lmdb:DATA_DIR`."""
        if text.startswith(("postgresql://", "postgres://")):
            dsn = text
        elif text.startswith("postgresql:"):
            dsn = text.removeprefix("postgresql:").strip()
        elif text.startswith("lmdb:") and text.removeprefix("lmdb:").strip():
            return cls("lmdb", str(Path(text.removeprefix("lmdb:").strip()).expanduser().resolve()))
        else:
            raise CopyRefused(
                f"{text!r} is not a place for data: give postgresql://USER@HOST/DBNAME, "
                "postgresql:'host=... dbname=...', or lmdb:DATA_DIR (a node data dir)")
        try:
            conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise CopyRefused(f"not a valid PostgreSQL DSN: {exc}") from None
        return cls("postgresql", dsn)

    @property
    def name(self) -> str:
        """How it is shown and recorded in the target's marker: a path, or the DSN's
        parameters in a fixed order without the password."""
        if self.engine == "lmdb":
            return f"lmdb:{Path(self.where) / 'db'}"
        params = {k: v for k, v in conninfo_to_dict(self.where).items() if k != "password"}
        return "postgresql:" + " ".join(f"{k}={params[k]}" for k in sorted(params))


@attrs.frozen
class Settings:
    """How the engines are opened (from the config's [storage] section)."""

    map_size: int = 1 << 30
    max_map_size: int = 1 << 40
    max_batch: int = 2048
    commit_timeout: float = 10.0


@contextlib.asynccontextmanager
async def open_location(location: Location, settings: Settings, *, must_exist: bool) -> AsyncIterator[Storage]:
    """Open one side. `must_exist`: it has to hold a node's data already (a source, or
    what is verified against it); otherwise an empty store is created."""
    if location.engine == "lmdb":
        path = Path(location.where) / "db"
        if must_exist and not (path / "data.mdb").exists():
            raise CopyRefused(f"there is no LMDB database in {path} (is the data dir right?)")
        async with open_lmdb(path, map_size=settings.map_size, max_map_size=settings.max_map_size,
                             max_batch=settings.max_batch, sync=True) as storage:
            yield storage
        return
    claim = await trio.to_thread.run_sync(_claim_database, location, must_exist)
    try:
        async with open_postgres(make_conninfo(location.where, application_name=COPY_APPLICATION), pool_size=4,
                                 max_batch=settings.max_batch, commit_timeout=settings.commit_timeout) as storage:
            yield storage
    finally:
        await trio.to_thread.run_sync(claim.close)


def _claim_database(location: Location, must_exist: bool) -> psycopg.Connection[Any]:
    """A session that holds the copy's advisory lock on a database no node is connected
    to (nodes name their sessions "chatnode"). Runs in a worker thread."""
    try:
        conn = psycopg.connect(location.where, autocommit=True, application_name=COPY_APPLICATION,
                               connect_timeout=10)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {location.name}: {str(exc).strip().splitlines()[0]}") from None
    try:
        if must_exist and conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,):
            raise CopyRefused(f"{location.name} holds no chatnode data")
        nodes = conn.execute(
            "SELECT pid, coalesce(host(client_addr), 'local') FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND application_name LIKE 'chatnode%%' AND application_name <> %s",
            (COPY_APPLICATION,)).fetchall()
        if nodes:
            where = ", ".join(f"pid {pid} from {client}" for pid, client in nodes)
            raise CopyRefused(f"{len(nodes)} chatnode session(s) are connected to {location.name} ({where}): "
                              "stop every node that uses this database first")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (COPY_LOCK,)).fetchone() == (True,):
            raise CopyRefused(f"another chatnode storage copy is using {location.name}")
    except BaseException:
        conn.close()
        raise
    return conn


# -- rows, their digest and their differences -----------------------------------------------


def _bytes(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        return {"$bytes": bytes(value).hex()}
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_row(row: tuple[Any, ...]) -> bytes:
    """A row's canonical bytes: JSON with sorted keys, bytes as hex, named tuples as lists."""
    plain = [list(value) if isinstance(value, tuple) else value for value in row]
    return orjson.dumps(plain, default=_bytes, option=orjson.OPT_SORT_KEYS) + b"\n"


def _kept(table: str, row: tuple[Any, ...]) -> bool:
    """The copy's own marker is no part of a node's data."""
    return not (table == "meta" and row[0] == MARKER)


async def _rows(storage: Storage, table: str, page: int) -> AsyncGenerator[list[tuple[Any, ...]], None]:
    """The table's pages, without the copy's marker."""
    async with contextlib.aclosing(storage.export(table, page)) as pages:  # type: ignore[type-var]
        async for rows in pages:
            yield [row for row in rows if _kept(table, row)]


async def count_rows(storage: Storage, table: str) -> int | None:
    """How many rows a table has (for progress; None where the engine cannot tell cheaply)."""
    if isinstance(storage, LmdbStorage):
        with storage.env.begin() as txn:
            entries = int(txn.stat(storage.handles[_LMDB_DATABASES.get(table, table)])["entries"])
            if table == "meta":  # keys the engine keeps to itself, and the marker
                entries -= sum(txn.get(key, db=storage.handles["meta"]) is not None
                               for key in (b"schema_version", DEDUPE_BACKFILL.encode(), SEARCH_INDEX_ID.encode(),
                                           MARKER.encode()))
            return entries
    if isinstance(storage, PostgresStorage) and table in _PG_COUNTS:
        return int((await storage._rows(_PG_COUNTS[table]))[0][0])
    return None


@attrs.frozen
class TableCheck:
    """One table, as seen on both sides."""

    table: str
    source_rows: int
    target_rows: int
    source_sha256: str
    target_sha256: str
    differences: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        return self.source_rows == self.target_rows and self.source_sha256 == self.target_sha256


async def _digest(storage: Storage, table: str, page: int, progress: Progress | None) -> tuple[int, str]:
    count, sha = 0, hashlib.sha256()
    async for rows in _rows(storage, table, page):
        for row in rows:
            sha.update(encode_row(row))
        count += len(rows)
        if progress is not None:
            progress.advance(len(rows))
    return count, sha.hexdigest()


def _show_key(table: str, key: tuple[Any, ...]) -> str:
    def show(value: Any) -> str:
        return value.hex()[:16] + ("…" if len(value) > 8 else "") if isinstance(value, bytes) else repr(value)

    return " ".join(f"{name}={show(value)}" for name, value in zip(KEYS.get(table, ()), key, strict=False))


async def _differences(source: Storage, target: Storage, table: str, page: int, limit: int = 5) -> list[str]:
    """The first rows that differ: both sides walked in key order, side by side."""
    width = len(KEYS.get(table, ())) or 1
    out: list[str] = []

    async def flat(storage: Storage) -> AsyncGenerator[tuple[Any, ...], None]:
        async for rows in _rows(storage, table, page):
            for row in rows:
                yield row

    async with contextlib.aclosing(flat(source)) as a_rows, contextlib.aclosing(flat(target)) as b_rows:
        a = await anext(a_rows, None)
        b = await anext(b_rows, None)
        while (a is not None or b is not None) and len(out) < limit:
            if b is None or (a is not None and a[:width] < b[:width]):
                assert a is not None
                out.append(f"only in the source: {_show_key(table, a[:width])}")
                a = await anext(a_rows, None)
            elif a is None or b[:width] < a[:width]:
                out.append(f"only in the target: {_show_key(table, b[:width])}")
                b = await anext(b_rows, None)
            else:
                if encode_row(a) != encode_row(b):
                    out.append(f"different: {_show_key(table, a[:width])}")
                a, b = await anext(a_rows, None), await anext(b_rows, None)
    return out


async def verify(source: Storage, target: Storage, *, page: int = PAGE,
                 progress: Progress | None = None) -> list[TableCheck]:
    """Counts and SHA-256 of every table on both sides (read side by side)."""
    checks = []
    for table in EXPORT_TABLES:
        if progress is not None:
            progress.start(f"verify {table}", await count_rows(source, table))
        sides: dict[str, tuple[int, str]] = {}

        async def side(name: str, storage: Storage, shown: Progress | None) -> None:
            sides[name] = await _digest(storage, table, page, shown)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "source", source, progress)
            nursery.start_soon(side, "target", target, None)
        if progress is not None:
            progress.finish()
        (source_rows, source_sha), (target_rows, target_sha) = sides["source"], sides["target"]
        check = TableCheck(table, source_rows, target_rows, source_sha, target_sha)
        if not check.same:
            check = attrs.evolve(check, differences=tuple(await _differences(source, target, table, page)))
        checks.append(check)
    return checks


def report(checks: list[TableCheck], out: IO[str]) -> bool:
    """Print the comparison; True if every table is the same on both sides."""
    print(f"{'table':<10} {'source rows':>12} {'target rows':>12}  sha256 (source / target)", file=out)
    for c in checks:
        digests = c.source_sha256[:12] if c.same else f"{c.source_sha256[:12]} / {c.target_sha256[:12]}"
        print(f"{c.table:<10} {c.source_rows:>12,} {c.target_rows:>12,}  {digests:<27}  "
              f"{'ok' if c.same else 'DIFFERENT'}", file=out)
        for line in c.differences:
            print(f"    {line}", file=out)
    bad = [c.table for c in checks if not c.same]
    if bad:
        print(f"MISMATCH: {', '.join(bad)} differ between source and target", file=out)
        return False
    rows = sum(c.source_rows for c in checks)
    print(f"OK: source and target hold the same {_rows_text(rows)} ({len(checks)} tables, counts and SHA-256 equal)",
          file=out)
    return True


# -- progress ------------------------------------------------------------------------------


class Progress:
    """A line per step on stderr: redrawn in place on a terminal; elsewhere (a log, a
    pipe) printed at every tenth, so a long copy still shows that it moves."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.label = ""
        self.total: int | None = None
        self.done = 0
        self._shown = -1
        self._drawn = 0.0

    def start(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done, self._shown = label, total, 0, 0
        if self.tty:
            self._draw(force=True)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.tty:
            self._draw()
        elif self.total and self.done < self.total:
            tenth = 10 * self.done // self.total
            if tenth > self._shown:
                self._shown = tenth
                print(f"{self.label}: {100 * self.done // self.total} % ({self.done:,} of {self.total:,} rows)",
                      file=self.stream, flush=True)

    def finish(self) -> None:
        line = f"{self.label}: {_rows_text(self.done)}, done"
        print(f"\r{line:<72}" if self.tty else line, file=self.stream, flush=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        if self.total:
            share = min(100.0, 100.0 * self.done / self.total)
            bar = "#" * int(share / 5)
            line = f"{self.label:<18} [{bar:<20}] {share:5.1f} % ({self.done:,} of {self.total:,} rows)"
        else:
            line = f"{self.label:<18} {_rows_text(self.done)}"
        print(f"\r{line:<72}", end="", file=self.stream, flush=True)


def _rows_text(n: int) -> str:
    return "1 row" if n == 1 else f"{n:,} rows"


# -- the commands ----------------------------------------------------------------------------


async def _marker(storage: Storage) -> dict[str, Any] | None:
    raw = await storage.get_meta(MARKER)
    return orjson.loads(raw) if raw else None


async def _write_marker(storage: Storage, source: Location, state: str) -> None:
    batch = WriteBatch()
    batch.put_meta(MARKER, orjson.dumps({"source": source.name, "state": state, "at": int(time.time() * 1000)}))
    await storage.write(batch)


async def _tables_with_rows(storage: Storage) -> list[str]:
    out = []
    for table in EXPORT_TABLES:
        async with contextlib.aclosing(_rows(storage, table, 2)) as pages:  # of two rows, one at most is the marker
            if await anext(pages, []):
                out.append(table)
    return out


async def _target_state(target: Storage, source: Location, target_at: Location) -> str:
    """"empty", "unfinished" or "verified" (a copy of `source`); anything else is refused."""
    marker = await _marker(target)
    if marker is None:
        tables = await _tables_with_rows(target)
        if tables:
            raise CopyRefused(
                f"the target {target_at.name} already holds data ({', '.join(tables)}) and is not a copy of "
                f"{source.name}: copy into an empty database or data dir (nothing was written)")
        return "empty"
    if marker.get("source") != source.name:
        raise CopyRefused(f"the target {target_at.name} is a copy of {marker.get('source')}, not of {source.name} "
                          "(nothing was written)")
    return "verified" if marker.get("state") == "verified" else "unfinished"


def check_places(source: Location, target: Location) -> None:
    """What can be refused before anything is opened, locked or created."""
    if source.name == target.name:
        raise CopyRefused(f"the source and the target are the same ({source.name})")
    if source.engine == "lmdb" and not (Path(source.where) / "db" / "data.mdb").exists():
        raise CopyRefused(f"there is no LMDB database in {Path(source.where) / 'db'} (is node.data_dir right?)")


async def copy_rows(source: Storage, target: Storage, *, page: int = PAGE, progress: Progress | None = None,
                    kill_after_pages: int | None = None) -> int:
    """Every table's rows into `target`, a page per transaction (rows it has are skipped).
    `kill_after_pages` ends the process abruptly (SIGKILL) after that many pages: how the
    tests interrupt a copy at a known point. Returns the rows read."""
    pages = rows_read = 0
    for table in EXPORT_TABLES:
        if progress is not None:
            progress.start(f"copy {table}", await count_rows(source, table))
        async for rows in _rows(source, table, page):
            await target.import_rows(table, rows)
            rows_read += len(rows)
            pages += 1
            if progress is not None:
                progress.advance(len(rows))
            if kill_after_pages is not None and pages >= kill_after_pages:
                os.kill(os.getpid(), signal.SIGKILL)
        if progress is not None:
            progress.finish()
    return rows_read


async def run_copy(source: Location, target: Location, settings: Settings, *, page: int = PAGE,
                   out: IO[str] = sys.stdout, err: IO[str] = sys.stderr,
                   kill_after_pages: int | None = None) -> int:
    """`chatnode storage copy`: 0 if the target verifies, 1 if it differs. Raises
    `CopyRefused` or `StorageError` when it cannot run."""
    check_places(source, target)
    progress = Progress(err)
    async with open_location(source, settings, must_exist=True) as src, \
            open_location(target, settings, must_exist=False) as dst:
        state = await _target_state(dst, source, target)
        print(f"copy {source.name} -> {target.name}", file=out, flush=True)
        if state == "verified":
            print("the target is a finished, verified copy of this source: verifying it again", file=out, flush=True)
        else:
            if state == "empty":
                await _write_marker(dst, source, "copying")
            else:
                print("the target is an unfinished copy of this source: continuing (rows it has are skipped)",
                      file=out, flush=True)
            await copy_rows(src, dst, page=page, progress=progress, kill_after_pages=kill_after_pages)
        same = report(await verify(src, dst, page=page, progress=progress), out)
        if same and state != "verified":
            await _write_marker(dst, source, "verified")
        if not same:
            print("the target is not a faithful copy: do not start a node on it. If the source changed since "
                  "the copy began, copy again into an empty target.", file=out)
        return 0 if same else 1


async def run_verify(source: Location, target: Location, settings: Settings, *, page: int = PAGE,
                     out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """`chatnode storage verify`: compare two stores without writing; 0 if the same, 1 if not."""
    check_places(source, target)
    async with open_location(source, settings, must_exist=True) as src, \
            open_location(target, settings, must_exist=True) as dst:
        print(f"verify {source.name} against {target.name}", file=out, flush=True)
        return 0 if report(await verify(src, dst, page=page, progress=Progress(err)), out) else 1
