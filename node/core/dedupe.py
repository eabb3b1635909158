"""Retention of idempotency records: forget a `client_msg_id` after `storage.dedupe_retention`.

Every send leaves a `dedupe` record (so a retry gets the original ack) and, in the same
write batch, an entry in `dedupe_by_time` keyed by the send's time. The sweeper reads
the due entries from the front of that index, a chunk at a time, and deletes them
through the sequencer like any other operation: no scan of `dedupe`, no long
transaction, and a send in the same batch sees the deletion.

Data dirs from schema version 1 have records without index entries. The migration
only leaves a marker (`meta` key `dedupe_backfill`); the sweeper then walks `dedupe`
in chunks from that marker, purging records already past the window and indexing the
rest, and removes the marker when done. It resumes where it stopped after a restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from ..storage import DEDUPE_BACKFILL, Storage, WriteBatch
from ..storage.keys import from_u64, u64
from .chats import Awaitable, Chats, Effect, now_ms
from .errors import ChatError

if TYPE_CHECKING:
    from ..app import Node

log = logging.getLogger(__name__)

#: Records handled per operation: small enough that a sequencer batch stays short.
CHUNK = 1000


def record_ts(value: bytes) -> int:
    """The send time (ms) inside a dedupe value: chat|seq|message_id|ts."""
    return from_u64(value[24:32])


@attrs.define(eq=False)
class PurgeDedupe(Awaitable):
    """Delete due dedupe records: (ts, dedupe key) each, read from `dedupe_by_time`."""

    entries: list[tuple[int, bytes]] = attrs.Factory(list)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        purged = 0
        for ts, key in self.entries:
            batch.delete("dedupe_by_time", u64(ts) + key)
            value = chats.dedupe_value(key)
            if value is None or record_ts(value) != ts:
                continue  # already gone, or a newer send reused the id after a purge
            chats.forget_dedupe(batch, key, ts)
            purged += 1
        return _counted(chats, self, purged)


@attrs.define(eq=False)
class BackfillDedupe(Awaitable):
    """Index (or purge, if already due) a chunk of records written before `dedupe_by_time`.

    `resume_at` is the next key to visit, or None when this chunk was the last.
    """

    keys: list[bytes] = attrs.Factory(list)
    resume_at: bytes | None = None
    retention_ms: int = 0

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        purged = 0
        for key in self.keys:
            value = chats.dedupe_value(key)
            if value is None:
                continue
            ts = record_ts(value)
            if ts <= now - self.retention_ms:
                chats.forget_dedupe(batch, key, ts)
                purged += 1
            else:
                batch.put("dedupe_by_time", u64(ts) + key, b"")
        if self.resume_at is None:
            batch.delete("meta", DEDUPE_BACKFILL)
        else:
            batch.put("meta", DEDUPE_BACKFILL, self.resume_at)
        return _counted(chats, self, purged)


def _counted(chats: Chats, op: Awaitable, purged: int) -> Effect:
    """Count purges only once they are durable."""

    def effect() -> None:
        chats.dedupe_purged += purged
        op.resolve(purged)

    return effect


async def sweep_dedupe(node: Node, interval: float = 0.0) -> None:
    """Purge dedupe records older than the retention window, in chunks, until shutdown."""
    interval = interval or node.config.storage.sweep_interval
    retention_ms = int(node.config.storage.dedupe_retention * 1000)
    while not node.shutdown_requested.is_set():
        try:
            more = await sweep_dedupe_once(node, retention_ms)
        except ChatError:
            more = False  # shutting down, or storage trouble the writer already logged
        if not more:  # a backlog goes on at once; each chunk waits for its own commit
            with trio.move_on_after(interval):
                await node.shutdown_requested.wait()


async def sweep_dedupe_once(node: Node, retention_ms: int) -> bool:
    """One chunk of work: the version-1 backfill while it lasts, then due records.

    Returns whether a full chunk was handled (there may be more waiting).
    """
    storage = node.storage
    marker = storage.get("meta", DEDUPE_BACKFILL)
    if marker is not None:
        keys = await storage.read_in_thread(_keys_from, storage, marker, CHUNK)
        resume_at = keys[-1] + b"\x00" if len(keys) == CHUNK else None
        await node.chats.run(BackfillDedupe(keys=keys, resume_at=resume_at, retention_ms=retention_ms))
        return resume_at is not None
    due = await storage.read_in_thread(_due_dedupe, storage, now_ms() - retention_ms, CHUNK)
    if due:
        await node.chats.run(PurgeDedupe(entries=due))
    return len(due) == CHUNK


def _keys_from(txn, storage: Storage, start: bytes, limit: int) -> list[bytes]:
    """Up to `limit` dedupe keys >= start (keys begin with a user id < 2**63, so < b"\\xff")."""
    return [bytes(key) for key, _ in storage.scan(txn, "dedupe", start, b"\xff", limit=limit)]


def _due_dedupe(txn, storage: Storage, cutoff: int, limit: int) -> list[tuple[int, bytes]]:
    """The oldest index entries with ts <= cutoff, as (ts, dedupe key)."""
    if cutoff < 0:
        return []
    out = []
    for key, _ in storage.scan(txn, "dedupe_by_time", u64(0), u64(cutoff + 1), limit=limit):
        out.append((from_u64(key[:8]), bytes(key[8:])))
    return out
