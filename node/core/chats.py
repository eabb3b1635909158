"""Chats: the sequencer that owns every chat's log, members and delivery state.

All changes to chats go through one task, the sequencer, as *operations*
(node/core/operations.py, node/core/groups.py). It drains the operations that are
waiting, applies each to the in-memory state (validating first, so a refused operation
changes nothing), writes the results as one batch through the storage writer (group
commit), and only after that commit runs each operation's effects in order: acks to
senders, fan-out to connected devices, plugin notifications. One transaction and one
thread hop per batch, never per message; seq numbers have a single owner, so every
device sees the same gap-free order per chat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ..storage import Storage, StorageError, WriteBatch
from ..storage.keys import from_pair, from_u64, pair, prefix_end, u64
from .errors import ChatError
from .snowflake import SnowflakeGenerator
from .state import PREVIEW_KINDS, ChatState, load_chat

if TYPE_CHECKING:
    from ..plugin_manager import Plugins
    from .accounts import Accounts
    from .blocks import Blocks
    from .hub import Hub
    from .session import Session

log = logging.getLogger(__name__)

Effect = Callable[[], None]

#: Message kinds that count as content (unread counts, push, chat-list previews).
CONTENT_KINDS = frozenset({"text", "image", "audio", "video", "file"})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message_event(raw: bytes) -> bytes:
    """The wire event for a stored log record, without decoding it."""
    return b'{"type":"message",' + raw[1:]


def is_expired(record: dict[str, Any], now: int) -> bool:
    expires = record.get("expires_at")
    return bool(expires) and expires <= now


class Operation:
    """A change to chat state, applied by the sequencer.

    `apply` validates, then mutates in-memory state and appends writes to the batch; it
    raises ChatError *before* changing anything when the operation is refused. It
    returns the effect to run once the batch is durable (or None). `reject` tells the
    requester that the operation failed.
    """

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        raise NotImplementedError

    def reject(self, error: ChatError) -> None:
        raise NotImplementedError


@attrs.define(eq=False)
class Awaitable(Operation):
    """An operation whose requester awaits its result (REST handlers, plugins)."""

    _done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _result: Any = attrs.field(default=None, init=False)
    _error: ChatError | None = attrs.field(default=None, init=False)

    def resolve(self, result: Any) -> None:
        self._result = result
        self._done.set()

    def reject(self, error: ChatError) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


class Chats:
    def __init__(
        self,
        storage: Storage,
        ids: SnowflakeGenerator,
        hub: Hub,
        plugins: Plugins,
        users: Accounts,
        blocks: Blocks,
        *,
        max_batch: int,
        max_group_members: int,
        edit_window: float,
        queue_size: int = 4096,
    ) -> None:
        self.storage = storage
        self.ids = ids
        self.hub = hub
        self.plugins = plugins
        self.users = users
        self.blocks = blocks
        self.max_group_members = max_group_members
        self.edit_window_ms = int(edit_window * 1000)
        self._max_batch = max_batch
        self._chats: dict[int, ChatState] = {}
        self._user_chats: dict[int, set[int]] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._dirty_chats: set[int] = set()
        # Writes of the batch being applied, visible to later operations of the same batch.
        self._pending_dedupe: dict[bytes, bytes] = {}
        self._pending_log: dict[tuple[int, int], bytes] = {}
        self._pending_ids: dict[int, tuple[int, int]] = {}
        self._appended: list[tuple[ChatState, dict[str, Any]]] = []
        self.pending_direct: dict[tuple[int, int], int] = {}
        self._send, self._recv = trio.open_memory_channel[Operation](queue_size)
        self.applied = 0
        self.dedupe_purged = 0  # idempotency records dropped after storage.dedupe_retention

    # -- the sequencer ---------------------------------------------------------------

    async def submit(self, op: Operation) -> None:
        """Queue an operation. Backpressure: waits while the sequencer's queue is full.

        Does not yield when there is room, so all the events of one frame land in the
        same batch (one commit, one ack frame) instead of trickling in one by one.
        """
        try:
            self._send.send_nowait(op)
        except trio.WouldBlock:
            await self._send.send(op)

    async def run(self, op: Awaitable) -> Any:
        """Queue an operation and wait for its result (raises its ChatError)."""
        try:
            await self.submit(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ChatError("unavailable", "the node is shutting down") from None
        return await op.wait()

    async def close(self) -> None:
        """Stop taking operations; `serve` finishes what is queued and returns."""
        await self._send.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._recv:
            async for first in self._recv:
                ops = [first]
                while len(ops) < self._max_batch:
                    try:
                        ops.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._process(ops)

    async def _process(self, ops: list[Operation]) -> None:
        batch = WriteBatch()
        applied: list[tuple[Operation, Effect | None]] = []
        stale = False
        now = now_ms()
        for op in ops:
            mark = len(batch.ops)
            try:
                effect = op.apply(self, batch, now)
            except ChatError as exc:
                del batch.ops[mark:]
                op.reject(exc)
                continue
            except Exception:
                log.exception("operation %r failed", op)
                del batch.ops[mark:]
                stale = True  # memory may be half-changed: reload from LMDB after this batch
                op.reject(ChatError("internal"))
                continue
            applied.append((op, effect))
        self._flush_dirty(batch)
        appended, self._appended = self._appended, []
        try:
            await self.storage.write(batch)
        except StorageError as exc:
            self._forget_all()
            for op, _ in applied:
                op.reject(ChatError("unavailable", str(exc)))
            return
        finally:
            self._pending_dedupe.clear()
            self._pending_log.clear()
            self._pending_ids.clear()
        for chat, record in appended:  # durable now: readers and resync may see them
            chat.committed_seq = record["seq"]
            if record["kind"] in PREVIEW_KINDS:
                chat.last_message = record
        if stale:
            self._forget_all()
        self.applied += len(applied)
        for op, effect in applied:
            if effect is not None:
                try:
                    effect()
                except Exception:
                    log.exception("effect of %r failed", op)
        for chat, record in appended:
            self.plugins.notify("on_message_stored", chat_id=chat.id, message=record)

    def _forget_all(self) -> None:
        """Drop cached state so it is reloaded from what is durably stored."""
        self._chats.clear()
        self._user_chats.clear()
        self._dirty.clear()
        self._dirty_chats.clear()
        self._appended.clear()
        self.pending_direct.clear()

    # -- helpers used by operations (sequencer only) ---------------------------------

    def require_chat(self, chat_id: int, user_id: int) -> tuple[ChatState, dict[str, Any]]:
        """The chat and the user's member record; `not_member` unless a current member."""
        chat = self.get(chat_id)
        member = chat.member(user_id) if chat else None
        if chat is None or member is None:
            raise ChatError("not_member")
        return chat, member

    def append(
        self,
        chat: ChatState,
        batch: WriteBatch,
        now: int,
        sender: int,
        content: dict[str, Any],
        *,
        client_msg_id: str | None = None,
    ) -> tuple[dict[str, Any], bytes]:
        """Add one entry to a chat's log; returns the record and its encoding.

        `sender` 0 means the node itself (system messages).
        """
        seq = chat.last_seq + 1
        message_id = self.ids.next_id()
        record: dict[str, Any] = {
            "id": str(message_id),
            "chat": str(chat.id),
            "seq": seq,
            "from": str(sender) if sender else None,
            "ts": now,
        }
        record.update(content)
        if client_msg_id is not None:
            record["client_msg_id"] = client_msg_id
        raw = orjson.dumps(record)
        batch.put("log", pair(chat.id, seq), raw)
        batch.put("msgids", u64(message_id), pair(chat.id, seq))
        expires = record.get("expires_at")
        if expires:
            batch.put("expiry", u64(expires) + pair(chat.id, seq), u64(message_id))
        self._pending_log[(chat.id, seq)] = raw
        self._pending_ids[message_id] = (chat.id, seq)
        chat.last_seq = seq
        self._dirty_chats.add(chat.id)
        self._appended.append((chat, record))
        if sender:
            chat.recent.append((seq, sender))
            if sender in chat.members:  # your own message counts as delivered and read
                self.advance_cursor(chat, sender, "delivered", seq)
                self.advance_cursor(chat, sender, "read", seq)
        if record["kind"] in CONTENT_KINDS:
            for uid in chat.active_ids():
                if chat.members[uid].get("hidden"):
                    chat.members[uid]["hidden"] = False  # a new message brings a hidden chat back
                    self.mark_dirty(chat.id, uid)
        return record, raw

    def rewrite(self, chat: ChatState, batch: WriteBatch, record: dict[str, Any]) -> None:
        """Replace a stored log entry (edits, deletions, purges keep the seq)."""
        raw = orjson.dumps(record)
        batch.put("log", pair(chat.id, record["seq"]), raw)
        self._pending_log[(chat.id, record["seq"])] = raw
        if chat.last_message and chat.last_message["seq"] == record["seq"]:
            chat.last_message = record

    def find_message(self, chat: ChatState, message_id: int) -> dict[str, Any] | None:
        """A message of this chat by id (including this batch's uncommitted ones)."""
        where = self._pending_ids.get(message_id)
        if where is None:
            raw = self.storage.get("msgids", u64(message_id))
            if raw is None:
                return None
            where = from_pair(raw)
        if where[0] != chat.id:
            return None
        raw = self._pending_log.get(where) or self.storage.get("log", pair(*where))
        return orjson.loads(raw) if raw is not None else None

    def create_chat(self, batch: WriteBatch, now: int, *, kind: str, creator: int, **fields: Any) -> ChatState:
        chat_id = self.ids.next_id()
        record = {"id": str(chat_id), "kind": kind, "created": now, "created_by": str(creator), **fields}
        batch.put("chats", u64(chat_id), orjson.dumps(record))
        chat = ChatState(chat_id, record, {}, 0, None)
        self._chats[chat_id] = chat
        return chat

    def save_chat_record(self, chat: ChatState, batch: WriteBatch) -> None:
        batch.put("chats", u64(chat.id), orjson.dumps(chat.record))

    def add_member(self, chat: ChatState, user_id: int, now: int, *, role: str, batch: WriteBatch) -> dict:
        """Make `user_id` a member from the next seq on (they see the entry that adds them)."""
        record = {"role": role, "from_seq": chat.last_seq + 1, "delivered": chat.last_seq,
                  "read": chat.last_seq, "joined": now}
        chat.members[user_id] = record
        chat.members_changed()
        batch.put("user_chats", pair(user_id, chat.id), b"")
        self.mark_dirty(chat.id, user_id)
        known = self._user_chats.get(user_id)
        if known is not None:
            known.add(chat.id)
        return record

    def mark_dirty(self, chat_id: int, user_id: int) -> None:
        self._dirty.add((chat_id, user_id))

    def _flush_dirty(self, batch: WriteBatch) -> None:
        for chat_id, user_id in self._dirty:
            chat = self._chats.get(chat_id)
            if chat is not None and user_id in chat.members:
                batch.put("members", pair(chat_id, user_id), orjson.dumps(chat.members[user_id]))
        for chat_id in self._dirty_chats:  # a chat's last seq survives purges of its newest entries
            chat = self._chats.get(chat_id)
            if chat is not None:
                batch.put("chat_seq", u64(chat_id), u64(chat.last_seq))
        self._dirty.clear()
        self._dirty_chats.clear()

    def find_duplicate(self, dedupe_key: bytes) -> dict[str, Any] | None:
        """What an earlier send with this client_msg_id produced: chat, seq, id, ts."""
        raw = self.dedupe_value(dedupe_key)
        if raw is None:
            return None
        chat_id, seq = from_pair(raw[:16])
        message_id, ts = from_pair(raw[16:32])
        return {"chat": str(chat_id), "seq": seq, "id": str(message_id), "ts": ts}

    def dedupe_value(self, dedupe_key: bytes) -> bytes | None:
        """The stored dedupe value as this batch leaves it (b"" in pending = purged in this batch)."""
        if dedupe_key in self._pending_dedupe:
            return self._pending_dedupe[dedupe_key] or None
        return self.storage.get("dedupe", dedupe_key)

    def remember_dedupe(self, batch: WriteBatch, dedupe_key: bytes, record: dict[str, Any]) -> None:
        """Record a send's ack, indexed by time so the purge finds it without a scan."""
        value = pair(int(record["chat"]), record["seq"]) + pair(int(record["id"]), record["ts"])
        batch.put("dedupe", dedupe_key, value)
        batch.put("dedupe_by_time", u64(record["ts"]) + dedupe_key, b"")
        self._pending_dedupe[dedupe_key] = value

    def forget_dedupe(self, batch: WriteBatch, dedupe_key: bytes, ts: int) -> None:
        """Drop a dedupe record and its index entry; later sends of this batch see it gone."""
        batch.delete("dedupe", dedupe_key)
        batch.delete("dedupe_by_time", u64(ts) + dedupe_key)
        self._pending_dedupe[dedupe_key] = b""

    def direct_chat_id(self, low: int, high: int) -> int | None:
        pending = self.pending_direct.get((low, high))
        if pending is not None:
            return pending
        raw = self.storage.get("direct", pair(low, high))
        return None if raw is None else from_u64(raw)

    # -- effects (after commit) ------------------------------------------------------

    def fan_out(self, chat: ChatState, record: dict[str, Any], raw: bytes, *, exclude: Session | None = None) -> list[int]:
        """Offer a new log entry to every connected device of every member who may see it.

        Never waits: a device whose queue is full is disconnected and resyncs later.
        Returns the members (other than the sender) who had no device online.
        """
        event = message_event(raw)
        seq = record["seq"]
        offline = []
        for uid, member in chat.members.items():
            until = member.get("until_seq")
            if seq < member["from_seq"] or (until is not None and seq > until):
                continue
            sessions = self.hub.sessions_of(uid)
            if not sessions and str(uid) != record["from"]:
                offline.append(uid)
            floor = member["from_seq"] - 1
            for session in sessions:
                if session is not exclude:
                    try:
                        session.deliver(chat.id, seq, event, floor)
                    except Exception:  # one broken session must not cost the others their copy
                        log.exception("delivery to a session failed")
        if offline and record["kind"] in CONTENT_KINDS:
            self.plugins.notify("on_recipients_offline", chat_id=chat.id, message=record, user_ids=offline)
        return offline

    def send_to_members(self, chat: ChatState, event: bytes, user_ids: set[int] | None = None) -> None:
        """An ephemeral event (not in the log) to the devices of current members."""
        for uid in chat.active_ids() if user_ids is None else user_ids:
            for session in self.hub.sessions_of(uid):
                session.send_event(event)

    def advance_cursor(self, chat: ChatState, user_id: int, field: str, seq: int) -> tuple[int, int] | None:
        """Move a member's `delivered`/`read` cursor up to `seq` (sequencer only).

        Returns (old, new), or None if it did not move. Keeps the group watermark current.
        """
        member = chat.members[user_id]
        old = member[field]
        if seq <= old:
            return None
        # Built (on first use) before the cursor moves, so the move is counted once.
        mark = chat.watermark(field) if chat.kind == "group" and member.get("until_seq") is None else None
        member[field] = seq
        self.mark_dirty(chat.id, user_id)
        if mark is not None:
            mark.move(old, seq)
        return old, seq

    def announce_delivered(self, chat: ChatState, user_id: int, old: int, new: int) -> None:
        """Tell senders that their messages were delivered.

        1-1: the other member learns that `user_id` has everything up to `new`. Groups:
        one event per rise of the group's watermark, `"all": true`, to the senders of the
        messages every member now has (per-member detail: the receipts endpoint), not
        one event per member and message.
        """
        if chat.kind == "direct":
            authors = self.authors_between(chat, user_id, old, new)
            event = {"type": "delivered", "chat": str(chat.id), "user": str(user_id), "seq": new}
        else:
            floor = chat.watermark("delivered").floor
            before = chat.announced_delivered
            if floor <= before:
                return  # already told (several acks of one batch raise it only once)
            chat.announced_delivered = floor
            authors = self.authors_between(chat, 0, before, floor)
            event = {"type": "delivered", "chat": str(chat.id), "all": True, "seq": floor}
        if authors:
            self.send_to_members(chat, orjson.dumps(event), authors)

    def authors_between(self, chat: ChatState, user_id: int, old: int, new: int) -> set[int]:
        if chat.kind == "direct":
            return {uid for uid in chat.members if uid != user_id}
        authors = set()
        for seq, sender in reversed(chat.recent):  # newest first; stop below the range
            if seq <= old:
                break
            if seq <= new and sender != user_id:
                authors.add(sender)
        return authors

    # -- reads (event loop) ----------------------------------------------------------

    def get(self, chat_id: int) -> ChatState | None:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = load_chat(self.storage, chat_id)
            if chat is not None:
                self._chats[chat_id] = chat
        return chat

    def chat_ids_of(self, user_id: int) -> set[int]:
        """Ids of every chat the user is or was a member of."""
        known = self._user_chats.get(user_id)
        if known is None:
            known = set()
            prefix = u64(user_id)
            with self.storage.read() as txn:
                for key, _ in self.storage.scan(txn, "user_chats", prefix, prefix_end(prefix)):
                    known.add(from_pair(key)[1])
            self._user_chats[user_id] = known
        return known

    def shares_chat(self, a: int, b: int) -> bool:
        """Whether two users are both current members of some chat."""
        ids_a, ids_b = self.chat_ids_of(a), self.chat_ids_of(b)
        for chat_id in ids_a & ids_b:
            chat = self.get(chat_id)
            if chat and chat.member(a) is not None and chat.member(b) is not None:
                return True
        return False

    def contacts_of(self, user_id: int) -> set[int]:
        """Everyone who currently shares a chat with `user_id`."""
        out: set[int] = set()
        for chat_id in self.chat_ids_of(user_id):
            chat = self.get(chat_id)
            if chat and chat.member(user_id) is not None:
                out.update(chat.active_ids())
        out.discard(user_id)
        return out

    async def history(self, user_id: int, chat_id: int, before: int | None, limit: int) -> list[dict]:
        """Up to `limit` visible messages with seq < before, oldest first."""
        chat = self.get(chat_id)
        visible = chat.visible_range(user_id) if chat else None
        if chat is None or visible is None:
            raise ChatError("not_member")
        first, last = visible
        end = last + 1 if before is None else min(before, last + 1)
        if end <= first:
            return []
        rows = await self.storage.read_in_thread(_read_log, self.storage, chat_id, first, end, limit, True)
        now = now_ms()
        return [m for m in (orjson.loads(raw) for _, raw in reversed(rows)) if not is_expired(m, now)]

    async def read_range(self, chat_id: int, first: int, last: int, limit: int) -> list[tuple[int, bytes]]:
        """Raw log records with first <= seq <= last, oldest first (a worker-thread scan)."""
        rows = await self.storage.read_in_thread(_read_log, self.storage, chat_id, first, last + 1, limit, False)
        return [(from_pair(key)[1], raw) for key, raw in rows]

    async def unread_counts(self, user_id: int, chats: list[ChatState], cap: int = 999) -> dict[int, int]:
        """Content messages from others after the user's read cursor, per chat (capped)."""
        ranges = []
        for chat in chats:
            visible = chat.visible_range(user_id)
            if visible is None:
                continue
            start = max(visible[0], chat.members[user_id]["read"] + 1)
            if start <= visible[1]:
                ranges.append((chat.id, start, visible[1]))
        if not ranges:
            return {}
        return await self.storage.read_in_thread(_count_unread, self.storage, ranges, str(user_id), cap, now_ms())


def _read_log(txn, storage: Storage, chat_id: int, first: int, end: int, limit: int, reverse: bool):
    return list(storage.scan(txn, "log", pair(chat_id, first), pair(chat_id, end), reverse=reverse, limit=limit))


def _count_unread(txn, storage: Storage, ranges, user: str, cap: int, now: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for chat_id, first, last in ranges:
        n = 0
        for _, raw in storage.scan(txn, "log", pair(chat_id, first), pair(chat_id, last + 1)):
            m = orjson.loads(raw)
            if m.get("from") != user and m.get("kind") in CONTENT_KINDS and not is_expired(m, now):
                n += 1
                if n >= cap:
                    break
        counts[chat_id] = n
    return counts
