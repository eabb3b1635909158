"""The PostgreSQL engine: the shared durable state of a cluster (`[storage] engine = "postgresql"`).

psycopg 3's sync API in worker threads (its async API runs on asyncio only); nothing
blocks the event loop.

- **Writes**: the group-commit writer (node/storage/writer.py) hands over what is
  waiting; ONE thread call applies it on the writer's own connection as ONE transaction:
  runs of the same statement go out with `executemany`, everything pipelined, then
  COMMIT. Sessions run with ``synchronous_commit = on``, so a commit returns only once
  it is durable (on a synchronous standby too, when one is configured).
- **Reads**: a pool of autocommit connections (``pool_size - 1``; the writer has its
  own), entered by at most that many threads at once (a `trio.CapacityLimiter`), so a
  thread never queues inside the pool. Batched arguments go out as arrays (``= ANY``).
  While the server cannot be reached, a read fails as `StorageUnavailable` once the pool
  has given up connecting (about a second), not after commit_timeout.

Outcomes of a commit (what the writer's callers see):

- a unique violation, or ``set_chat_seq`` finding a seq other than ``expected_seq``:
  rolled back, `StorageConflict`;
- the connection failed before COMMIT was sent: rolled back by the server,
  `StorageUnavailable(unknown=False)`. A connection found dead at the first statement of
  a commit (idle since the last one: a restart, a failover) is replaced and the commit
  tried once more first;
- anything going wrong once COMMIT was sent, or a commit slower than ``commit_timeout``:
  `StorageUnavailable(unknown=True)`, never success. A slow commit is cancelled on the
  server; that does NOT undo it (a commit waiting for a synchronous standby that is gone
  is already durable locally and becomes visible when cancelled), which is exactly why
  its outcome is reported unknown and the client's retry with its client_msg_id settles it.

The writer's connection is replaced after any failure; libpq's multi-host DSNs with
``target_session_attrs=read-write`` find the new primary after a failover.
Tables: node/storage/pg_schema.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs
import orjson
import psycopg
import psycopg_pool
import trio
from psycopg import errors as pgerrors
from psycopg.adapt import AdaptersMap, Dumper, Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .api import (
    TAIL,
    DedupeAck,
    EngineInfo,
    LoadedChat,
    Storage,
    StorageConflict,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)
from .batch import MessageMeta, Op, WriteBatch
from .pg_schema import SCHEMA_VERSION, migrate
from .writer import Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BIGINT = (1 << 63) - 1
SEARCHED_KINDS = ("text", "image", "audio", "video", "file")  # log entries whose text search matches
CANCEL_TIMEOUT = 5.0  # seconds a server-side cancel of a timed-out commit may take
#: psycopg_pool retries a failed connect in the background with exponential backoff (1, 2,
#: 4, ... s until reconnect_timeout): after a long outage the next try could be a minute
#: away while the server is long back. Giving up after ~1 s instead makes the next read
#: start a fresh, immediate attempt.
POOL_RECONNECT_WINDOW = 1.0
#: ... and a read waiting for a connection is not told when the pool gives up: it would
#: wait out its whole timeout (commit_timeout), holding up the sequencer, even once the
#: server is back. So reads wait in slices of this many seconds and stop waiting once the
#: pool has given up (a later read's wait starts a fresh attempt).
POOL_WAIT_SLICE = 0.25

# -- adaptation: records as jsonb through orjson, log entries as their exact bytes --------


class RawJson(bytes):
    """A log entry's bytes, stored in a `json` column as they are (json keeps its input text)."""


class _RawJsonDumper(Dumper):
    oid = psycopg.postgres.types["json"].oid

    def dump(self, obj: Any) -> bytes:
        return obj


class _JsonbDumper(Dumper):
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return orjson.dumps(obj)


class _RawJsonLoader(Loader):
    def load(self, data: Any) -> bytes:
        return bytes(data)


class _JsonbLoader(Loader):
    def load(self, data: Any) -> Any:
        return orjson.loads(data)


ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_dumper(RawJson, _RawJsonDumper)
ADAPTERS.register_dumper(dict, _JsonbDumper)
ADAPTERS.register_loader("json", _RawJsonLoader)
ADAPTERS.register_loader("jsonb", _JsonbLoader)


