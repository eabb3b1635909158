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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ..observe import Metrics
from ..plugin_api import Message
from ..storage import DedupeAck, MessageMeta, Storage, StorageConflict, StorageError, StorageUnavailable, WriteBatch
from .errors import ChatError
from .snowflake import SnowflakeGenerator
from .state import CONTENT_KINDS, PREVIEW_KINDS, ChatState, chat_from_loaded, is_muted

if TYPE_CHECKING:
    from .accounts import Accounts
    from .blocks import Blocks
    from .hub import Hub
    from .operations import SendOrigin
    from .routing import Routing
    from .services import PluginHooks

log = logging.getLogger(__name__)

Effect = Callable[[], None]

#: Longest time a deferred cursor write (see `Operation.deferrable`) waits for the next
#: commit to ride on before the sequencer commits it on its own.
CURSOR_LINGER = 1.0

#: How often a batch is applied again after another writer committed to its chats first
#: (an owner that had not yet seen a hand-over); after that the requests are refused as
#: retryable.
CONFLICT_RETRIES = 2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message_event(raw: bytes) -> bytes:
    """The wire event for a stored log record, without decoding it."""
    return b'{"type":"message",' + raw[1:]


def is_expired(record: dict[str, Any], now: int) -> bool:
    expires = record.get("expires_at")
    if not expires:
        return False
    return expires <= now


@attrs.define(eq=False)
class Reads:
    """What a batch of operations needs loaded before it is applied: the sequencer loads
    it all at once (one call per kind, whatever the engine), then applies the operations
    synchronously against its caches."""

    chats: set[int] = attrs.Factory(set)
    messages: set[int] = attrs.Factory(set)  # message ids (edits, deletions, replies)
    dedupe: set[tuple[int, str]] = attrs.Factory(set)  # (user id, client_msg_id)
    users: set[int] = attrs.Factory(set)  # user records and whom they block
    directs: set[tuple[int, int]] = attrs.Factory(set)  # (low, high) user ids
    user_chats: set[int] = attrs.Factory(set)  # users all of whose chats are loaded


#: Every operation class by name: in a cluster, an operation travels to the owner of its
#: chat as its name and its fields (which are plain data, except a send's origin).
OPERATIONS: dict[str, type[Operation]] = {}


