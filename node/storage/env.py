"""The LMDB environment: named databases, schema version, reads, map growth.

Reads come in two sizes. Short point reads run on the event loop inside
`Storage.read()` (a few microseconds; LMDB readers never wait for the writer). Range
scans that may touch many records run in a worker thread with `Storage.read_in_thread`.
All writes go through the single `Writer` (group commit).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import trio

from .writer import WriteBatch, Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 2

#: Core named databases. Keys are documented in docs/architecture.md.
CORE_DATABASES = (
    "meta",  # b"schema_version", b"id_high_water", b"dedupe_backfill" -> values
    "users",  # user_id -> user record
    "usernames",  # lower-case username -> user_id
    "tokens",  # sha256(token) -> token record
    "chats",  # chat_id -> chat record
    "members",  # chat_id|user_id -> member record
    "user_chats",  # user_id|chat_id -> b"" (index of a user's chats)
    "direct",  # low user_id|high user_id -> chat_id
    "log",  # chat_id|seq -> message record (the chat log)
    "msgids",  # message id -> chat_id|seq
    "dedupe",  # user_id|client_msg_id -> chat_id|seq|message_id|ts (idempotent sends)
    "dedupe_by_time",  # ts|user_id|client_msg_id -> b"" (which dedupe records are due for purging)
    "chat_seq",  # chat_id -> last seq assigned (survives purges of the newest entries)
    "expiry",  # expires_at|chat_id|seq -> message_id (disappearing messages to purge)
    "blocks",  # blocker user_id|blocked user_id -> b""
)

MB = 1024 * 1024


class StorageError(Exception):
    """A storage operation failed; nothing of the failed write was applied."""


class Storage:
    """One LMDB environment per process, all named databases opened up front."""

    def __init__(
        self,
        path: Path,
        *,
        databases: Iterable[str],
        map_size: int,
        max_map_size: int,
        max_batch: int,
        sync: bool = True,
    ) -> None:
        self.path = path
        self.max_map_size = max_map_size
        names = list(dict.fromkeys(databases))
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(names),
            max_readers=512,
            sync=sync,
            metasync=sync,
            readahead=False,
        )
        # Every DBI is opened in one transaction before any other thread touches the env.
        self.handles: dict[str, Any] = {}
        with self.env.begin(write=True) as txn:
            for name in names:
                self.handles[name] = self.env.open_db(name.encode(), txn=txn)
        self.writer = Writer(self, max_batch=max_batch)
        self._thread_readers = 0
        self._readers_idle = trio.Event()
        self._readers_idle.set()
        self._growing: trio.Event | None = None
        try:
            self._check_schema()
        except BaseException:
            self.env.close()
            raise

    # -- reads ---------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction for short point reads on the event loop. Never await inside."""
        with self.env.begin(buffers=False) as txn:
            yield txn

    def get(self, db: str, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.handles[db])

    async def read_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(txn, *args)` in a worker thread inside one read transaction."""
        while self._growing is not None:
            await self._growing.wait()
        if self._thread_readers == 0:
            self._readers_idle = trio.Event()
        self._thread_readers += 1
        try:
            return await trio.to_thread.run_sync(self._run_read, fn, args)
        finally:
            self._thread_readers -= 1
            if self._thread_readers == 0:
                self._readers_idle.set()

    def _run_read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.env.begin() as txn:
            return fn(txn, *args)

    def scan(
        self, txn: lmdb.Transaction, db: str, start: bytes, end: bytes, *, reverse: bool = False, limit: int = 0
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with start <= key < end, ascending or descending."""
        cursor = txn.cursor(db=self.handles[db])
        count = 0
        if not reverse:
            if not cursor.set_range(start):
                return
            for key, value in cursor:
                if key >= end:
                    return
                yield key, value
                count += 1
                if limit and count >= limit:
                    return
        else:
            if cursor.set_range(end):
                if not cursor.prev():
                    return
            elif not cursor.last():
                return
            for key, value in cursor.iterprev():
                if key < start:
                    return
                yield key, value
                count += 1
                if limit and count >= limit:
                    return

    # -- writes --------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Commit `batch` durably (group commit). See `Writer.write`."""
        await self.writer.write(batch)

    async def grow_map(self) -> None:
        """Double the map after MapFullError, up to max_map_size; waits for thread readers."""
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise StorageError(
                f"storage is full: the LMDB map reached storage.max_map_size_mb = {self.max_map_size // MB}"
            )
        new_size = min(current * 2, self.max_map_size)
        self._growing = trio.Event()
        try:
            await self._readers_idle.wait()
            # No transaction is open: trio-thread reads are synchronous, thread readers drained.
            self.env.set_mapsize(new_size)
            log.info("LMDB map grown from %d MiB to %d MiB", current // MB, new_size // MB)
        finally:
            self._growing.set()
            self._growing = None

    # -- schema --------------------------------------------------------------------

    def _check_schema(self) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"schema_version", db=self.handles["meta"])
            if raw is None:
                txn.put(b"schema_version", str(SCHEMA_VERSION).encode(), db=self.handles["meta"])
                return
            version = int(raw)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the data in {self.path} has schema version {version}, newer than this "
                    f"chatnode understands ({SCHEMA_VERSION}); upgrade chatnode"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                log.info("migrating storage schema to version %d", target)
                MIGRATIONS[target](txn, self.handles)
                txn.put(b"schema_version", str(target).encode(), db=self.handles["meta"])

    def close(self) -> None:
        self.env.close()


#: Where the one-off indexing of version-1 dedupe records has got to (the next key to visit).
DEDUPE_BACKFILL = b"dedupe_backfill"


def _start_dedupe_backfill(txn: lmdb.Transaction, handles: dict[str, Any]) -> None:
    """Version 2 adds `dedupe_by_time`. Existing records are indexed later, in chunks, by the
    dedupe sweeper (node/core/dedupe.py), so opening a big data dir never waits on a full scan."""
    if txn.cursor(db=handles["dedupe"]).first():
        txn.put(DEDUPE_BACKFILL, b"\x00", db=handles["meta"])


#: Schema migrations: version -> function(txn, handles) run inside one write transaction.
MIGRATIONS: dict[int, Callable[[lmdb.Transaction, dict[str, Any]], None]] = {
    2: _start_dedupe_backfill,
}


@contextlib.asynccontextmanager
async def open_storage(
    path: Path,
    *,
    extra_databases: Iterable[str] = (),
    map_size: int = 1024 * MB,
    max_map_size: int = 1 << 40,
    max_batch: int = 2048,
    sync: bool = True,
) -> AsyncIterator[Storage]:
    """Open the environment and run its writer; on exit, commit what is queued and close."""
    try:
        storage = Storage(
            path,
            databases=[*CORE_DATABASES, *extra_databases],
            map_size=map_size,
            max_map_size=max(max_map_size, map_size),
            max_batch=max_batch,
            sync=sync,
        )
    except lmdb.Error as exc:
        raise StorageError(f"cannot open storage at {path}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.writer.serve)
            try:
                yield storage
            finally:
                await storage.writer.close()
    finally:
        storage.close()