def _conn_defaults(dsn: str, commit_timeout: float) -> dict[str, Any]:
    """Connection parameters the DSN does not set: a name in pg_stat_activity, and
    timeouts so that neither a connect nor a dead peer can hold a thread for long."""
    given = conninfo_to_dict(dsn)
    defaults: dict[str, Any] = {
        "application_name": "chatnode",
        "connect_timeout": max(2, math.ceil(commit_timeout)),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    return {k: v for k, v in defaults.items() if k not in given}


def public_dsn(dsn: str) -> str:
    """The DSN without its password (for logs, `info` and the admin API)."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    return make_conninfo("", **params)


# -- write statements ---------------------------------------------------------------------
# Each op becomes (SQL, params); consecutive ops with the same SQL go out as one executemany.

_PUT_USER = ("INSERT INTO users (id, created, record) VALUES (%s, %s, %s) "
             "ON CONFLICT (id) DO UPDATE SET created = EXCLUDED.created, record = EXCLUDED.record")
# Fields of the stored record, not a copy: another node may change other fields meanwhile.
# A tombstone (a deleted account) stays as it is.
_UPDATE_USER = ("UPDATE users SET record = jsonb_set((record - %s::text[]) || %s, '{settings}', "
                "coalesce(record->'settings', '{}'::jsonb) || %s) "
                "WHERE id = %s AND record IS NOT NULL AND NOT record ? 'deleted' AND record @> %s")
# A name held by anyone (this user included) refuses the insert: the unique index on
# users.username, or (same user, same name) no row changed, which the fence catches.
_ADD_USERNAME = ("INSERT INTO users (id, username) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE "
                 "SET username = EXCLUDED.username WHERE users.username IS DISTINCT FROM EXCLUDED.username")
_REMOVE_USERNAME = "UPDATE users SET username = NULL WHERE username = %s"
_PUT_TOKEN = ("INSERT INTO tokens (hash, user_id, record) VALUES (%s, %s, %s) "
              "ON CONFLICT (hash) DO UPDATE SET user_id = EXCLUDED.user_id, record = EXCLUDED.record")
_DELETE_TOKEN = "DELETE FROM tokens WHERE hash = %s"
_PUT_CHAT = ("INSERT INTO chats (id, kind, record) VALUES (%s, %s, %s) "
             "ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, record = EXCLUDED.record")
_PUT_MEMBER = ("INSERT INTO members (chat_id, user_id, record) VALUES (%s, %s, %s) "
               "ON CONFLICT (chat_id, user_id) DO UPDATE SET record = EXCLUDED.record")
_ADD_DIRECT = "INSERT INTO direct_chats (low, high, chat_id) VALUES (%s, %s, %s)"
_APPEND_MESSAGE = ("INSERT INTO messages (chat_id, seq, id, sender, kind, ts, expires_at, record, search) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_tsvector('simple', %s))")
_REWRITE_MESSAGE = ("UPDATE messages SET sender = %s, kind = %s, ts = %s, expires_at = %s, record = %s, "
                    "search = to_tsvector('simple', %s) WHERE chat_id = %s AND seq = %s")
_DELETE_MESSAGE = "DELETE FROM messages WHERE chat_id = %s AND seq = %s"
_SET_SEQ = "UPDATE chats SET last_seq = %s WHERE id = %s AND last_seq = %s"
# expected 0: a chat without a row has seq 0 (set_chat_seq may come before put_chat).
_SET_SEQ_FROM_0 = ("INSERT INTO chats (id, last_seq) VALUES (%s, %s) ON CONFLICT (id) "
                   "DO UPDATE SET last_seq = EXCLUDED.last_seq WHERE chats.last_seq = 0")
_SET_SEQ_ANY = ("INSERT INTO chats (id, last_seq) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq")
_ADD_DEDUPE = ("INSERT INTO dedupe (user_id, client_msg_id, chat_id, seq, message_id, ts) "
               "VALUES (%s, %s, %s, %s, %s, %s)")
_DELETE_DEDUPE = "DELETE FROM dedupe WHERE user_id = %s AND client_msg_id = %s AND ts = %s"
_PUT_BLOCK = "INSERT INTO blocks (blocker, blocked) VALUES (%s, %s) ON CONFLICT DO NOTHING"
_DELETE_BLOCK = "DELETE FROM blocks WHERE blocker = %s AND blocked = %s"
_PUT_META = "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
_DELETE_META = "DELETE FROM meta WHERE key = %s"
_KV_PUT = ("INSERT INTO plugin_kv (namespace, key, value) VALUES (%s, %s, %s) "
           "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value")
_KV_DELETE = "DELETE FROM plugin_kv WHERE namespace = %s AND key = %s"
_KV_DELETE_RANGE = "DELETE FROM plugin_kv WHERE namespace = %s AND key >= %s AND key < %s"

#: Statements that must change exactly one row each, or the transaction is a conflict.
_FENCED = {
    _SET_SEQ: "the seq of a chat was moved by someone else",
    _SET_SEQ_FROM_0: "the seq of a chat was moved by someone else",
    _ADD_USERNAME: "the username is already stored",
}


def _expires(meta: MessageMeta) -> int | None:
    return meta.expires_at or None


def _search_text(raw: bytes, meta: MessageMeta) -> str | None:
    """What search indexes of an entry: its text (a message or a caption), None for others.
    PostgreSQL text cannot hold U+0000, so it is left out."""
    if meta.kind not in SEARCHED_KINDS or b'"text"' not in raw:
        return None
    text = orjson.loads(raw).get("text")
    return text.replace("\x00", "") if isinstance(text, str) else None


def _set_chat_seq(chat_id: int, new_seq: int, expected: int | None) -> tuple[str, tuple[Any, ...]]:
    if expected is None:
        return _SET_SEQ_ANY, (chat_id, new_seq)
    if expected == 0:
        return _SET_SEQ_FROM_0, (chat_id, new_seq)
    return _SET_SEQ, (new_seq, chat_id, expected)


_STATEMENTS: dict[str, Callable[..., tuple[str, tuple[Any, ...]]]] = {
    "put_user": lambda user_id, record: (_PUT_USER, (user_id, record.get("created"), record)),
    "update_user": lambda user_id, fields, drop, settings, expect: (
        _UPDATE_USER, (drop, fields, settings, user_id, expect)),
    "add_username": lambda name, user_id: (_ADD_USERNAME, (user_id, name)),
    "remove_username": lambda name: (_REMOVE_USERNAME, (name,)),
    "put_token": lambda token_hash, record: (_PUT_TOKEN, (token_hash, int(record["user"]), record)),
    "delete_token": lambda token_hash: (_DELETE_TOKEN, (token_hash,)),
    "put_chat": lambda chat_id, record: (_PUT_CHAT, (chat_id, record.get("kind"), record)),
    "put_member": lambda chat_id, user_id, record: (_PUT_MEMBER, (chat_id, user_id, record)),
    "add_direct": lambda low, high, chat_id: (_ADD_DIRECT, (low, high, chat_id)),
    "append_message": lambda chat_id, seq, message_id, raw, meta: (
        _APPEND_MESSAGE, (chat_id, seq, message_id, meta.sender, meta.kind, meta.ts, _expires(meta), RawJson(raw),
                          _search_text(raw, meta))),
    "rewrite_message": lambda chat_id, seq, raw, meta: (
        _REWRITE_MESSAGE, (meta.sender, meta.kind, meta.ts, _expires(meta), RawJson(raw), _search_text(raw, meta),
                           chat_id, seq)),
    "delete_message": lambda chat_id, seq, message_id, expires_at: (_DELETE_MESSAGE, (chat_id, seq)),
    "set_chat_seq": _set_chat_seq,
    "add_dedupe": lambda user_id, client_msg_id, ack: (
        _ADD_DEDUPE, (user_id, client_msg_id, ack.chat_id, ack.seq, ack.message_id, ack.ts)),
    "delete_dedupe": lambda user_id, client_msg_id, ts: (_DELETE_DEDUPE, (user_id, client_msg_id, ts)),
    "put_block": lambda blocker, blocked: (_PUT_BLOCK, (blocker, blocked)),
    "delete_block": lambda blocker, blocked: (_DELETE_BLOCK, (blocker, blocked)),
    "put_meta": lambda key, value: (_PUT_META, (key, value)),
    "delete_meta": lambda key: (_DELETE_META, (key,)),
    "kv_put": lambda namespace, key, value: (_KV_PUT, (namespace, key, value)),
    "kv_delete": lambda namespace, key: (_KV_DELETE, (namespace, key)),
    "kv_delete_range": lambda namespace, start, end: (_KV_DELETE_RANGE, (namespace, start, end)),
}

#: `import_rows`: exported rows (EXPORT_TABLES shapes), skipping rows already stored.
_IMPORTS: dict[str, Callable[..., tuple[str, tuple[Any, ...]]]] = {
    "meta": lambda key, value: ("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", (key, value)),
    "users": lambda user_id, record: (
        "INSERT INTO users (id, username, created, record) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (user_id, record.get("username"), record.get("created"), record)),
    "tokens": lambda token_hash, record: (
        "INSERT INTO tokens (hash, user_id, record) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (token_hash, int(record["user"]), record)),
    "chats": lambda chat_id, record, last_seq: (
        "INSERT INTO chats (id, kind, record, last_seq) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (chat_id, record.get("kind"), record, last_seq)),
    "members": lambda chat_id, user_id, record: (
        "INSERT INTO members (chat_id, user_id, record) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (chat_id, user_id, record)),
    "directs": lambda low, high, chat_id: (_ADD_DIRECT + " ON CONFLICT DO NOTHING", (low, high, chat_id)),
    "messages": lambda chat_id, seq, message_id, raw, meta: (
        _APPEND_MESSAGE + " ON CONFLICT DO NOTHING",
        (chat_id, seq, message_id, meta.sender, meta.kind, meta.ts, _expires(meta), RawJson(raw),
         _search_text(raw, meta))),
    "dedupe": lambda user_id, client_msg_id, ack: (
        _ADD_DEDUPE + " ON CONFLICT DO NOTHING",
        (user_id, client_msg_id, ack.chat_id, ack.seq, ack.message_id, ack.ts)),
    "blocks": lambda blocker, blocked: (_PUT_BLOCK, (blocker, blocked)),
    "kv": lambda namespace, key, value: (
        "INSERT INTO plugin_kv (namespace, key, value) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (namespace, key, value)),
}
_STATEMENTS.update({f"_pg_import_{table}": statement for table, statement in _IMPORTS.items()})


#: The order in which a transaction writes its tables: always the same, so that two nodes'
#: transactions take their row locks in one order (fewer deadlocks between them).
_TABLE_ORDER = ("users", "tokens", "chats", "members", "direct_chats", "messages", "dedupe", "blocks", "meta",
                "plugin_kv")


def _table(sql: str) -> int:
    """The position in _TABLE_ORDER of the table a write statement changes."""
    position = _TABLE_POSITION.get(sql)
    if position is None:
        name = re.match(r"(?:INSERT INTO|UPDATE|DELETE FROM) (\w+)", sql).group(1)  # type: ignore[union-attr]
        position = _TABLE_POSITION[sql] = _TABLE_ORDER.index(name)
    return position


_TABLE_POSITION: dict[str, int] = {}


def _runs(ops: Iterable[Op]) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(SQL, params) for each run of ops to send with one executemany.

    Ops on different tables commute (no foreign keys, no triggers, and a conflict refuses
    the whole transaction whatever its order), so ops are grouped per table, in a fixed
    table order, keeping their order within each table; consecutive ops with the same
    statement then form one run. A batch of sends (append_message, set_chat_seq, ...)
    becomes one executemany per table instead of one statement per op."""
    tables: dict[int, list[tuple[str, tuple[Any, ...]]]] = {}
    for op in ops:
        sql, args = _STATEMENTS[op[0]](*op[1:])
        tables.setdefault(_table(sql), []).append((sql, args))
    for position in sorted(tables):
        current = ""
        params: list[tuple[Any, ...]] = []
        for sql, args in tables[position]:
            if sql != current and params:
                yield current, params
                params = []
            current = sql
            params.append(args)
        yield current, params


_CONFLICTS = {
    "users_username_key": "the username is already taken",
    "messages_pkey": "that seq of the chat is already taken",
    "messages_id_key": "the message id is already stored",
    "dedupe_pkey": "the client_msg_id is already stored",
    "direct_chats_pkey": "a 1-1 chat between these users is already stored",
}


def _conflict(exc: psycopg.Error) -> StorageConflict:
    constraint = exc.diag.constraint_name or ""
    what = _CONFLICTS.get(constraint, f"a concurrent write ({type(exc).__name__})")
    detail = exc.diag.message_detail
    return StorageConflict(f"{what}: {detail}" if detail else what)


# -- the state of one commit, shared between the writer task and its thread -------------


@attrs.define(eq=False)
class _Attempt:
    conn: psycopg.Connection[Any] | None
    committed: bool = False
    finished: bool = False  # the thread is done with `conn`
    abandoned: bool = False  # the writer gave up waiting: the thread closes `conn`
    lock: threading.Lock = attrs.Factory(threading.Lock)


class PostgresStorage(Storage):
    def __init__(self, dsn: str, *, pool_size: int, max_batch: int, commit_timeout: float) -> None:
        self.dsn = dsn
        self.commit_timeout = commit_timeout
        self.location = public_dsn(dsn)
        self._kwargs = _conn_defaults(dsn, commit_timeout)
        self._conn: psycopg.Connection[Any] | None = None  # the writer's; only the writer task swaps it
        self.read_slots = max(1, pool_size - 1)
        self._pool_unreachable = threading.Event()  # the pool gave up connecting; cleared by a connection
        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=self.read_slots, open=False, name="chatnode",
            kwargs={"autocommit": True, "context": ADAPTERS, **self._kwargs},
            configure=self._configure_reader, timeout=commit_timeout, reconnect_timeout=POOL_RECONNECT_WINDOW,
            reconnect_failed=lambda pool: self._pool_unreachable.set(),
        )
        self._read_limiter = trio.CapacityLimiter(self.read_slots)
        self.writer = Writer(self._commit, max_batch=max_batch)
        self.info = EngineInfo("postgresql", SCHEMA_VERSION, self.location)
        self.unknown_outcomes = 0
        self.commit_timeouts = 0
        self.reconnects = 0
        self.commit_seconds = 0.0

    # -- opening and closing (worker thread) ---------------------------------------------

    def _connect_writer(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, context=ADAPTERS, **self._kwargs)
        try:
            conn.execute("SET synchronous_commit = on")  # acks only after a durable commit
            conn.autocommit = False
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _configure_reader(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET default_transaction_read_only = on")

    def open(self) -> None:
        """Connect, create or migrate the schema, open the read pool. Runs in a thread."""
        try:
            self._conn = self._connect_writer()
            migrate(self._conn, self.location)
            self._pool.open(wait=True, timeout=max(self.commit_timeout, 5.0))
        except StorageError:
            self.close()
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self.close()
            raise StorageError(f"cannot open PostgreSQL storage at {self.location}: {_one_line(exc)}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._pool.close()

    # -- writing -----------------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        await self.writer.write(batch)

    def add_commit_hook(self, hook: Callable[[], WriteBatch],
                        failed: Callable[[WriteBatch], None] | None = None) -> None:
        self.writer.add_commit_hook(hook, failed)

    def statistics(self) -> dict[str, Any]:
        pool = self._pool.get_stats()
        return {"engine": "postgresql", "commits": self.writer.commits, "committed_ops": self.writer.committed_ops,
                "conflicts": self.writer.conflicts, "unknown_outcomes": self.unknown_outcomes,
                "commit_timeouts": self.commit_timeouts, "reconnects": self.reconnects,
                "commit_seconds": round(self.commit_seconds, 6),
                "read_connections": pool.get("pool_size", 0), "read_connections_idle": pool.get("pool_available", 0)}

    async def _commit(self, requests: list[list[Op]]) -> None:
        """The writer's commit: one thread call, bounded by commit_timeout. On timeout the
        thread is left to finish on its own (it then closes its connection), the server is
        asked to cancel what it waits for, and the outcome is unknown."""
        attempt = _Attempt(self._conn)
        self._conn = None  # the attempt owns it; it comes back if the thread is done with it
        started = time.perf_counter()
        try:
            with trio.move_on_after(self.commit_timeout) as timer:
                await trio.to_thread.run_sync(self._apply, attempt, requests, abandon_on_cancel=True)
        except StorageUnavailable as exc:
            self.unknown_outcomes += exc.unknown
            raise
        finally:
            self.commit_seconds += time.perf_counter() - started
            with attempt.lock:
                attempt.abandoned = not attempt.finished
                if attempt.finished:
                    self._conn = attempt.conn
        if not timer.cancelled_caught or attempt.committed:  # (it may have committed just in time)
            return
        self.commit_timeouts += 1
        self.unknown_outcomes += 1
        await trio.to_thread.run_sync(_cancel_on_server, attempt, abandon_on_cancel=True)
        raise StorageUnavailable(
            f"a commit took longer than storage.commit_timeout ({self.commit_timeout:g} s); its outcome is unknown",
            unknown=True)

    def _apply(self, attempt: _Attempt, requests: list[list[Op]]) -> None:
        """Runs in a worker thread: connect if needed, then the whole transaction. A
        connection that died while idle is replaced once; any other failure closes it."""
        try:
            reused = attempt.conn is not None and not attempt.conn.closed
            while True:
                if attempt.conn is None or attempt.conn.closed:
                    attempt.conn = self._connect_or_raise()
                try:
                    self._transaction(attempt, requests)
                    return
                except _Stale:
                    if not reused:
                        raise StorageUnavailable("lost the connection to PostgreSQL before the commit") from None
                    reused = False
        except StorageConflict:
            raise
        except BaseException:
            if attempt.conn is not None:
                attempt.conn.close()
                attempt.conn = None
            raise
        finally:
            with attempt.lock:
                attempt.finished = True
                if attempt.abandoned and attempt.conn is not None:
                    attempt.conn.close()
                    attempt.conn = None

    def _connect_or_raise(self) -> psycopg.Connection[Any]:
        try:
            conn = self._connect_writer()
        except psycopg.Error as exc:
            raise StorageUnavailable(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None
        self.reconnects += 1
        return conn

    def _transaction(self, attempt: _Attempt, requests: list[list[Op]]) -> None:
        conn = attempt.conn
        assert conn is not None
        fences: list[tuple[psycopg.Cursor[Any], int, str]] = []
        try:
            with conn.pipeline():
                for sql, params in _runs(op for ops in requests for op in ops):
                    cur = conn.cursor()
                    cur.executemany(sql, params)
                    if sql in _FENCED:
                        fences.append((cur, len(params), _FENCED[sql]))
            for cur, expected, what in fences:
                if cur.rowcount != expected:
                    raise StorageConflict(what)
        except StorageConflict:
            _rollback(conn)
            raise
        except (pgerrors.UniqueViolation, pgerrors.SerializationFailure, pgerrors.DeadlockDetected) as exc:
            _rollback(conn)
            raise _conflict(exc) from None
        except pgerrors.ReadOnlySqlTransaction:  # a standby: find the primary next time
            raise StorageUnavailable("PostgreSQL is read-only here (a standby?)") from None
        except psycopg.OperationalError as exc:
            if conn.broken:
                raise _Stale() from None
            raise StorageUnavailable(f"PostgreSQL refused the write: {_one_line(exc)}") from None
        except psycopg.Error as exc:
            _rollback(conn)
            raise StorageError(f"PostgreSQL refused the write: {_one_line(exc)}") from None
        try:  # from here on, a failure leaves the outcome unknown
            conn.commit()
        except psycopg.Error as exc:
            raise StorageUnavailable(f"the commit failed, its outcome is unknown: {_one_line(exc)}",
                                     unknown=True) from None
        attempt.committed = True

    # -- reading helpers -------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in a worker thread on a pooled (autocommit) connection."""
        return await trio.to_thread.run_sync(self._run_read, fn, args, limiter=self._read_limiter)

    def _run_read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        for retry in (True, False):  # a pooled connection may have died while idle
            conn = None
            try:
                conn = self._pooled()
                try:
                    with conn:
                        return fn(conn, *args)
                finally:
                    self._pool.putconn(conn)
            except psycopg_pool.PoolTimeout:
                reason = "the server cannot be reached" if self._pool_unreachable.is_set() else "no connection free"
                raise StorageUnavailable(f"cannot read from PostgreSQL: {reason}") from None
            except psycopg.OperationalError as exc:
                if retry and conn is not None and conn.broken:
                    self._pool.check()  # drop the other dead ones (the server restarted?)
                    continue
                raise StorageUnavailable(f"cannot read from PostgreSQL: {_one_line(exc)}") from None
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL refused a read: {_one_line(exc)}") from None
        raise AssertionError("unreachable")

    def _pooled(self) -> psycopg.Connection[Any]:
        """A pooled connection, waited for up to commit_timeout, in slices: once the pool
        has given up connecting (POOL_RECONNECT_WINDOW), the wait ends (`PoolTimeout`)."""
        deadline = time.monotonic() + self.commit_timeout
        while True:
            try:
                conn = self._pool.getconn(timeout=max(0.01, min(POOL_WAIT_SLICE, deadline - time.monotonic())))
            except psycopg_pool.PoolTimeout:
                if self._pool_unreachable.is_set() or time.monotonic() >= deadline:
                    raise
                continue
            self._pool_unreachable.clear()
            return conn

    async def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self._read(_fetch, sql, params)

    # -- accounts --------------------------------------------------------------------------

    async def get_users(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = list(user_ids)
        if not ids:
            return {}
        rows = await self._rows("SELECT id, record FROM users WHERE id = ANY(%s::bigint[]) AND record IS NOT NULL", ids)
        return dict(rows)

    async def user_id_by_name(self, name: str) -> int | None:
        rows = await self._rows("SELECT id FROM users WHERE username = %s", name)
        return rows[0][0] if rows else None

    async def search_usernames(self, prefix: str, limit: int, *, after: str = "") -> list[tuple[str, int]]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._rows(
            "SELECT username, id FROM users WHERE username LIKE %s AND username > %s ORDER BY username LIMIT %s",
            pattern, after, limit)
        return [(name, user_id) for name, user_id in rows]

    async def get_token(self, token_hash: bytes) -> dict[str, Any] | None:
        rows = await self._rows("SELECT record FROM tokens WHERE hash = %s", token_hash)
        return rows[0][0] if rows else None

    async def tokens_of(self, user_id: int) -> list[tuple[bytes, dict[str, Any]]]:
        rows = await self._rows("SELECT hash, record FROM tokens WHERE user_id = %s ORDER BY hash", user_id)
        return [(token_hash, record) for token_hash, record in rows]

    # -- chats -----------------------------------------------------------------------------

    async def load_chats(self, chat_ids: Iterable[int]) -> dict[int, LoadedChat]:
        ids = list(chat_ids)
        if not ids:
            return {}
        return await self._read(_load_chats, ids)

    async def chat_ids_of(self, user_id: int) -> set[int]:
        rows = await self._rows("SELECT chat_id FROM members WHERE user_id = %s", user_id)
        return {chat_id for (chat_id,) in rows}

    async def direct_chats(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        wanted = list(pairs)
        if not wanted:
            return {}
        rows = await self._rows(
            "SELECT d.low, d.high, d.chat_id FROM direct_chats d "
            "JOIN unnest(%s::bigint[], %s::bigint[]) AS p(low, high) ON d.low = p.low AND d.high = p.high",
            [low for low, _ in wanted], [high for _, high in wanted])
        return {(low, high): chat_id for low, high, chat_id in rows}

    async def read_messages(
        self, chat_id: int, first: int, end: int, limit: int, *, reverse: bool = False
    ) -> list[tuple[int, bytes]]:
        first, end = max(first, 0), min(end, MAX_BIGINT)
        if end <= first:
            return []
        order = "DESC" if reverse else "ASC"
        rows = await self._rows(
            f"SELECT seq, record FROM messages WHERE chat_id = %s AND seq >= %s AND seq < %s "
            f"ORDER BY seq {order} LIMIT %s", chat_id, first, end, limit or None)
        return [(seq, raw) for seq, raw in rows]

    async def find_messages(self, message_ids: Iterable[int]) -> dict[int, StoredMessage]:
        ids = list(message_ids)
        if not ids:
            return {}
        rows = await self._rows("SELECT id, chat_id, seq, record FROM messages WHERE id = ANY(%s::bigint[])", ids)
        return {message_id: StoredMessage(chat_id, seq, raw) for message_id, chat_id, seq, raw in rows}

    async def count_unread(
        self, ranges: list[tuple[int, int, int]], user_id: int, kinds: frozenset[str], cap: int, now: int
    ) -> dict[int, int]:
        if not ranges:
            return {}
        rows = await self._rows(
            "SELECT r.chat_id, (SELECT count(*) FROM (SELECT 1 FROM messages m"
            " WHERE m.chat_id = r.chat_id AND m.seq >= r.first AND m.seq <= r.last AND m.kind = ANY(%s::text[])"
            " AND m.sender <> %s AND (m.expires_at IS NULL OR m.expires_at > %s) LIMIT %s) AS hit)"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS r(chat_id, first, last)",
            list(kinds), user_id, now, cap,
            [r[0] for r in ranges], [max(r[1], 0) for r in ranges], [min(r[2], MAX_BIGINT) for r in ranges])
        return dict(rows)

    async def get_dedupe(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], DedupeAck]:
        wanted = list(keys)
        if not wanted:
            return {}
        rows = await self._rows(
            "SELECT d.user_id, d.client_msg_id, d.chat_id, d.seq, d.message_id, d.ts FROM dedupe d "
            "JOIN unnest(%s::bigint[], %s::text[]) AS k(user_id, client_msg_id) "
            "ON d.user_id = k.user_id AND d.client_msg_id = k.client_msg_id",
            [user_id for user_id, _ in wanted], [client_msg_id for _, client_msg_id in wanted])
        return {(row[0], row[1]): DedupeAck(*row[2:]) for row in rows}

    async def due_dedupe(self, cutoff: int, limit: int) -> list[tuple[int, str, int]]:
        if cutoff < 0:
            return []
        rows = await self._rows(
            "SELECT user_id, client_msg_id, ts FROM dedupe WHERE ts <= %s "
            "ORDER BY ts, user_id, client_msg_id LIMIT %s", min(cutoff, MAX_BIGINT), limit or None)
        return [(user_id, client_msg_id, ts) for user_id, client_msg_id, ts in rows]

    async def due_expiry(self, now: int, limit: int) -> list[tuple[int, int, int, int]]:
        rows = await self._rows(
            "SELECT chat_id, seq, id, expires_at FROM messages WHERE expires_at IS NOT NULL AND expires_at <= %s "
            "ORDER BY expires_at, chat_id, seq LIMIT %s", min(now, MAX_BIGINT), limit or None)
        return [(chat_id, seq, message_id, expires_at) for chat_id, seq, message_id, expires_at in rows]

    async def blocks_of(self, blockers: Iterable[int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {blocker: set() for blocker in blockers}
        if out:
            rows = await self._rows("SELECT blocker, blocked FROM blocks WHERE blocker = ANY(%s::bigint[])", list(out))
            for blocker, blocked in rows:
                out[blocker].add(blocked)
        return out

    # -- search ------------------------------------------------------------------------------

    def search_ready(self) -> bool:
        return True  # the index is part of the table (pg_schema.py, version 2)

    async def search_messages(
        self, terms: list[str], ranges: list[tuple[int, int, int]], now: int, limit: int,
        before: tuple[int, int, int] | None = None,
    ) -> list[tuple[int, int, bytes]]:
        if not terms or not ranges:
            return []
        query = " & ".join(f"'{term}':*" for term in terms)  # terms are letters and digits only
        ts, chat, seq = before if before is not None else (MAX_BIGINT, MAX_BIGINT, MAX_BIGINT)
        rows = await self._rows(
            "SELECT m.chat_id, m.seq, m.record FROM messages m"
            " JOIN unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS r(chat_id, first, last)"
            " ON m.chat_id = r.chat_id AND m.seq BETWEEN r.first AND r.last"
            " WHERE m.search @@ to_tsquery('simple', %s) AND m.kind = ANY(%s::text[])"
            " AND (m.expires_at IS NULL OR m.expires_at > %s) AND (m.ts, m.chat_id, m.seq) < (%s, %s, %s)"
            " ORDER BY m.ts DESC, m.chat_id DESC, m.seq DESC LIMIT %s",
            [r[0] for r in ranges], [max(r[1], 0) for r in ranges], [min(r[2], MAX_BIGINT) for r in ranges],
            query, list(SEARCHED_KINDS), min(now, MAX_BIGINT), ts, chat, seq, limit)
        return [(chat_id, seq, raw) for chat_id, seq, raw in rows]

    # -- node state and plugin data ----------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        rows = await self._rows("SELECT value FROM meta WHERE key = %s", key)
        return rows[0][0] if rows else None

    async def kv_get(self, namespace: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        wanted = list(keys)
        if not wanted:
            return {}
        rows = await self._rows(
            "SELECT key, value FROM plugin_kv WHERE namespace = %s AND key = ANY(%s::bytea[])", namespace, wanted)
        return dict(rows)

    async def kv_scan(
        self, namespace: str, start: bytes, end: bytes | None, limit: int, *, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        order = "DESC" if reverse else "ASC"
        bound, params = ("", ()) if end is None else (" AND key < %s", (end,))
        rows = await self._rows(
            f"SELECT key, value FROM plugin_kv WHERE namespace = %s AND key >= %s{bound} ORDER BY key {order} LIMIT %s",
            namespace, start, *params, limit or None)
        return [(key, value) for key, value in rows]

    async def kv_count(self, namespace: str) -> int:
        rows = await self._rows("SELECT count(*) FROM plugin_kv WHERE namespace = %s", namespace)
        return int(rows[0][0])

    # -- copying -----------------------------------------------------------------------------

    async def export(self, table: str, page: int = 1000) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        select, keys, make_row = _EXPORTS[table]
        after: tuple[Any, ...] | None = None
        while True:
            rows = await self._read(_export_page, select, keys, after, page)
            if not rows:
                return
            yield [make_row(*row) for row in rows]
            if len(rows) < page:
                return
            after = rows[-1][: len(keys)]

    async def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        batch = WriteBatch()
        batch.ops.extend((f"_pg_import_{table}", *row) for row in rows)
        await self.writer.write(batch)


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """Roll back a refused transaction; if the connection is lost meanwhile, the server
    rolls it back itself and the next commit replaces the connection."""
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


def _cancel_on_server(attempt: _Attempt) -> None:
    """Ask the server to cancel what an abandoned commit waits for (a lock, a standby).
    Under the attempt's lock, so its thread cannot close the connection meanwhile."""
    with attempt.lock:
        conn = attempt.conn
        if not attempt.finished and conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=CANCEL_TIMEOUT)


class _Stale(Exception):
    """The writer's connection was found dead before COMMIT: nothing was applied."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- reads that run in a worker thread ---------------------------------------------------


def _fetch(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def _load_chats(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, LoadedChat]:
    """Records, members and tails of many chats: three queries in one round trip, from
    one snapshot (so last_seq and the tail agree)."""
    with conn.pipeline():
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        chats = conn.execute(
            "SELECT id, record, last_seq FROM chats WHERE id = ANY(%s::bigint[]) AND record IS NOT NULL", (ids,))
        members = conn.execute(
            "SELECT chat_id, user_id, record FROM members WHERE chat_id = ANY(%s::bigint[]) ORDER BY chat_id, user_id",
            (ids,))
        tails = conn.execute(
            "SELECT c.id, t.seq, t.record FROM unnest(%s::bigint[]) AS c(id) CROSS JOIN LATERAL"
            " (SELECT seq, record FROM messages m WHERE m.chat_id = c.id ORDER BY seq DESC LIMIT %s) t",
            (ids, TAIL))
        conn.execute("COMMIT")
    out = {chat_id: LoadedChat(record, {}, last_seq, []) for chat_id, record, last_seq in chats.fetchall()}
    for chat_id, user_id, record in members.fetchall():
        if chat_id in out:
            out[chat_id].members[user_id] = record
    for chat_id, seq, raw in tails.fetchall():
        if chat_id in out:
            out[chat_id].tail.append((seq, raw))
    for loaded in out.values():
        loaded.tail.reverse()
    return out


def _export_page(
    conn: psycopg.Connection[Any], select: str, keys: tuple[str, ...], after: tuple[Any, ...] | None, page: int
) -> list[tuple[Any, ...]]:
    """One page of a table in key order, after the last key of the previous page."""
    key_list = ", ".join(keys)
    where = f"({key_list}) > ({', '.join(['%s'] * len(keys))})" if after is not None else "true"
    sql = select.format(where=where, order=key_list)
    return conn.execute(sql + " LIMIT %s", (*(after or ()), page)).fetchall()


_EXPORTS: dict[str, tuple[str, tuple[str, ...], Callable[..., tuple[Any, ...]]]] = {
    "meta": ("SELECT key, value FROM meta WHERE {where} ORDER BY {order}", ("key",), lambda *row: row),
    "users": ("SELECT id, record FROM users WHERE record IS NOT NULL AND {where} ORDER BY {order}", ("id",),
              lambda *row: row),
    "tokens": ("SELECT hash, record FROM tokens WHERE {where} ORDER BY {order}", ("hash",), lambda *row: row),
    "chats": ("SELECT id, record, last_seq FROM chats WHERE record IS NOT NULL AND {where} ORDER BY {order}",
              ("id",), lambda *row: row),
    "members": ("SELECT chat_id, user_id, record FROM members WHERE {where} ORDER BY {order}",
                ("chat_id", "user_id"), lambda *row: row),
    "directs": ("SELECT low, high, chat_id FROM direct_chats WHERE {where} ORDER BY {order}", ("low", "high"),
                lambda *row: row),
    "messages": (("SELECT chat_id, seq, id, record, sender, kind, ts, expires_at FROM messages "
                  "WHERE {where} ORDER BY {order}"), ("chat_id", "seq"),
                 lambda chat_id, seq, message_id, raw, sender, kind, ts, expires_at: (
                     chat_id, seq, message_id, raw, MessageMeta(sender, kind, ts, expires_at or 0))),
    "dedupe": (("SELECT user_id, client_msg_id, chat_id, seq, message_id, ts FROM dedupe WHERE {where} "
                "ORDER BY {order}"), ("user_id", "client_msg_id"),
               lambda user_id, client_msg_id, *ack: (user_id, client_msg_id, DedupeAck(*ack))),
    "blocks": ("SELECT blocker, blocked FROM blocks WHERE {where} ORDER BY {order}", ("blocker", "blocked"),
               lambda *row: row),
    "kv": ("SELECT namespace, key, value FROM plugin_kv WHERE {where} ORDER BY {order}", ("namespace", "key"),
           lambda *row: row),
}


@contextlib.asynccontextmanager
async def open_postgres(
    dsn: str, *, pool_size: int = 8, max_batch: int = 2048, commit_timeout: float = 10.0
) -> AsyncIterator[PostgresStorage]:
    """Connect, create or migrate the schema, and run the writer; on exit, commit what is
    queued and close. Raises `StorageError` with a one-line reason if it cannot open."""
    if not dsn:
        raise StorageError('storage.dsn is required with engine = "postgresql" (e.g. "host=db1 dbname=chat")')
    try:
        storage = PostgresStorage(dsn, pool_size=pool_size, max_batch=max_batch, commit_timeout=commit_timeout)
    except psycopg.Error as exc:  # a DSN libpq cannot parse
        raise StorageError(f"invalid storage.dsn: {_one_line(exc)}") from None
    await trio.to_thread.run_sync(storage.open)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.writer.serve)
            try:
                yield storage
            finally:
                await storage.writer.close()
    finally:
        await trio.to_thread.run_sync(storage.close)
