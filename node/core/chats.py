"""Chats: the sequencer that owns every chat's log, members and delivery state.

All changes to chats go through one task, the sequencer, as *operations* (send a
message, open a direct chat, mark delivered, hide ...). It drains the operations that
are waiting, applies each to the in-memory state (validating first, so a rejected
operation changes nothing), writes the results as one batch through the storage writer
(group commit), and only after that commit runs each operation's effects in order:
acks to senders, fan-out to connected devices, notifications. One transaction and one
thread hop per batch, never per message; seq numbers are assigned by a single owner, so
every device sees the same gap-free order per chat.
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
from .state import ChatState, load_chat

if TYPE_CHECKING:
    from .hub import Hub
    from .session import Session

log = logging.getLogger(__name__)

Effect = Callable[[], None]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message_event(raw: bytes) -> bytes:
    """The wire event for a stored log record, without decoding it."""
    return b'{"type":"message",' + raw[1:]


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
    """An operation whose requester awaits its result (REST handlers)."""

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


# -- operations ---------------------------------------------------------------------


@attrs.define(eq=False)
class SendMessage(Operation):
    """A content message from a connected device (WebSocket `send`)."""

    session: Session
    chat_id: int
    client_msg_id: str
    content: dict[str, Any]  # kind, text, ... already validated by the protocol layer

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        sender = self.session.user_id
        dedupe_key = u64(sender) + self.client_msg_id.encode()
        previous = chats.find_duplicate(dedupe_key)
        if previous is not None:

            def ack_again() -> None:
                self.session.finish_send()
                self.session.send_ack(self.client_msg_id, previous, duplicate=True)

            return ack_again
        chat = chats.require_member(self.chat_id, sender)
        record, raw = chats.append(chat, batch, now, sender, self.content, client_msg_id=self.client_msg_id)
        chats.remember_dedupe(batch, dedupe_key, chat.id, record["seq"])

        def effect() -> None:
            self.session.finish_send()
            pending = chats.fan_out(chat, record["seq"], raw, exclude_session=self.session)
            self.session.send_ack(self.client_msg_id, record, pending=pending)

        return effect

    def reject(self, error: ChatError) -> None:
        self.session.finish_send()
        self.session.send_error(error, ref=self.client_msg_id)


@attrs.define(eq=False)
class MarkDelivered(Operation):
    """A device acknowledged receipt of everything up to `seq` in a chat (cumulative)."""

    user_id: int
    chat_id: int
    seq: int

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat = chats.get(self.chat_id)
        member = chat.member(self.user_id) if chat else None
        if chat is None or member is None:
            return None  # not an error worth a frame: acks race with leaving chats
        seq = min(self.seq, chat.committed_seq)
        old = member["delivered"]
        if seq <= old:
            return None
        member["delivered"] = seq
        chats.mark_dirty(chat.id, self.user_id)
        return lambda: chats.announce_cursor(chat, self.user_id, "delivered", old, seq)

    def reject(self, error: ChatError) -> None:
        pass


@attrs.define(eq=False)
class OpenDirect(Awaitable):
    """Get or create the 1-1 chat between two users."""

    user_id: int = 0
    peer_id: int = 0

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        if self.user_id == self.peer_id:
            raise ChatError("bad_request", "you cannot open a chat with yourself")
        low, high = sorted((self.user_id, self.peer_id))
        existing = chats.direct_chat_id(low, high)
        if existing is not None:
            chat = chats.get(existing)
            member = chat.members[self.user_id]
            if member.get("hidden"):
                member["hidden"] = False
                chats.mark_dirty(chat.id, self.user_id)
            return lambda: self.resolve(chat)
        chat = chats.create_chat(batch, now, kind="direct", creator=self.user_id, members=[low, high])
        batch.put("direct", pair(low, high), u64(chat.id))
        chats.pending_direct[(low, high)] = chat.id

        def effect() -> None:
            chats.pending_direct.pop((low, high), None)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class SetHidden(Awaitable):
    """Hide a chat from (or show it again in) the user's chat list."""

    user_id: int = 0
    chat_id: int = 0
    hidden: bool = True

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat = chats.get(self.chat_id)
        record = chat.members.get(self.user_id) if chat else None
        if chat is None or record is None:
            raise ChatError("not_member")
        if bool(record.get("hidden")) != self.hidden:
            record["hidden"] = self.hidden
            chats.mark_dirty(chat.id, self.user_id)
        return lambda: self.resolve(None)