class Operation:
    """A change to chat state, applied by the sequencer.

    `reads` names what the operation will look at (loaded before `apply`). `apply`
    validates, then mutates in-memory state and appends writes to the batch; it raises
    ChatError *before* changing anything when the operation is refused. It returns the
    effect to run once the batch is durable (or None). `reject` tells the requester that
    the operation failed.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        OPERATIONS[cls.__name__] = cls

    #: Its writes may ride on a later commit (at most `CURSOR_LINGER` later) and its effect
    #: runs before they are durable: only for state a crash may set back harmlessly (a
    #: device's `delivered` cursor, which the device raises again with its next `received`).
    #: A batch of nothing else commits nothing of its own.
    deferrable = False

    def reads(self, reads: Reads) -> None:
        pass

    async def route(self, chats: Chats) -> None:
        """Before routing: an operation that creates a chat picks its id here, so that it
        goes to the node that will own the chat (`chat_id` decides where it runs)."""

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
    #: Called with (result, error) once it is settled: how a forwarded operation answers
    #: the node that forwarded it, without a task per request.
    on_done: Callable[[Any, ChatError | None], None] | None = attrs.field(default=None, init=False)

    def resolve(self, result: Any) -> None:
        self._result = result
        self._done.set()
        if self.on_done is not None:
            self.on_done(result, None)

    def reject(self, error: ChatError) -> None:
        self._error = error
        self._done.set()
        if self.on_done is not None:
            self.on_done(None, error)

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
        plugins: PluginHooks,
        users: Accounts,
        blocks: Blocks,
        routing: Routing,
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
        self.routing = routing
        self.max_group_members = max_group_members
        self.edit_window_ms = int(edit_window * 1000)
        self._max_batch = max_batch
        self._chats: dict[int, ChatState] = {}
        self._user_chats: dict[int, set[int]] = {}
        self._directs: dict[tuple[int, int], int] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._dirty_chats: set[int] = set()
        # What the batch being applied read, and its writes so far (later operations of
        # the same batch see them): dedupe records (None: absent or purged), log entries.
        self._dedupe: dict[tuple[int, str], DedupeAck | None] = {}
        self._messages: dict[int, tuple[int, int]] = {}  # message id -> (chat, seq)
        self._log: dict[tuple[int, int], bytes] = {}
        self._appended: list[tuple[ChatState, dict[str, Any]]] = []
        self._batch_chats: set[int] = set()  # the chats the batch being applied loaded
        self._refreshes = 0  # chats dropped by `refresh` so far
        # Writes of deferrable batches not yet committed: (op, chat, user) -> the op; they
        # join the next batch's commit (the newest record of a member wins).
        self._deferred: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._send, self._recv = trio.open_memory_channel[Operation](queue_size)
        self._room: trio.Event | None = None  # set when the sequencer takes a batch (`wait_for_room`)
        self.applied = 0
        self.dedupe_purged = 0  # idempotency records dropped after storage.dedupe_retention
        self.metrics = Metrics()  # the node's (node/observe.py): batch sizes, fan-out time

    # -- the sequencer ---------------------------------------------------------------

    async def submit(self, op: Operation) -> None:
        """Queue an operation (or, in a cluster, send it to the node that owns its chat).
        Backpressure: waits while the sequencer's queue is full.

        Does not yield when there is room, so all the events of one frame land in the
        same batch (one commit, one ack frame) instead of trickling in one by one.
        """
        if not self.offer(op):
            await self._send.send(op)

    def offer(self, op: Operation) -> bool:
        """`submit` without waiting: False if the sequencer's queue is full (then `submit`)."""
        if not self._local(op):
            self.routing.forward_nowait(op)
            return True
        try:
            self._send.send_nowait(op)
        except trio.WouldBlock:
            return False
        return True

    async def run(self, op: Awaitable) -> Any:
        """Queue an operation and wait for its result (raises its ChatError)."""
        await op.route(self)
        if not self._local(op):
            return await self.routing.forward(op)
        try:
            await self.submit(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ChatError("unavailable", "the node is shutting down") from None
        return await op.wait()

    def room(self) -> int:
        """Free places in the sequencer's queue."""
        queue = self._send.statistics()
        return int(queue.max_buffer_size) - queue.current_buffer_used  # (bounded: an int)

    async def wait_for_room(self, free: int) -> None:
        """Until the queue has `free` places: the sequencer's next batches make them (the
        read hub reads no socket meanwhile, see there)."""
        while self.room() < free:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def submit_nowait(self, op: Operation) -> bool:
        """Queue an operation here without waiting; False if the queue is full."""
        try:
            self._send.send_nowait(op)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def _local(self, op: Operation) -> bool:
        """Whether this node sequences `op` (its chat is ours, or it belongs to no chat)."""
        chat_id = getattr(op, "chat_id", None)
        return not chat_id or self.routing.owns(chat_id)

    async def close(self) -> None:
        """Stop taking operations; `serve` finishes what is queued and returns."""
        await self._send.aclose()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._recv:
            while True:
                first: Operation | None = None
                try:
                    if self._deferred:  # commit them on their own if nothing comes to carry them
                        with trio.move_on_after(CURSOR_LINGER):
                            first = await self._recv.receive()
                        if first is None:
                            await self._flush_deferred()
                            continue
                    else:
                        first = await self._recv.receive()
                except trio.EndOfChannel:
                    await self._flush_deferred()
                    return
                ops = [first]
                while len(ops) < self._max_batch:
                    try:
                        ops.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if self._room is not None:
                    self._room.set()
                    self._room = None
                await self._process(ops)

    async def _flush_deferred(self) -> None:
        """Commit the deferred cursor writes that no batch carried."""
        batch = WriteBatch()
        batch.ops.extend(self._deferred.values())
        self._deferred.clear()
        try:
            await self.storage.write(batch)
        except StorageError as exc:  # the cursors stay in memory; devices raise them again
            log.warning("deferred cursor writes not stored: %s", exc)

    async def _process(self, ops: list[Operation], attempt: int = 0) -> None:
        version = self.routing.version
        if self.routing.clustered:  # ownership may have moved while they queued
            moved = [op for op in ops if not self._local(op)]
            if moved:
                ops = [op for op in ops if self._local(op)]
                for op in moved:
                    self.routing.forward_nowait(op)
        reads = Reads()
        for op in ops:
            op.reads(reads)
        try:
            while True:  # again if chats were dropped while it loaded (`refresh`)
                refreshes = self._refreshes
                await self._load(reads)
                if refreshes == self._refreshes:
                    break
        except StorageError as exc:
            for op in ops:
                op.reject(_storage_error(exc))
            self._clear_batch()
            return
        if self.routing.version != version:  # ownership moved while loading: not ours to apply
            moved = [op for op in ops if not self._local(op)]
            if moved:
                ops = [op for op in ops if self._local(op)]
                for op in moved:
                    self.routing.forward_nowait(op)
        batch = WriteBatch()
        applied: list[tuple[Operation, Effect | None]] = []
        stale = False
        now = now_ms()
        for op in ops:
            mark = batch.mark()
            try:
                effect = op.apply(self, batch, now)
            except ChatError as exc:
                batch.rollback(mark)
                op.reject(exc)
                continue
            except Exception:
                log.exception("operation %r failed", op)
                batch.rollback(mark)
                stale = True  # memory may be half-changed: reload from storage after this batch
                op.reject(ChatError("internal"))
                continue
            applied.append((op, effect))
        self._flush_dirty(batch)
        appended, self._appended = self._appended, []
        if applied and not stale and not self.routing.clustered and all(op.deferrable for op, _ in applied):
            # Only cursor moves: no commit of their own (they ride on the next one).
            for write in batch.ops:
                self._deferred[write[:3]] = write
            self._clear_batch()
            self._run_effects(ops, applied, appended)
            return
        if self._deferred:  # older than this batch's writes: first, so newer records win
            batch.ops[:0] = self._deferred.values()
            self._deferred.clear()
        try:
            await self.storage.write(batch)
        except StorageError as exc:
            # Nothing of the batch is known to be stored (a conflict: another node took a
            # seq; an unknown outcome: maybe it was): reload whatever is asked next.
            self._forget_all()
            self._clear_batch()
            if isinstance(exc, StorageConflict) and attempt < CONFLICT_RETRIES:
                # Nothing was stored, and the chats are read afresh: apply the batch again
                # on what the other writer (an owner before a hand-over) committed.
                await self._process([op for op, _ in applied], attempt + 1)
                return
            for op, _ in applied:
                op.reject(_storage_error(exc))
            return
        finally:
            self._clear_batch()
        for chat, record in appended:  # durable now: readers and resync may see them
            chat.committed_seq = record["seq"]
            if record["kind"] in PREVIEW_KINDS:
                chat.last_message = record
        if stale:
            self._forget_all()
        elif self.routing.version != version:  # ownership moved while this batch ran
            self.routing.given_up(self.forget_chats(self.routing.owns))
        elif self.routing.clustered:  # read for a check (a pin limit) but sequenced elsewhere: not kept
            for chat_id in self._batch_chats:
                if not self.routing.owns(chat_id):
                    self._chats.pop(chat_id, None)
        self._run_effects(ops, applied, appended)

    def _run_effects(self, ops: list[Operation], applied: list[tuple[Operation, Effect | None]],
                     appended: list[tuple[ChatState, dict[str, Any]]]) -> None:
        self.applied += len(applied)
        self.metrics.batch_ops.observe(len(ops))
        started = time.perf_counter()
        with self.hub.batch():  # every device's events of this batch go out in one write
            for op, effect in applied:
                if effect is not None:
                    try:
                        effect()
                    except Exception:
                        log.exception("effect of %r failed", op)
        self.metrics.fan_out.observe(time.perf_counter() - started)
        if self.plugins.has_impls("on_message_stored"):
            for _chat, record in appended:
                self.plugins.notify("on_message_stored", message=Message.from_record(record))

    async def _load(self, reads: Reads) -> None:
        """Load what a batch reads and is not cached (one engine call per kind). A 1-1
        chat comes with who its members block; a direct pair with its chat."""
        pairs = [p for p in reads.directs if p not in self._directs]
        if pairs:
            self._directs.update(await self.storage.direct_chats(pairs))
        chat_ids = reads.chats | {self._directs[p] for p in reads.directs if p in self._directs}
        for user_id in reads.user_chats:
            chat_ids = chat_ids | await self.chat_ids_of(user_id)
        missing = [c for c in chat_ids if c not in self._chats]
        if missing:
            await self.load_many(missing, keep=True)  # the batch sequences them: keep them for it
        self._batch_chats = chat_ids
        users = set(reads.users)
        for chat_id in chat_ids:
            chat = self._chats.get(chat_id)
            if chat is not None and chat.kind == "direct":
                users.update(chat.members)
        if users:
            await self.blocks.load(users)
        if reads.users:
            await self.users.load_users(reads.users)
        if reads.messages:
            for message_id, found in (await self.storage.find_messages(reads.messages)).items():
                self._messages[message_id] = (found.chat_id, found.seq)
                self._log[(found.chat_id, found.seq)] = found.raw
        if reads.dedupe:
            stored = await self.storage.get_dedupe(reads.dedupe)
            for key in reads.dedupe:
                self._dedupe[key] = stored.get(key)

    def _clear_batch(self) -> None:
        self._dedupe.clear()
        self._messages.clear()
        self._log.clear()

    def _forget_all(self) -> None:
        """Drop cached state so it is reloaded from what is durably stored."""
        self._chats.clear()
        self._user_chats.clear()
        self._directs.clear()
        self._dirty.clear()
        self._dirty_chats.clear()
        self._appended.clear()
        self._deferred.clear()  # cursor moves not yet stored are lost: devices raise them again

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
        expires = record.get("expires_at") or 0
        batch.append_message(chat.id, seq, message_id, raw, MessageMeta(sender, record["kind"], now, expires))
        self._log[(chat.id, seq)] = raw
        self._messages[message_id] = (chat.id, seq)
        chat.last_seq = seq
        self._dirty_chats.add(chat.id)
        self._appended.append((chat, record))
        if sender:
            chat.recent.append((seq, sender))
            if sender in chat.members:  # your own message counts as delivered and read
                self.advance_cursor(chat, sender, "delivered", seq)
                self.advance_cursor(chat, sender, "read", seq)
        if record["kind"] in CONTENT_KINDS:
            writer = chat.members.get(sender) if chat.kind == "direct" else None
            if writer is not None and not writer.get("wrote"):
                writer["wrote"] = True  # they wrote to the other: the other is now their contact
                self.mark_dirty(chat.id, sender)
            for uid in chat.active_ids():
                member = chat.members[uid]
                if member.get("hidden"):
                    member["hidden"] = False  # a new message brings a hidden chat back
                    self.mark_dirty(chat.id, uid)
                if member.get("archived") and not is_muted(member, now):
                    member["archived"] = False  # ... and an archived one, unless it is muted
                    self.mark_dirty(chat.id, uid)
        return record, raw

    def rewrite(self, chat: ChatState, batch: WriteBatch, record: dict[str, Any]) -> None:
        """Replace a stored log entry (edits, deletions, purges keep the seq)."""
        raw = orjson.dumps(record)
        meta = MessageMeta(int(record.get("from") or 0), record["kind"], record["ts"], record.get("expires_at") or 0)
        batch.rewrite_message(chat.id, record["seq"], raw, meta)
        self._log[(chat.id, record["seq"])] = raw
        if chat.last_message and chat.last_message["seq"] == record["seq"]:
            chat.last_message = record

    def find_message(self, chat: ChatState, message_id: int) -> dict[str, Any] | None:
        """A message of this chat by id (loaded for this batch by `Reads.messages`, or
        appended earlier in it)."""
        where = self._messages.get(message_id)
        if where is None or where[0] != chat.id:
            return None
        raw = self._log.get(where)
        return orjson.loads(raw) if raw is not None else None

    def create_chat(
        self, batch: WriteBatch, now: int, *, kind: str, creator: int, chat_id: int = 0, **fields: Any
    ) -> ChatState:
        """A new chat; `chat_id` when it was chosen before routing (see `Operation.route`)."""
        chat_id = chat_id or self.ids.next_id()
        record = {"id": str(chat_id), "kind": kind, "created": now, "created_by": str(creator), **fields}
        batch.put_chat(chat_id, record)
        chat = ChatState(chat_id, record, {}, 0, None)
        self._chats[chat_id] = chat
        return chat

    def save_chat_record(self, chat: ChatState, batch: WriteBatch) -> None:
        batch.put_chat(chat.id, chat.record)

    def add_member(self, chat: ChatState, user_id: int, now: int, *, role: str, batch: WriteBatch) -> dict:
        """Make `user_id` a member from the next seq on (they see the entry that adds them)."""
        record = {"role": role, "from_seq": chat.last_seq + 1, "delivered": chat.last_seq,
                  "read": chat.last_seq, "joined": now}
        chat.members[user_id] = record
        chat.members_changed()
        self.mark_dirty(chat.id, user_id)
        known = self._user_chats.get(user_id)
        if known is not None:
            known.add(chat.id)
        return record

    def loaded_chats_of(self, user_id: int) -> list[ChatState]:
        """The user's chats (loaded for this batch by `Reads.user_chats`)."""
        return [chat for chat_id in self._user_chats.get(user_id, ()) if (chat := self._chats.get(chat_id))]

    def mark_dirty(self, chat_id: int, user_id: int) -> None:
        self._dirty.add((chat_id, user_id))

    def _flush_dirty(self, batch: WriteBatch) -> None:
        for chat_id, user_id in self._dirty:
            chat = self._chats.get(chat_id)
            if chat is not None and user_id in chat.members:
                batch.put_member(chat_id, user_id, chat.members[user_id])
        for chat_id in self._dirty_chats:
            # The chat's last seq survives purges of its newest entries, and moving it is
            # compare-and-set: a second node that believes it owns this chat fails here.
            chat = self._chats.get(chat_id)
            if chat is not None and chat.last_seq != chat.stored_seq:
                batch.set_chat_seq(chat_id, chat.last_seq, chat.stored_seq)
                chat.stored_seq = chat.last_seq
        self._dirty.clear()
        self._dirty_chats.clear()

    def find_duplicate(self, user_id: int, client_msg_id: str) -> dict[str, Any] | None:
        """What an earlier send with this client_msg_id produced: chat, seq, id, ts
        (loaded for this batch by `Reads.dedupe`)."""
        ack = self._dedupe.get((user_id, client_msg_id))
        if ack is None:
            return None
        return {"chat": str(ack.chat_id), "seq": ack.seq, "id": str(ack.message_id), "ts": ack.ts}

    def remember_dedupe(self, batch: WriteBatch, user_id: int, client_msg_id: str, record: dict[str, Any]) -> None:
        """Record a send's ack so a retry gets it again."""
        ack = DedupeAck(int(record["chat"]), record["seq"], int(record["id"]), record["ts"])
        batch.add_dedupe(user_id, client_msg_id, ack)
        self._dedupe[(user_id, client_msg_id)] = ack

    def forget_dedupe(self, batch: WriteBatch, user_id: int, client_msg_id: str, ts: int) -> None:
        """Drop a dedupe record; later sends of this batch see it gone."""
        batch.delete_dedupe(user_id, client_msg_id, ts)
        self._dedupe[(user_id, client_msg_id)] = None

    def direct_chat_id(self, low: int, high: int) -> int | None:
        """The 1-1 chat of two users (loaded for this batch by `Reads.directs`)."""
        return self._directs.get((low, high))

    def note_direct(self, low: int, high: int, chat_id: int) -> None:
        self._directs[(low, high)] = chat_id

    # -- effects (after commit) ------------------------------------------------------

    def fan_out(self, chat: ChatState, record: dict[str, Any], raw: bytes, *, exclude: SendOrigin | None = None) -> list[int]:
        """Offer a new log entry to every connected device of every member who may see it.

        Never waits: a device whose queue is full is disconnected and resyncs later.
        Returns the members (other than the sender) who had no device online.
        """
        event = message_event(raw)
        seq = record["seq"]
        remote = self.routing.fan_out_remote(chat, seq, event, exclude) if self.routing.clustered else ()
        offline = []
        for uid, member in chat.members.items():
            until = member.get("until_seq")
            if seq < member["from_seq"] or (until is not None and seq > until):
                continue
            sessions = self.hub.sessions_of(uid)
            if not sessions and uid not in remote and str(uid) != record["from"]:
                offline.append(uid)
            floor = member["from_seq"] - 1
            for session in sessions:
                if session is not exclude:
                    try:
                        session.deliver(chat.id, seq, event, floor)
                    except Exception:  # one broken session must not cost the others their copy
                        log.exception("delivery to a session failed")
        if offline and record["kind"] in CONTENT_KINDS:
            self.plugins.notify("on_recipients_offline", message=Message.from_record(record), user_ids=offline)
        return offline

    def send_to_members(self, chat: ChatState, event: bytes, user_ids: set[int] | None = None) -> None:
        """An ephemeral event (not in the log) to the devices of current members, on any node."""
        self.routing.send_to_users(chat.active_ids() if user_ids is None else user_ids, event)

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
            authors = self.authors_between(chat, 0, before, floor) & set(chat.active_ids())  # not former members
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
        """A chat if it is loaded (every chat a batch reads is; others: `load`)."""
        return self._chats.get(chat_id)

    async def load(self, chat_id: int) -> ChatState | None:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = (await self.load_many([chat_id])).get(chat_id)
        return chat

    async def load_many(self, chat_ids: Iterable[int], *, keep: bool = False) -> dict[int, ChatState]:
        """The chats that exist, from the cache or the engine (one call for the misses)."""
        out: dict[int, ChatState] = {}
        missing = []
        for chat_id in chat_ids:
            chat = self._chats.get(chat_id)
            if chat is None:
                missing.append(chat_id)
            else:
                out[chat_id] = chat
        if missing:
            loaded = await self.storage.load_chats(missing)
            for chat_id, stored in loaded.items():
                chat = self._chats.get(chat_id)  # loaded meanwhile (we awaited): keep that one
                if chat is None:
                    chat = chat_from_loaded(chat_id, stored)
                    if keep or self.routing.owns(chat_id):  # only an owner's state stays current
                        self._chats[chat_id] = chat
                out[chat_id] = chat
        return out

    def forget_chats(self, keep: Callable[[int], bool]) -> list[tuple[int, int]]:
        """Drop the state of chats this node no longer sequences (ownership moved).
        Returns (chat id, committed seq) of each dropped."""
        dropped = [(c, chat.committed_seq) for c, chat in self._chats.items() if not keep(c)]
        for chat_id, _ in dropped:
            del self._chats[chat_id]
        return dropped

    def refresh(self, chat_ids: Iterable[int]) -> None:
        """Another node may have stored entries of these chats: drop the cached state, so
        that it is read again (a batch loading meanwhile loads again)."""
        for chat_id in chat_ids:
            if self._chats.pop(chat_id, None) is not None:
                self._refreshes += 1

    def forget_user_chats(self, user_ids: Iterable[int]) -> None:
        """The users' chat lists changed elsewhere: read them again when next asked."""
        for user_id in user_ids:
            self._user_chats.pop(user_id, None)

    async def chat_ids_of(self, user_id: int) -> set[int]:
        """Ids of every chat the user is or was a member of."""
        known = self._user_chats.get(user_id)
        if known is None:
            found = await self.storage.chat_ids_of(user_id)
            known = self._user_chats.get(user_id)  # filled meanwhile: it is the fresher one
            if known is None:
                known = self._user_chats[user_id] = found
        return known

    async def chats_of(self, user_id: int) -> list[ChatState]:
        """Every chat the user is or was a member of, loaded."""
        ids = await self.chat_ids_of(user_id)
        return list((await self.load_many(ids)).values())

    async def shares_chat(self, a: int, b: int) -> bool:
        """Whether two users are both current members of some chat."""
        common = (await self.chat_ids_of(a)) & (await self.chat_ids_of(b))
        for chat in (await self.load_many(common)).values():
            if chat.member(a) is not None and chat.member(b) is not None:
                return True
        return False

    async def contacts_among(self, viewer: int, owners: Iterable[int]) -> set[int]:
        """The `owners` who count `viewer` as a contact: each has written to `viewer` (sent
        a message in their 1-1 chat). Sharing a group, or a chat someone opened with you,
        makes no one a contact. One engine call for the pairs, one for the chats."""
        owners = {o for o in owners if o != viewer}
        if not owners:
            return set()
        pairs = {o: (min(o, viewer), max(o, viewer)) for o in owners}
        missing = [p for p in pairs.values() if p not in self._directs]
        if missing:
            for pair, chat_id in (await self.storage.direct_chats(missing)).items():
                self._directs.setdefault(pair, chat_id)
        chat_ids = {o: self._directs[p] for o, p in pairs.items() if p in self._directs}
        loaded = await self.load_many(set(chat_ids.values()))
        return {o for o, chat_id in chat_ids.items()
                if (chat := loaded.get(chat_id)) is not None and chat.members.get(o, {}).get("wrote")}

    async def is_contact(self, owner: int, viewer: int) -> bool:
        """Whether `owner` counts `viewer` as a contact (see `contacts_among`)."""
        return viewer == owner or owner in await self.contacts_among(viewer, (owner,))

    async def contacts_of(self, user_id: int, max_group: int | None = None) -> set[int]:
        """Everyone who currently shares a chat with `user_id` (only through 1-1 chats and
        groups of at most `max_group` members, if given)."""
        out: set[int] = set()
        for chat in await self.chats_of(user_id):
            if chat.member(user_id) is None:
                continue
            members = chat.active_ids()
            if max_group is None or chat.kind == "direct" or len(members) <= max_group:
                out.update(members)
        out.discard(user_id)
        return out

    async def history(self, user_id: int, chat_id: int, before: int | None, limit: int) -> dict[str, Any]:
        """A page of history: the newest `limit` stored entries with seq < before that the
        user may see, oldest first, less those expired (`messages`); whether older ones
        may exist (`has_more`) and where the next page starts (`next_before`: the lowest
        seq the page covered, even if it was left out)."""
        chat = await self.load(chat_id)
        visible = chat.visible_range(user_id) if chat else None
        if chat is None or visible is None:
            raise ChatError("not_member")
        first, last = visible
        end = last + 1 if before is None else min(before, last + 1)
        if end <= first:
            return {"messages": [], "has_more": False, "next_before": None}
        rows = await self.storage.read_messages(chat_id, first, end, limit, reverse=True)
        now = now_ms()
        messages = [m for m in (orjson.loads(raw) for _, raw in reversed(rows)) if not is_expired(m, now)]
        return {"messages": messages, "has_more": len(rows) == limit and rows[-1][0] > first,
                "next_before": rows[-1][0] if rows else None}

    async def read_range(self, chat_id: int, first: int, last: int, limit: int) -> list[tuple[int, bytes]]:
        """Raw log records with first <= seq <= last, oldest first."""
        return await self.storage.read_messages(chat_id, first, last + 1, limit)

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
        return await self.storage.count_unread(ranges, user_id, CONTENT_KINDS, cap, now_ms())


def _storage_error(exc: StorageError) -> ChatError:
    """What a requester is told when storage failed: retry (nothing was acknowledged)."""
    if isinstance(exc, StorageConflict):
        return ChatError("unavailable", "the chat moved to another node; retry")
    if isinstance(exc, StorageUnavailable):
        return ChatError("unavailable", "storage is unavailable; retry")
    return ChatError("unavailable", str(exc))
