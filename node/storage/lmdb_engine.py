"""The LMDB engine: the embedded default for one node (data_dir/db).

One environment per process with every named database opened up front. Keys are
fixed-width big-endian integers (node/storage/keys.py), so LMDB's order is numeric order.
Point reads run on the event loop (a few microseconds; readers never wait for the
writer); scans that may touch many records run in a worker thread. Writes are applied
by the group-commit writer, one transaction per batch in one worker-thread call
(an LMDB write transaction must begin and end on the same thread).

Layout (schema version 4; docs/architecture.md has the table):

    meta            key (utf-8)                       -> value
    users           u64 user                          -> user record (JSON)
    usernames       username (utf-8)                  -> u64 user
    tokens          sha256 of the token               -> token record (JSON)
    user_tokens     u64 user | sha256                 -> b""  (a user's devices)
    chats           u64 chat                          -> chat record (JSON)
    members         u64 chat | u64 user               -> member record (JSON)
    user_chats      u64 user | u64 chat               -> b""  (a user's chats)
    direct          u64 low user | u64 high user      -> u64 chat
    log             u64 chat | u64 seq                -> message record (the bytes clients get)
    msgids          u64 message id                    -> u64 chat | u64 seq
    dedupe          u64 user | client_msg_id (utf-8)  -> u64 chat | seq | message id | ts
    dedupe_by_time  u64 ts | dedupe key               -> b""  (purge order)
    chat_seq        u64 chat                          -> u64 last seq assigned
    expiry          u64 expires_at | u64 chat | seq   -> u64 message id
    blocks          u64 blocker | u64 blocked         -> b""
    plugin_kv       namespace (utf-8) | 0x00 | key    -> value
    search_dirty    u64 chat | u64 seq                -> u64 token (not yet in the search index)

Message search lives in an SQLite FTS5 index beside the environment (node/storage/fts.py),
kept in step through `search_dirty` (schema version 4).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import orjson
import trio

from .api import (
    TAIL,
    DedupeAck,
    EngineInfo,
    LoadedChat,
    Storage,
    StorageConflict,
    StorageError,
    StoredMessage,
)
from .batch import MessageMeta, Op, WriteBatch
from .fts import FtsIndex
from .keys import from_pair, from_u64, pair, prefix_end, u64
from .writer import Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 4
MB = 1024 * 1024

DATABASES = (
    "meta", "users", "usernames", "tokens", "user_tokens", "chats", "members", "user_chats", "direct", "log",
    "msgids", "dedupe", "dedupe_by_time", "chat_seq", "expiry", "blocks", "plugin_kv", "search_dirty",
)

#: Log entries whose text search indexes (their `text`: a message or a caption).
SEARCHED_KINDS = frozenset({"text", "image", "audio", "video", "file"})
SEARCH_CHUNK = 500  # dirty marks indexed per SQLite transaction
#: Pause between index passes: marks gather meanwhile, so under steady traffic the indexer
#: costs one pass (two thread hops, one SQLite and one LMDB commit) per interval instead of
#: one per commit of the log (measured: a third of the node's CPU at 1,000 msg/s).
SEARCH_INTERVAL = 0.25
REBUILD_CHUNK = 2000  # log entries per chunk while the index is rebuilt
SEARCH_INDEX_ID = "search_index_id"  # meta: which index file belongs to this environment
_search_tokens = itertools.count(time.time_ns())

#: Named databases of schema 2 that belonged to the built-in plugins, and the namespace
#: their records moved to in `plugin_kv` (schema 3).
LEGACY_PLUGIN_DATABASES = {
    "lastseen": "lastseen/times",
    "media_items": "media/items",
    "media_content": "media/content",
    "media_shares": "media/shares",
    "media_pending": "media/pending",
    "media_gc": "media/gc",
    "push_targets": "push/targets",
}

#: Where the one-off indexing of schema-1 dedupe records has got to (the next key to visit).
DEDUPE_BACKFILL = "dedupe_backfill"
BACKFILL_CHUNK = 1000


def kv_key(namespace: str, key: bytes) -> bytes:
    return namespace.encode() + b"\x00" + key


def _dedupe_key(user_id: int, client_msg_id: str) -> bytes:
    return u64(user_id) + client_msg_id.encode()


def _dedupe_value(ack: DedupeAck) -> bytes:
    return pair(ack.chat_id, ack.seq) + pair(ack.message_id, ack.ts)


def _dedupe_ack(value: bytes) -> DedupeAck:
    chat_id, seq = from_pair(value[:16])
    message_id, ts = from_pair(value[16:32])
    return DedupeAck(chat_id, seq, message_id, ts)


def _meta_of(raw: bytes) -> MessageMeta:
    record = orjson.loads(raw)
    return MessageMeta(int(record.get("from") or 0), record["kind"], record["ts"], record.get("expires_at") or 0)


class LmdbStorage(Storage):
    def __init__(self, path: Path, *, map_size: int, max_map_size: int, max_batch: int, sync: bool = True) -> None:
        self.path = path
        self.max_map_size = max(max_map_size, map_size)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=64,
            max_readers=512,
            sync=sync,
            metasync=sync,
            readahead=False,
            mode=0o600,
        )
        self.handles: dict[str, Any] = {}
        with self.env.begin() as txn:  # named databases are keys of the main database
            existing = {bytes(key).decode() for key, _ in txn.cursor()}
        with self.env.begin(write=True) as txn:
            for name in DATABASES:
                self.handles[name] = self.env.open_db(name.encode(), txn=txn)
        self.writer = Writer(self._commit, max_batch=max_batch)
        self._thread_readers = 0
        self._readers_idle = trio.Event()
        self._readers_idle.set()
        self._growing: trio.Event | None = None
        self.backfill_purged = 0  # schema-1 dedupe records purged by the backfill
        self.fts = FtsIndex(path.parent / "search.sqlite")
        self._search_wakeup = trio.Event()
        self._search_ready = False  # the index is complete (built, or found whole)
        self.search_indexed = 0  # entries indexed since start (rebuilds included)
        try:
            version = self._check_schema(existing)
        except BaseException:
            self.env.close()
            raise
        self.info = EngineInfo("lmdb", version, str(path))

    # -- writing -------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        await self.writer.write(batch)

    def add_commit_hook(self, hook: Callable[[], WriteBatch],
                        failed: Callable[[WriteBatch], None] | None = None) -> None:
        self.writer.add_commit_hook(hook, failed)

    def statistics(self) -> dict[str, Any]:
        return {"engine": "lmdb", "commits": self.writer.commits, "committed_ops": self.writer.committed_ops,
                "conflicts": self.writer.conflicts, "map_size": self.env.info()["map_size"],
                "search_ready": self._search_ready, "search_indexed": self.search_indexed}

    async def _commit(self, requests: list[list[Op]]) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(self._apply, requests)
                self._search_wakeup.set()  # maybe new dirty marks for the indexer
                return
            except lmdb.MapFullError:
                await self._grow_map()

    def _apply(self, requests: list[list[Op]]) -> None:
        """Runs in a worker thread: the whole transaction, begin to commit, on this thread."""
        h = self.handles
        with self.env.begin(write=True) as txn:
            for ops in requests:
                for op in ops:
                    _APPLY[op[0]](txn, h, *op[1:])

    async def _grow_map(self) -> None:
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
            # No transaction is open: event-loop reads are synchronous, thread readers drained.
            self.env.set_mapsize(new_size)
            log.info("LMDB map grown from %d MiB to %d MiB", current // MB, new_size // MB)
        finally:
            self._growing.set()
            self._growing = None

    # -- reading helpers -------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction for short point reads on the event loop. Never await inside."""
        with self.env.begin(buffers=False) as txn:
            yield txn

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
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
        self, txn: lmdb.Transaction[bytes], db: str, start: bytes, end: bytes, *, reverse: bool = False, limit: int = 0
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

    # -- accounts --------------------------------------------------------------------

    async def get_users(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        out = {}
        with self._read() as txn:
            db = self.handles["users"]
            for user_id in user_ids:
                raw = txn.get(u64(user_id), db=db)
                if raw is not None:
                    out[user_id] = orjson.loads(raw)
        return out

    async def user_id_by_name(self, name: str) -> int | None:
        with self._read() as txn:
            raw = txn.get(name.encode(), db=self.handles["usernames"])
        return from_u64(raw) if raw else None

    async def search_usernames(self, prefix: str, limit: int, *, after: str = "") -> list[tuple[str, int]]:
        start = prefix.encode()
        first = max(start, after.encode() + b"\x00") if after else start
        with self._read() as txn:
            return [(key.decode(), from_u64(value))
                    for key, value in self.scan(txn, "usernames", first, start + b"\xff", limit=limit)]

    async def get_token(self, token_hash: bytes) -> dict[str, Any] | None:
        with self._read() as txn:
            raw = txn.get(token_hash, db=self.handles["tokens"])
        return orjson.loads(raw) if raw is not None else None

    async def tokens_of(self, user_id: int) -> list[tuple[bytes, dict[str, Any]]]:
        prefix = u64(user_id)
        out = []
        with self._read() as txn:
            tokens = self.handles["tokens"]
            for key, _ in self.scan(txn, "user_tokens", prefix, prefix_end(prefix)):
                raw = txn.get(key[8:], db=tokens)
                if raw is not None:
                    out.append((bytes(key[8:]), orjson.loads(raw)))
        return out

    # -- chats -----------------------------------------------------------------------

    async def load_chats(self, chat_ids: Iterable[int]) -> dict[int, LoadedChat]:
        out = {}
        with self._read() as txn:
            for chat_id in chat_ids:
                loaded = self._load_chat(txn, chat_id)
                if loaded is not None:
                    out[chat_id] = loaded
        return out

    def _load_chat(self, txn: lmdb.Transaction[bytes], chat_id: int) -> LoadedChat | None:
        raw = txn.get(u64(chat_id), db=self.handles["chats"])
        if raw is None:
            return None
        prefix = u64(chat_id)
        members = {from_pair(key)[1]: orjson.loads(value)
                   for key, value in self.scan(txn, "members", prefix, prefix_end(prefix))}
        stored = txn.get(prefix, db=self.handles["chat_seq"])
        last_seq = from_u64(stored) if stored else 0
        tail = [(from_pair(key)[1], value)
                for key, value in self.scan(txn, "log", pair(chat_id, 0), pair(chat_id + 1, 0), reverse=True,
                                            limit=TAIL)]
        tail.reverse()
        return LoadedChat(orjson.loads(raw), members, last_seq, tail)

    async def chat_ids_of(self, user_id: int) -> set[int]:
        prefix = u64(user_id)
        with self._read() as txn:
            return {from_pair(key)[1] for key, _ in self.scan(txn, "user_chats", prefix, prefix_end(prefix))}

    async def direct_chats(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        out = {}
        with self._read() as txn:
            db = self.handles["direct"]
            for low, high in pairs:
                raw = txn.get(pair(low, high), db=db)
                if raw is not None:
                    out[(low, high)] = from_u64(raw)
        return out

    async def read_messages(
        self, chat_id: int, first: int, end: int, limit: int, *, reverse: bool = False
    ) -> list[tuple[int, bytes]]:
        if end <= first:
            return []
        return await self._in_thread(self._read_log, chat_id, first, end, limit, reverse)

    def _read_log(self, txn, chat_id: int, first: int, end: int, limit: int, reverse: bool) -> list[tuple[int, bytes]]:
        return [(from_pair(key)[1], value)
                for key, value in self.scan(txn, "log", pair(chat_id, first), pair(chat_id, end), reverse=reverse,
                                            limit=limit)]

    async def find_messages(self, message_ids: Iterable[int]) -> dict[int, StoredMessage]:
        out = {}
        with self._read() as txn:
            msgids, log_db = self.handles["msgids"], self.handles["log"]
            for message_id in message_ids:
                where = txn.get(u64(message_id), db=msgids)
                if where is None:
                    continue
                raw = txn.get(where, db=log_db)
                if raw is not None:
                    chat_id, seq = from_pair(where)
                    out[message_id] = StoredMessage(chat_id, seq, raw)
        return out

    async def count_unread(
        self, ranges: list[tuple[int, int, int]], user_id: int, kinds: frozenset[str], cap: int, now: int
    ) -> dict[int, int]:
        if not ranges:
            return {}
        return await self._in_thread(self._count_unread, ranges, str(user_id), kinds, cap, now)

    def _count_unread(self, txn, ranges, user: str, kinds: frozenset[str], cap: int, now: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        for chat_id, first, last in ranges:
            n = 0
            for _, raw in self.scan(txn, "log", pair(chat_id, first), pair(chat_id, last + 1)):
                m = orjson.loads(raw)
                expires = m.get("expires_at")
                if m.get("from") != user and m.get("kind") in kinds and not (expires and expires <= now):
                    n += 1
                    if n >= cap:
                        break
            counts[chat_id] = n
        return counts

    async def get_dedupe(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], DedupeAck]:
        out = {}
        with self._read() as txn:
            db = self.handles["dedupe"]
            for user_id, client_msg_id in keys:
                raw = txn.get(_dedupe_key(user_id, client_msg_id), db=db)
                if raw is not None:
                    out[(user_id, client_msg_id)] = _dedupe_ack(raw)
        return out

    async def due_dedupe(self, cutoff: int, limit: int) -> list[tuple[int, str, int]]:
        if cutoff < 0:
            return []
        return await self._in_thread(self._due_dedupe, cutoff, limit)

    def _due_dedupe(self, txn, cutoff: int, limit: int) -> list[tuple[int, str, int]]:
        return [(from_u64(key[8:16]), bytes(key[16:]).decode(), from_u64(key[:8]))
                for key, _ in self.scan(txn, "dedupe_by_time", u64(0), u64(cutoff + 1), limit=limit)]

    async def due_expiry(self, now: int, limit: int) -> list[tuple[int, int, int, int]]:
        return await self._in_thread(self._due_expiry, now, limit)

    def _due_expiry(self, txn, now: int, limit: int) -> list[tuple[int, int, int, int]]:
        out = []
        for key, value in self.scan(txn, "expiry", u64(0), u64(now + 1), limit=limit):
            chat_id, seq = from_pair(key[8:24])
            out.append((chat_id, seq, from_u64(value), from_u64(key[:8])))
        return out

    async def blocks_of(self, blockers: Iterable[int]) -> dict[int, set[int]]:
        out = {}
        with self._read() as txn:
            for blocker in blockers:
                prefix = u64(blocker)
                out[blocker] = {from_pair(key)[1] for key, _ in self.scan(txn, "blocks", prefix, prefix_end(prefix))}
        return out

    # -- search ----------------------------------------------------------------------------

    def search_ready(self) -> bool:
        return self._search_ready

    async def search_messages(
        self, terms: list[str], ranges: list[tuple[int, int, int]], now: int, limit: int,
        before: tuple[int, int, int] | None = None,
    ) -> list[tuple[int, int, bytes]]:
        if not terms or not ranges or self.fts._reader is None:
            return []
        found = await trio.to_thread.run_sync(self.fts.search, terms, ranges, now, limit, before)
        out = []
        with self._read() as txn:  # the log is the truth: what no longer has text is left out
            db = self.handles["log"]
            for chat_id, seq in found:
                raw = txn.get(pair(chat_id, seq), db=db)
                if raw is not None and b'"text"' in raw:
                    out.append((chat_id, seq, raw))
        return out

    async def serve_search(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the search index in step with the log until cancelled (see node/storage/fts.py)."""
        env_id = await self.get_meta(SEARCH_INDEX_ID)
        if env_id is None:
            env_id = os.urandom(8).hex().encode()
            batch = WriteBatch()
            batch.put_meta(SEARCH_INDEX_ID, env_id)
            await self.writer.write(batch)
        try:
            complete = await trio.to_thread.run_sync(self.fts.open, env_id.decode())
            task_status.started()
            if not complete:
                log.info("building the message search index from the log")
                await self._rebuild_search()
                log.info("the message search index is built (%d entries)", self.search_indexed)
            self._search_ready = True
            while True:
                self._search_wakeup = trio.Event()
                indexed = await self._index_dirty()
                if indexed >= SEARCH_CHUNK:
                    continue  # a backlog: index it at full speed
                if not indexed:
                    await self._search_wakeup.wait()
                await trio.sleep(SEARCH_INTERVAL)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.fts.close)

    async def _rebuild_search(self) -> None:
        start = pair(0, 0)
        while True:
            rows = await self._in_thread(self._log_chunk, start)
            if rows:
                await trio.to_thread.run_sync(self.fts.apply, [row[1:] for row in rows])
                self.search_indexed += len(rows)
            if len(rows) < REBUILD_CHUNK:
                break
            start = rows[-1][0] + b"\x00"
        await trio.to_thread.run_sync(self.fts.mark_built)

    def _log_chunk(self, txn, start: bytes) -> list[tuple[bytes, int, int, int, int, str | None]]:
        out = []
        for key, raw in self.scan(txn, "log", start, b"\xff" * 16, limit=REBUILD_CHUNK):
            chat_id, seq = from_pair(key)
            out.append((bytes(key), *_searchable(chat_id, seq, raw)))
        return out

    async def _index_dirty(self) -> int:
        """Index one chunk of dirty marks; how many there were."""
        marks = await self._in_thread(self._dirty_chunk)
        if not marks:
            return 0
        await trio.to_thread.run_sync(self.fts.apply, [change for _, _, change in marks])
        self.search_indexed += len(marks)
        batch = WriteBatch()
        batch.ops.extend(("_lmdb_search_done", key, token) for key, token, _ in marks)
        try:
            await self.writer.write(batch)
        except StorageError:  # closing: the marks stay, and are indexed again at the next start
            await trio.sleep_forever()
        return len(marks)

    def _dirty_chunk(self, txn) -> list[tuple[bytes, bytes, tuple[int, int, int, int, str | None]]]:
        log_db = self.handles["log"]
        out = []
        for key, token in self.scan(txn, "search_dirty", b"", b"\xff" * 16, limit=SEARCH_CHUNK):
            chat_id, seq = from_pair(key)
            out.append((bytes(key), bytes(token), _searchable(chat_id, seq, txn.get(key, db=log_db))))
        return out

    # -- node state and plugin data ------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        with self._read() as txn:
            raw = txn.get(key.encode(), db=self.handles["meta"])
        return bytes(raw) if raw is not None else None

    async def kv_get(self, namespace: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        out = {}
        with self._read() as txn:
            db = self.handles["plugin_kv"]
            for key in keys:
                raw = txn.get(kv_key(namespace, key), db=db)
                if raw is not None:
                    out[key] = raw
        return out

    async def kv_scan(
        self, namespace: str, start: bytes, end: bytes | None, limit: int, *, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        prefix = namespace.encode() + b"\x00"
        low = prefix + start
        high = prefix + end if end is not None else prefix_end(prefix)
        cut = len(prefix)
        return await self._in_thread(
            lambda txn: [(bytes(k[cut:]), v) for k, v in self.scan(txn, "plugin_kv", low, high, reverse=reverse,
                                                                   limit=limit)])

    async def kv_count(self, namespace: str) -> int:
        prefix = namespace.encode() + b"\x00"
        return await self._in_thread(
            lambda txn: sum(1 for _ in self.scan(txn, "plugin_kv", prefix, prefix_end(prefix))))

    # -- copying -------------------------------------------------------------------------

    async def export(self, table: str, page: int = 1000) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        db, decode = _EXPORTS[table]
        start = b""
        while True:
            rows = await self._in_thread(
                lambda txn, s=start: [(bytes(k), v) for k, v in self.scan(txn, db, s, b"\xff" * 64, limit=page)])
            if not rows:
                return
            out = []
            with self._read() as txn:
                for key, value in rows:
                    row = decode(self, txn, key, value)
                    if row is not None:
                        out.append(row)
            if out:
                yield out
            if len(rows) < page:
                return
            start = rows[-1][0] + b"\x00"

    async def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        await self.writer.write(_import_batch(table, rows))

    # -- schema --------------------------------------------------------------------------

    def _check_schema(self, existing: set[str]) -> int:
        meta = self.handles["meta"]
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"schema_version", db=meta)
            if raw is None:  # a new environment
                txn.put(b"schema_version", str(SCHEMA_VERSION).encode(), db=meta)
                return SCHEMA_VERSION
            version = int(raw)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"the data in {self.path} has schema version {version}, newer than this "
                    f"chatnode understands ({SCHEMA_VERSION}); upgrade chatnode"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                log.info("migrating storage schema to version %d", target)
                MIGRATIONS[target](self, txn, existing)
                txn.put(b"schema_version", str(target).encode(), db=meta)
        return SCHEMA_VERSION

    async def backfill_dedupe(self, retention_ms: int, now: Callable[[], int]) -> int:
        """Index (or purge, if already due) schema-1 dedupe records, a chunk per commit,
        resuming where a previous run stopped. Returns how many were purged."""
        purged = 0
        while (marker := await self.get_meta(DEDUPE_BACKFILL)) is not None:
            keys = await self._in_thread(
                lambda txn, m=marker: [bytes(k) for k, _ in self.scan(txn, "dedupe", m, b"\xff", limit=BACKFILL_CHUNK)])
            batch = WriteBatch()
            cutoff = now() - retention_ms
            with self._read() as txn:
                for key in keys:
                    value = txn.get(key, db=self.handles["dedupe"])
                    if value is None:
                        continue
                    ack = _dedupe_ack(value)
                    user_id, client_msg_id = from_u64(key[:8]), key[8:].decode()
                    if ack.ts <= cutoff:
                        batch.ops.append(("_lmdb_drop_dedupe", key))
                        purged += 1
                    else:
                        batch.ops.append(("_lmdb_index_dedupe", user_id, client_msg_id, ack.ts))
            if len(keys) == BACKFILL_CHUNK:
                batch.put_meta(DEDUPE_BACKFILL, keys[-1] + b"\x00")
            else:
                batch.delete_meta(DEDUPE_BACKFILL)
            await self.writer.write(batch)
        return purged

    def close(self) -> None:
        self.env.close()


# -- applying ops (in the writer's thread) ----------------------------------------------


def _put_new(txn, db, key: bytes, value: bytes, what: str) -> None:
    if not txn.put(key, value, db=db, overwrite=False):
        raise StorageConflict(f"{what} is already stored")


def _put_user(txn, h, user_id, record):
    txn.put(u64(user_id), orjson.dumps(record), db=h["users"])


def _update_user(txn, h, user_id, fields, drop, settings, expect):
    raw = txn.get(u64(user_id), db=h["users"])
    if raw is None:
        return
    record = orjson.loads(raw)
    if record.get("deleted") or any(k not in record or record[k] != v for k, v in expect.items()):
        return
    for key in drop:
        record.pop(key, None)
    record.update(fields)
    record["settings"] = {**record.get("settings", {}), **settings}
    txn.put(u64(user_id), orjson.dumps(record), db=h["users"])


def _add_username(txn, h, name, user_id):
    _put_new(txn, h["usernames"], name.encode(), u64(user_id), f"the username {name!r}")


def _remove_username(txn, h, name):
    txn.delete(name.encode(), db=h["usernames"])


def _put_token(txn, h, token_hash, record):
    txn.put(token_hash, orjson.dumps(record), db=h["tokens"])
    txn.put(u64(int(record["user"])) + token_hash, b"", db=h["user_tokens"])


def _delete_token(txn, h, token_hash):
    raw = txn.get(token_hash, db=h["tokens"])
    if raw is not None:
        txn.delete(token_hash, db=h["tokens"])
        txn.delete(u64(int(orjson.loads(raw)["user"])) + token_hash, db=h["user_tokens"])


def _put_chat(txn, h, chat_id, record):
    txn.put(u64(chat_id), orjson.dumps(record), db=h["chats"])


def _put_member(txn, h, chat_id, user_id, record):
    txn.put(pair(chat_id, user_id), orjson.dumps(record), db=h["members"])
    # Present already for every change but a join (a cursor moving): not written again, so
    # that the user's page of `user_chats` (and the path to it) is not copied by the commit.
    txn.put(pair(user_id, chat_id), b"", db=h["user_chats"], overwrite=False)


def _add_direct(txn, h, low, high, chat_id):
    _put_new(txn, h["direct"], pair(low, high), u64(chat_id), "a 1-1 chat between these users")


def _searchable(chat_id: int, seq: int, raw: bytes | None) -> tuple[int, int, int, int, str | None]:
    """What the search index keeps of a log entry as it is now: (chat, seq, ts, expires_at,
    text or None: not indexed)."""
    if raw is None or b'"text"' not in raw:
        return chat_id, seq, 0, 0, None
    record = orjson.loads(raw)
    if record.get("kind") not in SEARCHED_KINDS or not record.get("text"):
        return chat_id, seq, 0, 0, None
    return chat_id, seq, record["ts"], record.get("expires_at") or 0, record["text"]


def _mark_for_search(txn, h, chat_id, seq):
    """The entry changed: the search index must look at it again (node/storage/fts.py)."""
    txn.put(pair(chat_id, seq), u64(next(_search_tokens)), db=h["search_dirty"])


def _append_message(txn, h, chat_id, seq, message_id, raw, meta):
    _put_new(txn, h["log"], pair(chat_id, seq), raw, f"seq {seq} of chat {chat_id}")
    _put_new(txn, h["msgids"], u64(message_id), pair(chat_id, seq), f"message id {message_id}")
    if meta.expires_at:
        txn.put(u64(meta.expires_at) + pair(chat_id, seq), u64(message_id), db=h["expiry"])
    if meta.kind in SEARCHED_KINDS:
        _mark_for_search(txn, h, chat_id, seq)


def _rewrite_message(txn, h, chat_id, seq, raw, meta):
    txn.put(pair(chat_id, seq), raw, db=h["log"])
    _mark_for_search(txn, h, chat_id, seq)


def _delete_message(txn, h, chat_id, seq, message_id, expires_at):
    txn.delete(pair(chat_id, seq), db=h["log"])
    txn.delete(u64(message_id), db=h["msgids"])
    if expires_at:
        txn.delete(u64(expires_at) + pair(chat_id, seq), db=h["expiry"])
    _mark_for_search(txn, h, chat_id, seq)


def _search_done(txn, h, key, token):
    """The index has the entry as it was when marked: clear the mark, unless it was set again."""
    if txn.get(key, db=h["search_dirty"]) == token:
        txn.delete(key, db=h["search_dirty"])


def _set_chat_seq(txn, h, chat_id, new_seq, expected_seq):
    key = u64(chat_id)
    if expected_seq is not None:
        raw = txn.get(key, db=h["chat_seq"])
        if (from_u64(raw) if raw else 0) != expected_seq:
            raise StorageConflict(f"the seq of chat {chat_id} was moved by someone else")
    txn.put(key, u64(new_seq), db=h["chat_seq"])


def _add_dedupe(txn, h, user_id, client_msg_id, ack):
    key = _dedupe_key(user_id, client_msg_id)
    _put_new(txn, h["dedupe"], key, _dedupe_value(ack), f"client_msg_id {client_msg_id!r}")
    txn.put(u64(ack.ts) + key, b"", db=h["dedupe_by_time"])


def _delete_dedupe(txn, h, user_id, client_msg_id, ts):
    key = _dedupe_key(user_id, client_msg_id)
    txn.delete(u64(ts) + key, db=h["dedupe_by_time"])
    raw = txn.get(key, db=h["dedupe"])
    if raw is not None and _dedupe_ack(raw).ts == ts:
        txn.delete(key, db=h["dedupe"])


def _put_block(txn, h, blocker, blocked):
    txn.put(pair(blocker, blocked), b"", db=h["blocks"])


def _delete_block(txn, h, blocker, blocked):
    txn.delete(pair(blocker, blocked), db=h["blocks"])


def _put_meta(txn, h, key, value):
    txn.put(key.encode(), value, db=h["meta"])


def _delete_meta(txn, h, key):
    txn.delete(key.encode(), db=h["meta"])


def _kv_put(txn, h, namespace, key, value):
    txn.put(kv_key(namespace, key), value, db=h["plugin_kv"])


def _kv_delete(txn, h, namespace, key):
    txn.delete(kv_key(namespace, key), db=h["plugin_kv"])


def _kv_delete_range(txn, h, namespace, start, end):
    cursor = txn.cursor(db=h["plugin_kv"])
    first, stop = kv_key(namespace, start), kv_key(namespace, end)
    if not cursor.set_range(first):
        return
    while cursor.key() < stop:
        if not cursor.delete():  # moves to the next record; False at the end
            return


def _index_dedupe(txn, h, user_id, client_msg_id, ts):
    txn.put(u64(ts) + _dedupe_key(user_id, client_msg_id), b"", db=h["dedupe_by_time"])


def _drop_dedupe(txn, h, key):
    txn.delete(key, db=h["dedupe"])


def _import_if_absent(db: str, key_of: Callable[..., bytes], value_of: Callable[..., bytes]):
    def apply(txn, h, *row):
        txn.put(key_of(*row), value_of(*row), db=h[db], overwrite=False)
    return apply


_APPLY: dict[str, Callable[..., None]] = {
    "put_user": _put_user,
    "update_user": _update_user,
    "add_username": _add_username,
    "remove_username": _remove_username,
    "put_token": _put_token,
    "delete_token": _delete_token,
    "put_chat": _put_chat,
    "put_member": _put_member,
    "add_direct": _add_direct,
    "append_message": _append_message,
    "rewrite_message": _rewrite_message,
    "delete_message": _delete_message,
    "set_chat_seq": _set_chat_seq,
    "add_dedupe": _add_dedupe,
    "delete_dedupe": _delete_dedupe,
    "put_block": _put_block,
    "delete_block": _delete_block,
    "put_meta": _put_meta,
    "delete_meta": _delete_meta,
    "kv_put": _kv_put,
    "kv_delete": _kv_delete,
    "kv_delete_range": _kv_delete_range,
    "_lmdb_index_dedupe": _index_dedupe,
    "_lmdb_drop_dedupe": _drop_dedupe,
    "_lmdb_search_done": _search_done,
}


# -- export and import (chatnode storage copy) -----------------------------------------


def _export_meta(engine, txn, key, value):
    name = key.decode()
    return None if name in ("schema_version", DEDUPE_BACKFILL, SEARCH_INDEX_ID) else (name, bytes(value))


def _export_users(engine, txn, key, value):
    return (from_u64(key), orjson.loads(value))


def _export_tokens(engine, txn, key, value):
    return (bytes(key), orjson.loads(value))


def _export_chats(engine, txn, key, value):
    raw = txn.get(key, db=engine.handles["chat_seq"])
    return (from_u64(key), orjson.loads(value), from_u64(raw) if raw else 0)


def _export_members(engine, txn, key, value):
    return (*from_pair(key), orjson.loads(value))


def _export_directs(engine, txn, key, value):
    return (*from_pair(key), from_u64(value))


def _export_messages(engine, txn, key, value):
    chat_id, seq = from_pair(key)
    record = orjson.loads(value)
    return (chat_id, seq, int(record["id"]), bytes(value), _meta_of(value))


def _export_dedupe(engine, txn, key, value):
    return (from_u64(key[:8]), bytes(key[8:]).decode(), _dedupe_ack(value))


def _export_blocks(engine, txn, key, value):
    return from_pair(key)


def _export_kv(engine, txn, key, value):
    namespace, _, rest = bytes(key).partition(b"\x00")
    return (namespace.decode(), rest, bytes(value))


_EXPORTS: dict[str, tuple[str, Callable[..., tuple[Any, ...] | None]]] = {
    "meta": ("meta", _export_meta),
    "users": ("users", _export_users),
    "tokens": ("tokens", _export_tokens),
    "chats": ("chats", _export_chats),
    "members": ("members", _export_members),
    "directs": ("direct", _export_directs),
    "messages": ("log", _export_messages),
    "dedupe": ("dedupe", _export_dedupe),
    "blocks": ("blocks", _export_blocks),
    "kv": ("plugin_kv", _export_kv),
}


def _import_batch(table: str, rows: list[tuple[Any, ...]]) -> WriteBatch:
    """Rows of an exported table as private ops that skip what is already stored."""
    batch = WriteBatch()
    batch.ops.extend((f"_lmdb_import_{table}", *row) for row in rows)
    return batch


def _import_user(txn, h, user_id, record):
    if txn.put(u64(user_id), orjson.dumps(record), db=h["users"], overwrite=False):
        txn.put(record["username"].encode(), u64(user_id), db=h["usernames"], overwrite=False)


def _import_token(txn, h, token_hash, record):
    if txn.get(token_hash, db=h["tokens"]) is None:
        _put_token(txn, h, token_hash, record)


def _import_chat(txn, h, chat_id, record, last_seq):
    if txn.put(u64(chat_id), orjson.dumps(record), db=h["chats"], overwrite=False):
        txn.put(u64(chat_id), u64(last_seq), db=h["chat_seq"])


def _import_member(txn, h, chat_id, user_id, record):
    if txn.get(pair(chat_id, user_id), db=h["members"]) is None:
        _put_member(txn, h, chat_id, user_id, record)


def _import_message(txn, h, chat_id, seq, message_id, raw, meta):
    if txn.get(pair(chat_id, seq), db=h["log"]) is None:
        _append_message(txn, h, chat_id, seq, message_id, raw, meta)


def _import_dedupe(txn, h, user_id, client_msg_id, ack):
    if txn.get(_dedupe_key(user_id, client_msg_id), db=h["dedupe"]) is None:
        _add_dedupe(txn, h, user_id, client_msg_id, ack)


_APPLY.update({
    "_lmdb_import_meta": _import_if_absent("meta", lambda k, v: k.encode(), lambda k, v: v),
    "_lmdb_import_users": _import_user,
    "_lmdb_import_tokens": _import_token,
    "_lmdb_import_chats": _import_chat,
    "_lmdb_import_members": _import_member,
    "_lmdb_import_directs": _import_if_absent("direct", lambda lo, hi, c: pair(lo, hi), lambda lo, hi, c: u64(c)),
    "_lmdb_import_messages": _import_message,
    "_lmdb_import_dedupe": _import_dedupe,
    "_lmdb_import_blocks": _import_if_absent("blocks", lambda a, b: pair(a, b), lambda a, b: b""),
    "_lmdb_import_kv": _import_if_absent("plugin_kv", lambda ns, k, v: kv_key(ns, k), lambda ns, k, v: v),
})


# -- migrations ------------------------------------------------------------------------


def _migrate_2(engine: LmdbStorage, txn, existing: set[str]) -> None:
    """Version 2 added `dedupe_by_time`. Existing records are indexed later, in chunks
    (`backfill_dedupe`), so opening a big data dir never waits on a full scan."""
    if txn.cursor(db=engine.handles["dedupe"]).first():
        txn.put(DEDUPE_BACKFILL.encode(), b"\x00", db=engine.handles["meta"])


def _migrate_3(engine: LmdbStorage, txn, existing: set[str]) -> None:
    """Version 3: a per-user index of device tokens (`user_tokens`), and the built-in
    plugins' databases folded into namespaces of `plugin_kv` (the old ones are dropped)."""
    h = engine.handles
    for key, value in txn.cursor(db=h["tokens"]):
        txn.put(u64(int(orjson.loads(value)["user"])) + bytes(key), b"", db=h["user_tokens"])
    for name, namespace in LEGACY_PLUGIN_DATABASES.items():
        if name not in existing:
            continue
        old = engine.env.open_db(name.encode(), txn=txn)
        for key, value in txn.cursor(db=old):
            txn.put(kv_key(namespace, bytes(key)), bytes(value), db=h["plugin_kv"])
        txn.drop(old, delete=True)


def _migrate_4(engine: LmdbStorage, txn, existing: set[str]) -> None:
    """Version 4 added `search_dirty` (created empty at open): the search index of an
    older data dir is built from the log at the first start, as for a missing index."""


MIGRATIONS: dict[int, Callable[[LmdbStorage, Any, set[str]], None]] = {2: _migrate_2, 3: _migrate_3, 4: _migrate_4}


@contextlib.asynccontextmanager
async def open_lmdb(
    path: Path, *, map_size: int = 1024 * MB, max_map_size: int = 1 << 40, max_batch: int = 2048, sync: bool = True,
    dedupe_retention_ms: int | None = None, now: Callable[[], int] | None = None,
) -> AsyncIterator[LmdbStorage]:
    """Open the environment and run its writer (and, for a data dir from schema 1, the
    dedupe backfill); on exit, commit what is queued and close."""
    try:
        storage = await trio.to_thread.run_sync(
            lambda: LmdbStorage(path, map_size=map_size, max_map_size=max_map_size, max_batch=max_batch, sync=sync))
    except lmdb.Error as exc:
        raise StorageError(f"cannot open storage at {path}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.writer.serve)
            backfill = trio.CancelScope()
            if dedupe_retention_ms is not None and now is not None:

                async def run_backfill() -> None:
                    with backfill:
                        storage.backfill_purged += await storage.backfill_dedupe(dedupe_retention_ms, now)

                nursery.start_soon(run_backfill)
            search = trio.CancelScope()

            async def run_search(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with search:
                    await storage.serve_search(task_status=task_status)

            await nursery.start(run_search)
            try:
                yield storage
            finally:
                backfill.cancel()
                search.cancel()
                await storage.writer.close()
    finally:
        storage.close()
