"""What the core and plugins may ask of storage: the interface both engines implement.

Shaped so that neither engine pays a cost per message:

- **Writes** come as a `WriteBatch` (node/storage/batch.py) and go through one group-commit
  writer (node/storage/writer.py): whatever is waiting is folded into one transaction,
  committed in one worker-thread call. A caller is answered only after its commit is
  durable; a commit whose outcome is unknown raises `StorageUnavailable(unknown=True)`
  and is never reported as done.
- **Point reads** are cheap: LMDB answers them on the event loop (microseconds, readers
  never wait for the writer); PostgreSQL answers in a worker thread, so the core keeps
  caches and loads what a batch of operations needs in one call (`load_chats`,
  `get_dedupe`, `find_messages`, `get_users`).
- **Range reads** are paged: every scan takes a limit.

Ids are ints; records are the JSON-shaped dicts the core keeps (users, tokens, chats,
members); log entries are the exact bytes clients receive (an engine never re-encodes
them). Nothing above node/storage imports lmdb or psycopg.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from .batch import DedupeAck, Op, WriteBatch

if TYPE_CHECKING:
    from .writer import Writer


class StorageError(Exception):
    """A storage operation failed; nothing of the failed write was applied."""


class StorageConflict(StorageError):
    """A write broke an invariant the engine enforces (a seq, a client_msg_id, a username
    or a direct chat taken twice, or a chat's seq moved by someone else). Nothing of the
    transaction was applied; cached state about what it touched is stale."""


class StorageUnavailable(StorageError):
    """The engine cannot be reached or refused to work (a failover, a full disk).

    ``unknown``: the commit was sent but its outcome is unknown: it may have been applied.
    Never acknowledge such a write; the client's retry (same client_msg_id) settles it.
    """

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


class LoadedChat(NamedTuple):
    """A chat as stored: its record, every member record (former members included), the
    last seq assigned exactly as stored (what `set_chat_seq` compares against), and the
    newest log entries (oldest first) for previews and receipts."""

    record: dict[str, Any]
    members: dict[int, dict[str, Any]]
    last_seq: int
    tail: list[tuple[int, bytes]]


class StoredMessage(NamedTuple):
    chat_id: int
    seq: int
    raw: bytes


@attrs.frozen
class EngineInfo:
    """What `chatnode` and the admin API show about the engine in use."""

    name: str  # "lmdb" or "postgresql"
    schema_version: int
    location: str  # a path, or a DSN without its password


#: Rows of one table, for `chatnode storage copy` and verification. Table names and row
#: shapes are engine-neutral (see `Storage.export`).
EXPORT_TABLES = (
    "meta", "users", "tokens", "chats", "members", "directs", "messages", "dedupe", "blocks", "kv",
)


TAIL = 64  # newest log entries loaded with a chat


class Storage:
    """The interface of a storage engine. See the module docstring for the contract."""

    info: EngineInfo
    writer: Writer  # the group-commit writer every engine runs (its counters, `on_commit`)

    # -- writing ---------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Commit `batch` durably, together with whatever else is waiting (group commit).

        Raises `StorageConflict` (an invariant would break; nothing applied),
        `StorageUnavailable` (engine unreachable; ``unknown`` if the outcome is unknown)
        or `StorageError`. Cancellation: a queued batch is still committed; the caller
        just does not learn the outcome.
        """
        raise NotImplementedError

    def add_commit_hook(self, hook: Callable[[], WriteBatch],
                        failed: Callable[[WriteBatch], None] | None = None) -> None:
        """`hook()` runs just before each commit; its writes join that transaction
        (state that may lag, such as last-seen times, rides along for free). If that
        commit fails, `failed(batch)` gets back what `hook()` gave, to be kept for later."""
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        """Counters for the admin API and /metrics: commits, committed_ops, ..."""
        raise NotImplementedError

    # -- accounts --------------------------------------------------------------

    async def get_users(self, user_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The stored records of those users that exist."""
        raise NotImplementedError

    async def user_id_by_name(self, name: str) -> int | None:
        raise NotImplementedError

    async def search_usernames(self, prefix: str, limit: int, *, after: str = "") -> list[tuple[str, int]]:
        """(username, user id) of up to `limit` usernames starting with `prefix` (and
        greater than `after`: the next page), in order."""
        raise NotImplementedError

    async def get_token(self, token_hash: bytes) -> dict[str, Any] | None:
        raise NotImplementedError

    async def tokens_of(self, user_id: int) -> list[tuple[bytes, dict[str, Any]]]:
        """(token hash, record) of every device of a user."""
        raise NotImplementedError

    # -- chats -------------------------------------------------------------------

    async def load_chats(self, chat_ids: Iterable[int]) -> dict[int, LoadedChat]:
        """Those of the chats that exist, each with members, last seq and its `TAIL`."""
        raise NotImplementedError

    async def chat_ids_of(self, user_id: int) -> set[int]:
        """Every chat the user is or was a member of."""
        raise NotImplementedError

    async def direct_chats(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """The 1-1 chat of each (low user id, high user id) pair that has one."""
        raise NotImplementedError

    async def read_messages(
        self, chat_id: int, first: int, end: int, limit: int, *, reverse: bool = False
    ) -> list[tuple[int, bytes]]:
        """(seq, record) with first <= seq < end, at most `limit`, ascending (or, with
        `reverse`, the newest first)."""
        raise NotImplementedError

    async def find_messages(self, message_ids: Iterable[int]) -> dict[int, StoredMessage]:
        """Log entries by message id (those still stored)."""
        raise NotImplementedError

    async def count_unread(
        self, ranges: list[tuple[int, int, int]], user_id: int, kinds: frozenset[str], cap: int, now: int
    ) -> dict[int, int]:
        """Per (chat, first seq, last seq): entries of one of `kinds`, not from `user_id`,
        not expired at `now`, counted up to `cap`."""
        raise NotImplementedError

    async def get_dedupe(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], DedupeAck]:
        """The stored ack for each (user id, client_msg_id) that has one."""
        raise NotImplementedError

    async def due_dedupe(self, cutoff: int, limit: int) -> list[tuple[int, str, int]]:
        """(user id, client_msg_id, ts) of the oldest dedupe records with ts <= cutoff."""
        raise NotImplementedError

    async def due_expiry(self, now: int, limit: int) -> list[tuple[int, int, int, int]]:
        """(chat id, seq, message id, expires_at) of log entries whose expires_at <= now,
        the soonest first."""
        raise NotImplementedError

    async def blocks_of(self, blockers: Iterable[int]) -> dict[int, set[int]]:
        """Whom each of `blockers` blocks (every blocker asked for is in the answer)."""
        raise NotImplementedError

    # -- search ------------------------------------------------------------------

    async def search_messages(
        self, terms: list[str], ranges: list[tuple[int, int, int]], now: int, limit: int,
        before: tuple[int, int, int] | None = None,
    ) -> list[tuple[int, int, bytes]]:
        """(chat id, seq, record) of up to `limit` log entries (text messages and captions)
        whose text holds every one of `terms` (lower-case words of letters and digits) as a
        word or the start of one; within the (chat, first seq, last seq) `ranges`; not
        expired at `now`; the newest first (ts, then chat, then seq, descending), strictly
        after the `before` cursor (ts, chat, seq) in that order. LMDB: an SQLite FTS5 index
        (node/storage/fts.py); PostgreSQL: its own full-text search."""
        raise NotImplementedError

    def search_ready(self) -> bool:
        """False while the engine is still building its search index (results may miss
        older messages meanwhile)."""
        raise NotImplementedError

    # -- node state and plugin data ------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        raise NotImplementedError

    async def kv_get(self, namespace: str, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The values of those keys that exist in a plugin's namespace."""
        raise NotImplementedError

    async def kv_scan(
        self, namespace: str, start: bytes, end: bytes | None, limit: int, *, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) with start <= key < end (None: to the end of the namespace), at
        most `limit`, in key order (or reverse)."""
        raise NotImplementedError

    async def kv_count(self, namespace: str) -> int:
        raise NotImplementedError

    # -- copying and verification ----------------------------------------------

    def export(self, table: str, page: int = 1000) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """Every row of an `EXPORT_TABLES` table, in a stable order, in pages:

        meta (key, value) · users (user_id, record) · tokens (hash, record) · chats
        (chat_id, record, last_seq) · members (chat_id, user_id, record) · directs (low,
        high, chat_id) · messages (chat_id, seq, message_id, raw, MessageMeta) · dedupe
        (user_id, client_msg_id, DedupeAck) · blocks (blocker, blocked) · kv (namespace,
        key, value).
        """
        raise NotImplementedError

    async def import_rows(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Write exported rows, skipping rows whose key is already stored (so an
        interrupted copy can be run again). Used only by `chatnode storage copy`."""
        raise NotImplementedError


__all__ = [
    "EXPORT_TABLES",
    "TAIL",
    "DedupeAck",
    "EngineInfo",
    "LoadedChat",
    "Op",
    "Storage",
    "StorageConflict",
    "StorageError",
    "StorageUnavailable",
    "StoredMessage",
    "WriteBatch",
]
