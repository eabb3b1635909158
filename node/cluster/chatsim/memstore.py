"""An in-process stand-in for the cluster's PostgreSQL, with seeded faults.

`SharedDatabase` holds the tables every simulated node shares and enforces exactly the
constraints node/storage/pg_schema.py gives PostgreSQL: a chat's seq moves only by
compare-and-set, a (chat, seq) and a message id are taken once (the log is insert-only
apart from rewrites and purges), a (user, client_msg_id) is stored once, a username and
a 1-1 chat once. A transaction is applied at one instant, all or nothing: concurrent
commits are thus serialised, which is what PostgreSQL's row locks and unique indexes
make of the writes the core issues. A refused transaction raises `StorageConflict` and
changes nothing. ``SharedDatabase(fences=False)`` is a deliberately broken variant, for
showing that the simulation's checker catches what the fences prevent: a log entry's
insert replaces whatever holds its seq, and a chat's seq moves unconditionally.

`SimStorage` is one node's handle on it, shaped like `PostgresStorage`: its own group-
commit `Writer` (the real one), commit and read latencies in simulated time, a node
pause (`Stall`) that holds its commits and reads, and seeded faults:

* a commit that fails before anything is applied (`StorageUnavailable`);
* a commit whose outcome is unknown: the caller is told `StorageUnavailable(unknown=True)`
  and the transaction was applied, or not (both happen in PostgreSQL: a lost connection
  after COMMIT was sent, a commit past `commit_timeout`);
* a read that fails (`StorageUnavailable`);
* a node that dies while its commit is in flight: the commit may still land.

Only what the simulated chat paths call is implemented; the rest raises
NotImplementedError naming the method.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import orjson
import trio

from ...storage import (
    TAIL,
    DedupeAck,
    EngineInfo,
    LoadedChat,
    Storage,
    StorageConflict,
    StorageUnavailable,
    StoredMessage,
)
from ...storage.batch import MessageMeta, Op
from ...storage.writer import Writer
from ..memnet import Stall

_MISSING = object()


@attrs.frozen
class LogEntry:
    """A log entry as the `messages` table holds it."""

    message_id: int
    raw: bytes
    meta: MessageMeta


class SharedDatabase:
    """The tables of the cluster's one database (see the module docstring)."""

    def __init__(self, *, fences: bool = True) -> None:
        self.fences = fences
        self.users: dict[int, dict[str, Any]] = {}
        self.usernames: dict[str, int] = {}
        self.tokens: dict[bytes, dict[str, Any]] = {}
        self.chats: dict[int, dict[str, Any] | None] = {}  # id -> record (None: only the seq is stored)
        self.last_seq: dict[int, int] = {}
        self.members: dict[tuple[int, int], dict[str, Any]] = {}
        self.directs: dict[tuple[int, int], int] = {}
        self.logs: dict[int, dict[int, LogEntry]] = {}  # chat -> seq -> entry (the messages table)
        self.message_ids: dict[int, tuple[int, int]] = {}
        self.dedupe: dict[tuple[int, str], DedupeAck] = {}
        self.blocks: set[tuple[int, int]] = set()
        self.meta: dict[str, bytes] = {}
        self.kv: dict[tuple[str, bytes], bytes] = {}
        self.commits = 0
        self.conflicts = 0

    # -- writing ---------------------------------------------------------------------

    def apply(self, requests: list[list[Op]]) -> None:
        """Apply every op of every request as ONE transaction, or none of them."""
        undo: list[tuple[Any, Any, Any]] = []
        try:
            for ops in requests:
                for op in ops:
                    getattr(self, "_op_" + op[0])(undo, *op[1:])
        except StorageConflict:
            self.conflicts += 1
            for table, key, old in reversed(undo):
                _restore(table, key, old)
            raise
        self.commits += 1

    def _set(self, undo: list, table: Any, key: Any, value: Any) -> None:
        undo.append((table, key, table.get(key, _MISSING)))
        if value is _MISSING:
            table.pop(key, None)
        else:
            table[key] = value

    def _op_put_user(self, undo: list, user_id: int, record: dict[str, Any]) -> None:
        self._set(undo, self.users, user_id, _copy(record))

    def _op_add_username(self, undo: list, name: str, user_id: int) -> None:
        if name in self.usernames:
            raise StorageConflict("the username is already taken")
        self._set(undo, self.usernames, name, user_id)

    def _op_remove_username(self, undo: list, name: str) -> None:
        self._set(undo, self.usernames, name, _MISSING)

    def _op_put_token(self, undo: list, token_hash: bytes, record: dict[str, Any]) -> None:
        self._set(undo, self.tokens, token_hash, _copy(record))

    def _op_delete_token(self, undo: list, token_hash: bytes) -> None:
        self._set(undo, self.tokens, token_hash, _MISSING)

    def _op_put_chat(self, undo: list, chat_id: int, record: dict[str, Any]) -> None:
        self._set(undo, self.chats, chat_id, _copy(record))
        if chat_id not in self.last_seq:
            self._set(undo, self.last_seq, chat_id, 0)

    def _op_put_member(self, undo: list, chat_id: int, user_id: int, record: dict[str, Any]) -> None:
        self._set(undo, self.members, (chat_id, user_id), _copy(record))

    def _op_add_direct(self, undo: list, low: int, high: int, chat_id: int) -> None:
        if (low, high) in self.directs:
            raise StorageConflict("a 1-1 chat between these users is already stored")
        self._set(undo, self.directs, (low, high), chat_id)

    def _op_append_message(self, undo: list, chat_id: int, seq: int, message_id: int, raw: bytes,
                           meta: MessageMeta) -> None:
        log = self.logs.setdefault(chat_id, {})
        if seq in log and self.fences:
            raise StorageConflict(f"that seq of the chat is already taken: ({chat_id}, {seq})")
        if message_id in self.message_ids:
            raise StorageConflict("the message id is already stored")
        if seq in log:  # only without the fences: the earlier entry is overwritten
            self._set(undo, self.message_ids, log[seq].message_id, _MISSING)
        self._set(undo, log, seq, LogEntry(message_id, raw, meta))
        self._set(undo, self.message_ids, message_id, (chat_id, seq))

    def _op_rewrite_message(self, undo: list, chat_id: int, seq: int, raw: bytes, meta: MessageMeta) -> None:
        log = self.logs.get(chat_id, {})
        found = log.get(seq)
        if found is not None:  # UPDATE ... WHERE: no row, no change
            self._set(undo, log, seq, LogEntry(found.message_id, raw, meta))

    def _op_delete_message(self, undo: list, chat_id: int, seq: int, message_id: int, expires_at: int) -> None:
        log = self.logs.get(chat_id, {})
        found = log.get(seq)
        if found is not None:
            self._set(undo, log, seq, _MISSING)
            self._set(undo, self.message_ids, found.message_id, _MISSING)

    def _op_set_chat_seq(self, undo: list, chat_id: int, new_seq: int, expected: int | None) -> None:
        stored = self.last_seq.get(chat_id)
        if expected is not None and (stored or 0) != expected and self.fences:
            raise StorageConflict(f"the seq of chat {chat_id} was moved by someone else ({stored} != {expected})")
        if chat_id not in self.chats:
            self._set(undo, self.chats, chat_id, None)
        self._set(undo, self.last_seq, chat_id, new_seq)

    def _op_add_dedupe(self, undo: list, user_id: int, client_msg_id: str, ack: DedupeAck) -> None:
        if (user_id, client_msg_id) in self.dedupe:
            raise StorageConflict("the client_msg_id is already stored")
        self._set(undo, self.dedupe, (user_id, client_msg_id), ack)

    def _op_delete_dedupe(self, undo: list, user_id: int, client_msg_id: str, ts: int) -> None:
        found = self.dedupe.get((user_id, client_msg_id))
        if found is not None and found.ts == ts:
            self._set(undo, self.dedupe, (user_id, client_msg_id), _MISSING)

    def _op_put_block(self, undo: list, blocker: int, blocked: int) -> None:
        if (blocker, blocked) not in self.blocks:
            self.blocks.add((blocker, blocked))
            undo.append((self.blocks, (blocker, blocked), _MISSING))

    def _op_delete_block(self, undo: list, blocker: int, blocked: int) -> None:
        if (blocker, blocked) in self.blocks:
            self.blocks.discard((blocker, blocked))
            undo.append((self.blocks, (blocker, blocked), True))

    def _op_put_meta(self, undo: list, key: str, value: bytes) -> None:
        self._set(undo, self.meta, key, value)

    def _op_delete_meta(self, undo: list, key: str) -> None:
        self._set(undo, self.meta, key, _MISSING)

    def _op_kv_put(self, undo: list, namespace: str, key: bytes, value: bytes) -> None:
        self._set(undo, self.kv, (namespace, key), value)

    def _op_kv_delete(self, undo: list, namespace: str, key: bytes) -> None:
        self._set(undo, self.kv, (namespace, key), _MISSING)

    def _op_kv_delete_range(self, undo: list, namespace: str, start: bytes, end: bytes) -> None:
        for ns, key in [k for k in self.kv if k[0] == namespace and start <= k[1] < end]:
            self._set(undo, self.kv, (ns, key), _MISSING)

    # -- reading (one consistent instant each) -------------------------------------------

    def load_chat(self, chat_id: int) -> LoadedChat | None:
        record = self.chats.get(chat_id)
        if record is None:
            return None
        members = {u: _copy(r) for (c, u), r in sorted(self.members.items()) if c == chat_id}
        log = self.logs.get(chat_id, {})
        tail = [(s, log[s].raw) for s in sorted(log)[-TAIL:]]
        return LoadedChat(_copy(record), members, self.last_seq.get(chat_id, 0), tail)

    def read_log(self, chat_id: int, first: int, end: int) -> list[tuple[int, bytes]]:
        """(seq, record) with first <= seq < end, ascending."""
        log = self.logs.get(chat_id, {})
        return [(s, log[s].raw) for s in sorted(log) if first <= s < end]

    def chat_log(self, chat_id: int) -> dict[int, LogEntry]:
        """Every stored entry of a chat by seq (for checking a run)."""
        log = self.logs.get(chat_id, {})
        return {s: log[s] for s in sorted(log)}