# -- the service --------------------------------------------------------------------


class Chats:
    def __init__(
        self, storage: Storage, ids: SnowflakeGenerator, hub: Hub, *, max_batch: int, queue_size: int = 4096
    ) -> None:
        self.storage = storage
        self.ids = ids
        self.hub = hub
        self._max_batch = max_batch
        self._chats: dict[int, ChatState] = {}
        self._user_chats: dict[int, set[int]] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._pending_dedupe: dict[bytes, tuple[int, int]] = {}
        self._appended: list[tuple[ChatState, dict[str, Any]]] = []  # log entries of this batch
        self.pending_direct: dict[tuple[int, int], int] = {}
        self._send, self._recv = trio.open_memory_channel[Operation](queue_size)
        self.applied = 0

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
        await self._send.send(op)
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
        try:
            await self.storage.write(batch)
        except StorageError as exc:
            self._forget_all()
            for op, _ in applied:
                op.reject(ChatError("unavailable", str(exc)))
            return
        finally:
            self._pending_dedupe.clear()
            appended, self._appended = self._appended, []
        for chat, record in appended:  # durable now: readers and resync may see them
            chat.committed_seq = record["seq"]
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

    def _forget_all(self) -> None:
        """Drop cached state so it is reloaded from what is durably stored."""
        self._chats.clear()
        self._user_chats.clear()
        self._dirty.clear()
        self.pending_direct.clear()

    # -- helpers used by operations (sequencer only) ---------------------------------

    def require_member(self, chat_id: int, user_id: int) -> ChatState:
        chat = self.get(chat_id)
        if chat is None or chat.member(user_id) is None:
            raise ChatError("not_member")
        return chat

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
        """Add one entry to a chat's log; returns the record and its encoding."""
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
        chat.last_seq = seq
        self._appended.append((chat, record))
        if sender:
            chat.recent.append((seq, sender))
            member = chat.members.get(sender)
            if member is not None:  # your own message counts as delivered and read
                member["delivered"] = member["read"] = seq
                self.mark_dirty(chat.id, sender)
        for uid in chat.active_ids():
            if chat.members[uid].get("hidden"):
                chat.members[uid]["hidden"] = False  # a new message brings a hidden chat back
                self.mark_dirty(chat.id, uid)
        return record, raw

    def create_chat(
        self, batch: WriteBatch, now: int, *, kind: str, creator: int, members: list[int], **fields: Any
    ) -> ChatState:
        chat_id = self.ids.next_id()
        record = {"id": str(chat_id), "kind": kind, "created": now, "created_by": str(creator), **fields}
        batch.put("chats", u64(chat_id), orjson.dumps(record))
        chat = ChatState(chat_id, record, {}, 0, None)
        self._chats[chat_id] = chat
        for uid in members:
            self.add_member(chat, batch, uid, now, role="member")
        return chat

    def add_member(self, chat: ChatState, batch: WriteBatch, user_id: int, now: int, *, role: str) -> dict:
        record = {"role": role, "from_seq": chat.last_seq + 1, "delivered": chat.last_seq,
                  "read": chat.last_seq, "joined": now}
        chat.members[user_id] = record
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
        self._dirty.clear()

    def find_duplicate(self, dedupe_key: bytes) -> dict[str, Any] | None:
        """The stored record a client_msg_id already produced, if any."""
        where = self._pending_dedupe.get(dedupe_key)
        if where is None:
            raw = self.storage.get("dedupe", dedupe_key)
            if raw is None:
                return None
            where = from_pair(raw)
        chat = self.get(where[0])
        if chat is not None and chat.last_message and chat.last_message["seq"] == where[1]:
            return chat.last_message
        raw = self.storage.get("log", pair(*where))
        return orjson.loads(raw) if raw is not None else None

    def remember_dedupe(self, batch: WriteBatch, dedupe_key: bytes, chat_id: int, seq: int) -> None:
        batch.put("dedupe", dedupe_key, pair(chat_id, seq))
        self._pending_dedupe[dedupe_key] = (chat_id, seq)  # until this batch is committed

    def direct_chat_id(self, low: int, high: int) -> int | None:
        pending = self.pending_direct.get((low, high))
        if pending is not None:
            return pending
        raw = self.storage.get("direct", pair(low, high))
        return None if raw is None else from_u64(raw)

    # -- effects (after commit) ------------------------------------------------------

    def fan_out(self, chat: ChatState, seq: int, raw: bytes, *, exclude_session: Session | None = None) -> bool:
        """Offer a new log entry to every connected device of every current member.

        Never waits: a device whose queue is full is disconnected and resyncs later.
        Returns True if some other member had no device online (the message is pending).
        """
        event = message_event(raw)
        pending = False
        for uid in chat.active_ids():
            floor = chat.members[uid]["from_seq"] - 1
            sessions = self.hub.sessions_of(uid)
            if not sessions and exclude_session is not None and uid != exclude_session.user_id:
                pending = True
            for session in sessions:
                if session is not exclude_session:
                    session.deliver(chat.id, seq, event, floor)
        return pending

    def announce_cursor(self, chat: ChatState, user_id: int, kind: str, old: int, new: int) -> None:
        """Tell the authors of messages in (old, new] that `user_id` has delivered/read them.

        In a 1-1 chat that is the other member; in a group, the senders of the recent
        messages in the range. For reads, the reader's own other devices learn it too.
        """
        if chat.kind == "direct":
            authors = {uid for uid in chat.members if uid != user_id}
        else:
            authors = set()
            for seq, sender in reversed(chat.recent):  # newest first; stop below the range
                if seq <= old:
                    break
                if seq <= new and sender != user_id:
                    authors.add(sender)
        if kind == "read":
            authors.add(user_id)
        if not authors:
            return
        event = orjson.dumps({"type": kind, "chat": str(chat.id), "user": str(user_id), "seq": new})
        for uid in authors:
            for session in self.hub.sessions_of(uid):
                session.send_event(event)

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
        messages = [orjson.loads(raw) for _, raw in reversed(rows)]
        now = now_ms()
        messages = [m for m in messages if not (m.get("expires_at") and m["expires_at"] <= now)]
        if chat.kind == "direct":
            peers = [m for uid, m in chat.members.items() if uid != user_id]
            for m in messages:
                if m.get("from") == str(user_id) and peers:
                    m["status"] = _status(m["seq"], peers[0])
        return messages

    async def read_range(self, chat_id: int, first: int, last: int, limit: int) -> list[tuple[int, bytes]]:
        """Raw log records with first <= seq <= last, oldest first (a worker-thread scan)."""
        rows = await self.storage.read_in_thread(_read_log, self.storage, chat_id, first, last + 1, limit, False)
        return [(from_pair(key)[1], raw) for key, raw in rows]

    async def unread_counts(self, user_id: int, chats: list[ChatState], cap: int = 999) -> dict[int, int]:
        """Messages from others after the user's read cursor, per chat (capped)."""
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


def _status(seq: int, peer: dict) -> str:
    if peer.get("read", 0) >= seq:
        return "read"
    if peer.get("delivered", 0) >= seq:
        return "delivered"
    return "sent"


def _read_log(txn, storage: Storage, chat_id: int, first: int, end: int, limit: int, reverse: bool):
    return list(storage.scan(txn, "log", pair(chat_id, first), pair(chat_id, end), reverse=reverse, limit=limit))


COUNTED_KINDS = frozenset({"text", "image", "audio", "video", "file"})


def _count_unread(txn, storage: Storage, ranges, user: str, cap: int, now: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for chat_id, first, last in ranges:
        n = 0
        for _, raw in storage.scan(txn, "log", pair(chat_id, first), pair(chat_id, last + 1)):
            m = orjson.loads(raw)
            if m.get("from") != user and m.get("kind") in COUNTED_KINDS and not m.get("deleted"):
                if not (m.get("expires_at") and m["expires_at"] <= now):
                    n += 1
                    if n >= cap:
                        break
        counts[chat_id] = n
    return counts
