"""Retention of idempotency records: forget a `client_msg_id` after `storage.dedupe_retention`.

Every send leaves a dedupe record (so a retry gets the original ack). The engine keeps
them in time order; the sweeper reads the due ones from the front, a chunk at a time,
and deletes them through the sequencer like any other operation: no long transaction,
and a send in the same batch sees the deletion.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from ..storage import WriteBatch
from .chats import Awaitable, Chats, Effect, now_ms
from .errors import ChatError

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

#: Records handled per operation: small enough that a sequencer batch stays short.
CHUNK = 1000


@attrs.define(eq=False)
class PurgeDedupe(Awaitable):
    """Delete due dedupe records: (user id, client_msg_id, ts) each. A record is deleted
    only if it is still the one sent at `ts` (the engine checks)."""

    entries: list[tuple[int, str, int]] = attrs.Factory(list)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        for user_id, client_msg_id, ts in self.entries:
            chats.forget_dedupe(batch, user_id, client_msg_id, ts)
        purged = len(self.entries)

        def effect() -> None:  # counted only once durable
            chats.dedupe_purged += purged
            self.resolve(purged)

        return effect


async def sweep_dedupe(node: Services, interval: float = 0.0) -> None:
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


async def sweep_dedupe_once(node: Services, retention_ms: int) -> bool:
    """One chunk of due records. Returns whether a full chunk was handled (maybe more).
    In a cluster only one node sweeps (`Routing.runs_singletons`)."""
    if not node.routing.runs_singletons():
        return False
    due = await node.storage.due_dedupe(now_ms() - retention_ms, CHUNK)
    if due:
        await node.chats.run(PurgeDedupe(entries=due))
    return len(due) == CHUNK