def _copy(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record is a value: the core keeps mutating the dicts it wrote."""
    return orjson.loads(orjson.dumps(record))


def _restore(table: Any, key: Any, old: Any) -> None:
    if isinstance(table, set):
        (table.add if old is True else table.discard)(key)
    elif old is _MISSING:
        table.pop(key, None)
    else:
        table[key] = old


@attrs.define
class StorageFaults:
    """Seeded fault rates of one run (probabilities per commit or read)."""

    commit_unavailable: float = 0.0  # fails before anything is applied
    commit_unknown: float = 0.0  # the caller is told "unknown"; applied or not, half and half
    read_unavailable: float = 0.0
    lands_after_crash: float = 0.5  # a commit in flight when its node dies is applied anyway
    commit_latency: tuple[float, float] = (0.001, 0.004)  # seconds, uniform
    read_latency: tuple[float, float] = (0.0005, 0.002)

    def off(self) -> StorageFaults:
        """The same latencies, no faults (the end of a run: let it settle)."""
        return attrs.evolve(self, commit_unavailable=0.0, commit_unknown=0.0, read_unavailable=0.0)


class SimStorage(Storage):
    """One node's handle on the `SharedDatabase` (see the module docstring). Run
    `writer.serve` in the node's nursery."""

    def __init__(self, db: SharedDatabase, stall: Stall, faults: Callable[[], StorageFaults], rng: random.Random,
                 *, max_batch: int = 2048) -> None:
        self.db = db
        self._stall = stall
        self._faults = faults  # read at every call: a run turns them off at the end
        self._rng = rng
        self.writer = Writer(self._commit, max_batch=max_batch)
        self.info = EngineInfo("simulated", 0, "memory")
        self.failed_commits = 0
        self.unknown_outcomes = 0
        self.failed_reads = 0

    # -- writing ---------------------------------------------------------------------

    async def write(self, batch: Any) -> None:
        await self.writer.write(batch)

    def add_commit_hook(self, hook: Callable[[], Any], failed: Callable[[Any], None] | None = None) -> None:
        self.writer.add_commit_hook(hook, failed)

    def statistics(self) -> dict[str, Any]:
        return {"engine": "simulated", "commits": self.writer.commits, "conflicts": self.writer.conflicts,
                "failed_commits": self.failed_commits, "unknown_outcomes": self.unknown_outcomes,
                "failed_reads": self.failed_reads}

    async def _commit(self, requests: list[list[Op]]) -> None:
        faults = self._faults()
        draw = self._rng.random()
        try:
            await self._pause(faults.commit_latency)
        except trio.Cancelled:  # the node died with COMMIT on the wire: it may land anyway
            if self._rng.random() < faults.lands_after_crash:
                try:
                    self.db.apply(requests)
                except StorageConflict:
                    pass
            raise
        if draw < faults.commit_unavailable:
            self.failed_commits += 1
            raise StorageUnavailable("simulated: the connection broke before COMMIT")
        unknown = draw < faults.commit_unavailable + faults.commit_unknown
        if unknown and self._rng.random() < 0.5:
            self.unknown_outcomes += 1
            raise StorageUnavailable("simulated: the commit was lost on its way; outcome unknown", unknown=True)
        self.db.apply(requests)  # raises StorageConflict, having applied nothing
        if unknown:
            self.unknown_outcomes += 1
            raise StorageUnavailable("simulated: the answer to COMMIT was lost; outcome unknown", unknown=True)
        await self._stall.wait_unstalled()  # the answer waits for a paused node

    async def _pause(self, latency: tuple[float, float]) -> None:
        await trio.sleep(self._rng.uniform(*latency))
        await self._stall.wait_unstalled()

    async def _read(self) -> None:
        """A read's round trip; it may fail. The result is taken when it returns."""
        faults = self._faults()
        failed = self._rng.random() < faults.read_unavailable
        await self._pause(faults.read_latency)
        if failed:
            self.failed_reads += 1
            raise StorageUnavailable("simulated: cannot read from the database")

    # -- accounts ----------------------------------------------------------------------

    async def get_users(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        await self._read()
        return {u: _copy(self.db.users[u]) for u in user_ids if u in self.db.users}

    async def user_id_by_name(self, name: str) -> int | None:
        await self._read()
        return self.db.usernames.get(name)

    async def get_token(self, token_hash: bytes) -> dict[str, Any] | None:
        await self._read()
        record = self.db.tokens.get(token_hash)
        return _copy(record) if record is not None else None

    async def tokens_of(self, user_id: int) -> list[tuple[bytes, dict[str, Any]]]:
        await self._read()
        return sorted((h, _copy(r)) for h, r in self.db.tokens.items() if int(r["user"]) == user_id)

    # -- chats -------------------------------------------------------------------------

    async def load_chats(self, chat_ids: Iterable[int]) -> dict[int, LoadedChat]:
        ids = list(chat_ids)
        await self._read()
        out = {}
        for chat_id in ids:
            loaded = self.db.load_chat(chat_id)
            if loaded is not None:
                out[chat_id] = loaded
        return out

    async def chat_ids_of(self, user_id: int) -> set[int]:
        await self._read()
        return {c for c, u in self.db.members if u == user_id}

    async def direct_chats(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        wanted = list(pairs)
        await self._read()
        return {p: self.db.directs[p] for p in wanted if p in self.db.directs}

    async def read_messages(self, chat_id: int, first: int, end: int, limit: int, *,
                            reverse: bool = False) -> list[tuple[int, bytes]]:
        await self._read()
        rows = self.db.read_log(chat_id, first, end)
        if reverse:
            rows.reverse()
        return rows[:limit] if limit else rows

    async def find_messages(self, message_ids: Iterable[int]) -> dict[int, StoredMessage]:
        ids = list(message_ids)
        await self._read()
        out = {}
        for message_id in ids:
            where = self.db.message_ids.get(message_id)
            if where is not None:
                out[message_id] = StoredMessage(where[0], where[1], self.db.logs[where[0]][where[1]].raw)
        return out

    async def get_dedupe(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], DedupeAck]:
        wanted = list(keys)
        await self._read()
        return {k: self.db.dedupe[k] for k in wanted if k in self.db.dedupe}

    async def blocks_of(self, blockers: Iterable[int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {b: set() for b in blockers}
        await self._read()
        for blocker, blocked in self.db.blocks:
            if blocker in out:
                out[blocker].add(blocked)
        return out

    # -- node state and plugin data ------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        await self._read()
        return self.db.meta.get(key)

    async def kv_get(self, namespace: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        wanted = list(keys)
        await self._read()
        return {k: self.db.kv[(namespace, k)] for k in wanted if (namespace, k) in self.db.kv}

    async def kv_scan(self, namespace: str, start: bytes, end: bytes | None, limit: int, *,
                      reverse: bool = False) -> list[tuple[bytes, bytes]]:
        await self._read()
        keys = sorted((k for ns, k in self.db.kv if ns == namespace and start <= k and (end is None or k < end)),
                      reverse=reverse)
        if limit:
            keys = keys[:limit]
        return [(k, self.db.kv[(namespace, k)]) for k in keys]

    async def kv_count(self, namespace: str) -> int:
        await self._read()
        return sum(1 for ns, _ in self.db.kv if ns == namespace)

    # -- not simulated -------------------------------------------------------------------

    def _not_simulated(self, name: str) -> NotImplementedError:
        return NotImplementedError(f"SimStorage.{name} is not simulated: the chat simulation does not call it")

    async def search_usernames(self, prefix: str, limit: int, *, after: str = "") -> list[tuple[str, int]]:
        raise self._not_simulated("search_usernames")

    async def count_unread(self, ranges: list[tuple[int, int, int]], user_id: int, kinds: frozenset[str], cap: int,
                           now: int) -> dict[int, int]:
        raise self._not_simulated("count_unread")

    async def due_dedupe(self, cutoff: int, limit: int) -> list[tuple[int, str, int]]:
        raise self._not_simulated("due_dedupe")

    async def due_expiry(self, now: int, limit: int) -> list[tuple[int, int, int, int]]:
        raise self._not_simulated("due_expiry")

    async def search_messages(self, terms: list[str], ranges: list[tuple[int, int, int]], now: int, limit: int,
                              before: tuple[int, int, int] | None = None) -> list[tuple[int, int, bytes]]:
        raise self._not_simulated("search_messages")

    def search_ready(self) -> bool:
        raise self._not_simulated("search_ready")

    def export(self, table: str, page: int = 1000) -> Any:
        raise self._not_simulated("export")

    async def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        raise self._not_simulated("import_rows")
