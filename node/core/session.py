"""One authenticated WebSocket connection: reader, writer and resync tasks.

Incoming frames are read by the node's read hub (node/core/readhub.py) while the session
is between messages, and handled there when their handlers finish at once; the reader
task (the handler task) takes over for anything that must await, and reads by itself
until it is between messages again.

Outgoing events go through one bounded queue, packed into frames (a JSON array when
several are waiting). Fan-out just offers an event and moves on: after a sequencer batch's
effects the sequencer writes each device's queue once, without waiting, when the socket
takes the frame at once (`flush_now`: no task woken); otherwise a single writer task
drains it. Nothing but the writer ever awaits the socket; a device whose queue overflows
is closed with 4008 and catches up from the log when it reconnects.
The writer exists only while there is traffic: it is started by the first queued event
and ends after `WRITER_LINGER` seconds with nothing to send, so an idle connection holds
just its reader (the handler task, waiting for the hub to hand it something).

Exactly-once per device: for every chat the session remembers the highest seq it has
queued (`_sent`). A live event is queued only if it is the next one; one that would
leave a gap is dropped and the chat is caught up from the log instead, so the replay
after a reconnect and the live stream meet with no gap and no duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import trio

from ..storage import StorageError
from . import errors
from .accounts import Device, public_user
from .chats import message_event, now_ms
from .errors import ChatError
from .messages import MEDIA_KINDS, content_from_send
from .operations import MarkDelivered, SendMessage
from .personal import hidden_between
from .protocol import check_fields, get_client_msg_id, get_cursors, get_id, get_int, parse_frame
from .ratelimit import TokenBucket
from .state import ChatState
from .websocket import ABNORMAL_CLOSURE, ConnectionClosed, WebSocket

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

#: A frame type's handler: does what it can at once and returns None, or returns an awaitable
#: that finishes the work, awaited before the device's next frame is read (an `async def`
#: handler is the latter: its coroutine). ChatError, raised either way, answers the frame.
FrameHandler = Callable[["Session", dict[str, Any]], Awaitable[None] | None]

HELLO_FIELDS = frozenset({"type", "token", "cursors"})
RECEIVED_FIELDS = frozenset({"type", "chat", "seq"})
SYNCED = orjson.dumps({"type": "synced"})
PONG = orjson.dumps({"type": "pong"})
WRITER_LINGER = 2.0  # seconds an idle writer waits for more before it ends


class Session:
    # Slots: one of these per connection, and a dict per instance would cost ~1 KiB.
    __slots__ = (
        "_bucket",
        "_capacity",
        "_catchup",
        "_close",
        "_closing",
        "_flush_due",
        "_graceful",
        "_handed",
        "_in_send",
        "_inflight",
        "_inflight_changed",
        "_inflight_max",
        "_limits",
        "_metrics",
        "_more",
        "_nursery",
        "_own",
        "_peer_closed",
        "_peer_code",
        "_queue",
        "_queue_closed",
        "_reader_scope",
        "_room",
        "_sending",
        "_sent",
        "_syncing",
        "_turn",
        "_writer_done",
        "_writing",
        "device",
        "frames_in",
        "frames_out",
        "node",
        "synced",
        "user_id",
        "ws",
    )  # fmt: skip

    def __init__(self, node: Services, ws: WebSocket) -> None:
        self.node = node
        self.ws = ws
        limits = node.config.limits
        self._limits = limits
        self._capacity = limits.outgoing_queue
        self._queue: list[bytes] = []  # outgoing events, at most `_capacity` (a list: small when empty)
        self._queue_closed = False  # no more events: the writer flushes what is queued and ends
        self._writing = False  # a writer task is running
        self._in_send = False  # ... and is inside a send
        self._flush_due = False  # noted for the flush at the end of the sequencer's effects
        self._more: trio.Event | None = None  # exists only while the lingering writer waits
        self._bucket = TokenBucket(limits.frames_per_second, limits.frame_burst)
        self._inflight = 0  # sends waiting for their ack
        self._inflight_max = max(1, limits.outgoing_queue // 2)
        self._inflight_changed: trio.Event | None = None  # exists only while someone waits
        self._sent: dict[int, int] = {}  # chat -> highest seq queued to this device
        self._own: dict[int, set[int]] = {}  # chat -> own acked seqs not yet contiguous
        self._catchup: dict[int, None] = {}  # chats to replay from the log (ordered set)
        self._syncing = False  # a syncer task is running
        self._nursery: trio.Nursery | None = None
        self._room: trio.Event | None = None  # exists only while the syncer waits for room
        self._reader_scope = trio.CancelScope()
        self._closing = False
        self._close: tuple[int, str] | None = None
        self._graceful = False
        self._peer_closed = False
        self._writer_done: trio.Event | None = None
        self._peer_code = ABNORMAL_CLOSURE  # the close code the peer ended with
        self._metrics = node.metrics
        self._sending: dict[str, float] | None = None  # client_msg_id -> when its send was read
        self._turn: trio.Event | None = None  # exists while the read hub reads for this session
        # What the hub handed to this task: the rest of a handler, its event, a frame's events,
        # and whether to read the socket next (the hub found its end).
        self._handed: tuple[Awaitable[None] | None, dict[str, Any] | None, list[dict[str, Any]], bool] | None = None
        self.device: Device | None = None
        self.user_id = 0
        self.synced = False
        self.frames_in = 0
        self.frames_out = 0

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Handshake, then serve until either side closes. Never raises (but Cancelled)."""
        try:
            cursors = await self._handshake()
            # Loaded before attaching: from `attach` on, live events may arrive, and the
            # cursors must be in place before the first one (no await in between).
            chats = await self.node.chats.chats_of(self.user_id)
        except ChatError as exc:
            await self._send_and_close(exc, self._handshake_close_code(exc))
            return
        except StorageError:
            await self._send_and_close(ChatError("unavailable", "storage is unavailable; reconnect"),
                                       errors.CLOSE_INTERNAL)
            return
        except ConnectionClosed as exc:
            self._metrics.closes.inc(str(exc.code))
            return
        try:
            self.node.hub.attach(self)
        except ChatError as exc:
            await self._send_and_close(exc, errors.CLOSE_TOO_MANY_CONNECTIONS)
            return
        try:
            self._start_sync(chats, cursors)
            await self._serve()
        finally:
            self.node.hub.detach(self)
            ended = self._close[0] if self._close is not None and not self._peer_closed else self._peer_code
            self._metrics.closes.inc(str(ended))
        if self._close is not None and not self._peer_closed:
            with trio.move_on_after(self.node.config.websocket.tcp_user_timeout):
                await self.ws.aclose(*self._close)

    def close(self, code: int, reason: str, *, graceful: bool = False) -> None:
        """Ask the session to close with `code`. Graceful: finish in-flight sends and
        flush queued events first (used on shutdown)."""
        if not self._closing:
            self._closing = True
            self._close = (code, reason)
            self._graceful = graceful
        self._reader_scope.cancel()

    def _peer_gone(self, code: int = ABNORMAL_CLOSURE, *, from_reader: bool = False) -> None:
        """The connection is already closed by the peer: stop without a close frame."""
        if not self._peer_closed:
            self._peer_code = code
        self._closing = True
        self._peer_closed = True
        if not from_reader:  # (the reader itself is on its way out)
            self._reader_scope.cancel()

    async def _handshake(self) -> dict[int, int]:
        with trio.move_on_after(self._limits.hello_timeout) as timeout:
            text = await self.ws.get_message()
        if timeout.cancelled_caught:
            raise ChatError("not_hello", "no hello received in time")
        try:
            events = parse_frame(text, 1) if isinstance(text, str) else []
        except ChatError:  # not JSON, not an event, several events: not a hello
            events = []
        if len(events) != 1 or events[0]["type"] != "hello":
            raise ChatError("not_hello")
        hello = events[0]
        check_fields(hello, HELLO_FIELDS)
        device = await self.node.accounts.authenticate(hello.get("token"))
        if device is None:
            raise ChatError("unauthorized")
        cursors = get_cursors(hello)
        self.device = device
        self.user_id = device.user_id
        user = await self.node.accounts.user(device.user_id)
        self.send_event(
            orjson.dumps(
                {
                    "type": "welcome",
                    "user": public_user(user) if user else None,
                    "device_id": str(device.device_id),
                    "server_time": now_ms(),
                    "limits": {
                        "max_message_bytes": self._limits.max_message_bytes,
                        "max_frame_bytes": self._limits.max_frame_bytes,
                        "max_events_per_frame": self._limits.max_events_per_frame,
                        "frames_per_second": self._limits.frames_per_second,
                    },
                }
            )
        )
        return cursors

    def _handshake_close_code(self, exc: ChatError) -> int:
        if exc.code == "unauthorized":
            return errors.CLOSE_UNAUTHORIZED
        if exc.message == "no hello received in time":
            return errors.CLOSE_HELLO_TIMEOUT
        return errors.CLOSE_PROTOCOL

    async def _send_and_close(self, exc: ChatError, code: int) -> None:
        self._metrics.errors.inc(exc.code, "ws")
        self._metrics.closes.inc(str(code))
        with trio.move_on_after(2):
            try:
                await self.ws.send_message(orjson.dumps({"type": "error", **exc.to_json()}))
                await self.ws.aclose(code, exc.message[:120])
            except ConnectionClosed:
                pass

    async def _serve(self) -> None:
        # The handler task itself is the reader; the writer (and, while replaying, the
        # syncer) are its children. Few tasks per connection keep idle sockets cheap.
        async with trio.open_nursery() as nursery:
            if not self._catchup:  # nothing missed: no syncer task at all
                self.synced = True
                self._enqueue(SYNCED)  # (before `_nursery` is set: queued, no writer started)
            self._nursery = nursery
            if self._catchup:
                self._syncing = True
                nursery.start_soon(self._syncer)  # the replay after hello; ends with `synced`
            self.flush_now()  # the welcome (and maybe `synced`): written at once, or by a writer task
            with self._reader_scope:
                await self._reader()
            self._closing = True
            deadline = trio.current_time() + self.node.config.http.graceful_timeout
            if self._graceful:
                with trio.move_on_at(deadline):  # let the sequencer ack what this device sent
                    while self._inflight > 0:
                        await self._wait_inflight_change()
            self._close_queue()  # the writer flushes the queue, then ends
            if self._writing:
                # A slow but live peer still gets its close code: the kernel cuts a dead
                # one after tcp_user_timeout anyway.
                patience = self.node.config.websocket.tcp_user_timeout
                self._writer_done = trio.Event()
                with trio.move_on_at(deadline if self._graceful else trio.current_time() + patience):
                    await self._writer_done.wait()
            if nursery.child_tasks:  # (a cancel is not free: trio records who asked for it)
                nursery.cancel_scope.cancel()

    # -- reading -----------------------------------------------------------------------

    async def _reader(self) -> None:
        """Read and handle frames in order: by the read hub while between messages (see
        node/core/readhub.py), by this task otherwise."""
        hub = self.node.read_hub
        ws = self.ws
        fd = ws.fileno() if hub is not None else -1
        try:
            while True:
                read = False  # the hub found the connection's end: `get_message` tells how it ended
                if self._handed is not None:  # what the hub could not finish at once
                    rest, event, handed, read = self._handed
                    self._handed = None
                    if rest is not None and event is not None:
                        await self._finish(rest, event)
                    if handed:
                        await self._run_events(handed)
                if not read and hub is not None and ws.between_messages():
                    self._turn = turn = trio.Event()
                    if hub.watch(fd, self):
                        try:
                            await turn.wait()
                        finally:
                            self._turn = None
                            hub.pause(fd, self)
                        continue
                    self._turn = None
                    hub = None  # the hub has closed: read by ourselves
                text = await ws.get_message()
                events = self._events_of(text)
                if events:
                    await self._run_events(events)
        except ConnectionClosed as exc:
            self._peer_gone(exc.code, from_reader=True)
        finally:
            if hub is not None:
                hub.forget(fd, self)

    def read_ready(self) -> None:
        """The read hub found the socket readable: handle what came while each handler
        finishes at once; hand anything else to this session's task (woken)."""
        turn = self._turn
        if turn is None or self._closing:  # (the task is on its way out: not reported again)
            if self.node.read_hub is not None:
                self.node.read_hub.pause(self.ws.fileno(), self)
            return
        items = self.ws.read_now()
        if items is None:  # the end of the connection: the task reads it again, and finds out
            self._hand_back(turn, [], read=True)
            return
        handlers = self.node.frame_handlers
        for i, item in enumerate(items):
            if type(item) is not bytes:  # a control frame, a fragment, a protocol error
                self._hand_back(turn, items[i:])
                return
            try:
                text = item.decode()
            except UnicodeDecodeError:  # `get_message` closes with 1007
                self._hand_back(turn, items[i:])
                return
            events = self._events_of(text)
            if not events:
                continue
            if len(events) > 1:
                self._hand_back(turn, items[i + 1:], events=events)
                return
            event = events[0]
            rest = self._start(handlers, event)
            if rest is not None:
                self._hand_back(turn, items[i + 1:], rest=rest, event=event)
                return
            if self._closing:  # a handler closed the session: its task finds out
                self.ws.put_back(items[i + 1:])
                return
        if not self.ws.between_messages():  # the protocol failed the connection: it answers
            self._hand_back(turn, [])

    def _hand_back(self, turn: trio.Event, items: list, *, rest: Awaitable[None] | None = None,
                   event: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None,
                   read: bool = False) -> None:
        self.ws.put_back(items)
        self._handed = (rest, event, events or [], read)
        hub = self.node.read_hub
        if hub is not None:
            hub.pause(self.ws.fileno(), self)
        turn.set()

    def crashed(self) -> None:
        """A handler run by the read hub raised: close as a crashed session task would."""
        log.error("closing user %s device %s after a crash", self.user_id, self.device_id)
        self.close(errors.CLOSE_INTERNAL, "internal error")

    def _events_of(self, text: str | bytes) -> list[dict[str, Any]] | None:
        """A frame's events, or None after answering a frame refused whole."""
        self.frames_in += 1
        try:
            if not self._bucket.take():
                raise ChatError("rate_limited", "too many frames; this one was dropped")
            if not isinstance(text, str):
                raise ChatError("bad_request", "binary frames are not supported; send JSON text")
            return parse_frame(text, self._limits.max_events_per_frame)
        except ChatError as exc:
            self.send_error(exc)
            return None

    async def _run_events(self, events: list[dict[str, Any]]) -> None:
        handlers = self.node.frame_handlers
        if len(events) == 1:
            await self._dispatch(handlers, events[0])
            return
        # A frame is handled whole: shutdown does not cut it between two events.
        with trio.CancelScope(shield=True), trio.move_on_after(self._limits.hello_timeout):
            for event in events:
                await self._dispatch(handlers, event)

    async def _dispatch(self, handlers: dict[str, FrameHandler], event: dict[str, Any]) -> None:
        rest = self._start(handlers, event)
        if rest is not None:
            await self._finish(rest, event)

    def _start(self, handlers: dict[str, FrameHandler], event: dict[str, Any]) -> Awaitable[None] | None:
        """Run an event's handler as far as it goes at once; what is left, or None."""
        handler = handlers.get(event["type"])
        try:
            if handler is None:
                raise ChatError("unknown_type", f"unknown event type {event['type'][:40]!r}")
            return handler(self, event)
        except ChatError as exc:
            self._refuse(exc, event)
            return None

    async def _finish(self, rest: Awaitable[None], event: dict[str, Any]) -> None:
        try:
            await rest
        except ChatError as exc:
            self._refuse(exc, event)

    def _refuse(self, exc: ChatError, event: dict[str, Any]) -> None:
        ref = event.get("client_msg_id")
        self.send_error(self.node.plugins.client_error(exc), ref=ref if isinstance(ref, str) else None)

    # -- writing -----------------------------------------------------------------------

    def _enqueue(self, payload: bytes) -> bool:
        if self._queue_closed:
            return False
        if len(self._queue) >= self._capacity:
            log.info("user %s device %s too slow: closing", self.user_id, self.device and self.device.device_id)
            self._drop_queue()
            self.close(errors.CLOSE_TOO_SLOW, errors.CLOSE_CODES[errors.CLOSE_TOO_SLOW])
            return False
        self._queue.append(payload)
        if self._flush_due:
            return True
        if self.node.hub.defer_flush(self):  # one write after all of a batch's effects
            self._flush_due = True
            return True
        if not self._wake_writer() and not self._writing:
            self._start_writer()
        return True

    def flush_now(self) -> None:
        """Write what is queued from the calling task (the sequencer, after a batch's
        effects), without a wake-up of the writer, when the socket takes it at once;
        otherwise leave it to the writer task, woken or started."""
        self._flush_due = False
        queue = self._queue
        ws = self.ws
        try:
            while (queue and ws.can_send_nowait and not self._in_send and not self._queue_closed
                   and self._nursery is not None):
                ws.send_nowait(self._take_frame())
                self.frames_out += 1
                if ws.rest_pending:
                    break  # the socket is full: the writer finishes the frame
        except ConnectionClosed as exc:
            self._peer_gone(exc.code)
            return
        if queue or ws.rest_pending:
            if not self._wake_writer() and not self._writing:
                self._start_writer()

    def _take_frame(self) -> bytes:
        """Several queued events as one frame (a JSON array), within the frame limits."""
        queue = self._queue
        self._metrics.queue_depth.observe(len(queue))
        count, size = 1, len(queue[0])
        max_events, budget = self._limits.max_events_per_frame, self._limits.max_frame_bytes // 2
        while count < len(queue) and count < max_events and size < budget:
            size += len(queue[count])
            count += 1
        if count == 1:
            frame = queue.pop(0)
        else:
            frame = b"[" + b",".join(queue[:count]) + b"]"
            del queue[:count]
        if self._room is not None:
            self._room.set()
            self._room = None
        return frame

    def _wake_writer(self) -> bool:
        """Wake the writer if it lingers idle; False if it was not waiting."""
        if self._more is None:
            return False
        self._more.set()
        self._more = None
        return True

    def _start_writer(self) -> None:
        if self._writing or self._nursery is None or not self._queue:
            return  # before `_serve` the queue just waits for it
        try:
            self._nursery.start_soon(self._writer)
        except RuntimeError:  # the session's nursery is already closing
            return
        self._writing = True

    def _close_queue(self) -> None:
        self._queue_closed = True
        self._wake_writer()

    def _drop_queue(self) -> None:
        self._close_queue()
        self._queue.clear()

    async def _writer(self) -> None:
        """Send what is queued, several events per frame; end once idle for a while."""
        queue = self._queue
        ws = self.ws
        try:
            while True:
                if ws.rest_pending:
                    self._in_send = True
                    await ws.send_rest()
                    self._in_send = False
                if not queue:
                    if self._queue_closed or not await self._more_within(WRITER_LINGER):
                        return
                    continue
                frame = self._take_frame()
                self._in_send = True
                await ws.send_message(frame)  # UTF-8 already: no decode and re-encode
                self._in_send = False
                del frame  # hold nothing while idle
                self.frames_out += 1
        except ConnectionClosed as exc:
            self._peer_gone(exc.code)
        finally:
            self._in_send = False
            self._writing = False
            if self._writer_done is not None:
                self._writer_done.set()

    async def _more_within(self, seconds: float) -> bool:
        """Wait for the next queued event (or the queue closing); False on time-out."""
        self._more = more = trio.Event()
        with trio.move_on_after(seconds):
            await more.wait()
        if self._more is more:
            self._more = None
        return more.is_set()

    async def _wait_for_room(self, needed: int) -> None:
        while len(self._queue) + needed > self._capacity // 2:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    async def start_send(self) -> None:
        """Take one of this device's in-flight send slots (waits while all are taken)."""
        while self._inflight >= self._inflight_max:
            await self._wait_inflight_change()
        self._inflight += 1

    def start_send_now(self) -> bool:
        """Take a send slot if one is free."""
        if self._inflight >= self._inflight_max:
            return False
        self._inflight += 1
        return True

    def finish_send(self) -> None:
        self._inflight -= 1
        if self._inflight_changed is not None:
            self._inflight_changed.set()
            self._inflight_changed = None

    async def _wait_inflight_change(self) -> None:
        if self._inflight_changed is None:
            self._inflight_changed = trio.Event()
        await self._inflight_changed.wait()

    def note_send(self, client_msg_id: str) -> None:
        """A send was read: its ack (or error) ends the send-to-ack time."""
        if self._sending is None:
            self._sending = {}
        self._sending[client_msg_id] = time.perf_counter()

    def send_event(self, payload: bytes) -> None:
        """Queue a non-log event (ack, error, receipt, presence ...)."""
        self._enqueue(payload)

    def send(self, event: dict[str, Any]) -> None:
        """`node.Client.send`: queue an event for this device (never waits)."""
        self._enqueue(orjson.dumps(event))

    @property
    def device_id(self) -> int:
        return self.device.device_id if self.device is not None else 0

    def send_error(self, exc: ChatError, *, ref: str | None = None) -> None:
        self._metrics.errors.inc(exc.code, "ws")
        event: dict[str, Any] = {"type": "error", **exc.to_json()}
        if ref is not None:
            event["ref"] = ref
            if self._sending is not None:
                self._sending.pop(ref, None)
        self._enqueue(orjson.dumps(event))

    # -- chat log events -----------------------------------------------------------------

    def notice(self, chat_id: int, committed_seq: int) -> None:
        """The chat's log is stored up to `committed_seq`: catch up if this device is behind
        (a node learning of entries it was not sent live, e.g. after subscribing)."""
        sent = self._sent.get(chat_id)
        if sent is None or sent < committed_seq:
            self._request_catchup(chat_id)

    def deliver(self, chat_id: int, seq: int, event: bytes, floor: int) -> None:
        """Offer log entry `seq` of a chat; queued only if it is the next one owed.

        `floor` is the seq just before the first one this user may see (for a chat the
        session did not know yet, e.g. a group the user was just added to).
        """
        last = self._sent.get(chat_id)
        if last is None:
            last = self._sent[chat_id] = floor
        if seq <= last:
            return
        if seq > last + 1:
            self._request_catchup(chat_id)
            return
        own = self._own.get(chat_id)
        if own and seq in own:  # acked to this device as its own send: it holds it already
            own.discard(seq)
            self._sent[chat_id] = seq
            return
        if self._enqueue(event):
            self._sent[chat_id] = seq

    def send_ack(self, client_msg_id: str, record: dict[str, Any], *, pending: bool = False, duplicate: bool = False) -> None:
        """Acknowledge a durable send; the device now holds that log entry."""
        if self._sending is not None:
            started = self._sending.pop(client_msg_id, None)
            if started is not None:
                self._metrics.send_ack.observe(time.perf_counter() - started)
        ack = {
            "type": "ack",
            "client_msg_id": client_msg_id,
            "chat": record["chat"],
            "id": record["id"],
            "seq": record["seq"],
            "ts": record["ts"],
            "status": "pending" if pending else "sent",
        }
        if duplicate:
            ack["duplicate"] = True
        if not self._enqueue(orjson.dumps(ack)):
            return
        chat_id, seq = int(record["chat"]), record["seq"]
        last = self._sent.get(chat_id)
        if last is not None and seq == last + 1:
            self._sent[chat_id] = seq
        elif last is not None and seq > last + 1:
            self._own.setdefault(chat_id, set()).add(seq)
            self._request_catchup(chat_id)

    def _request_catchup(self, chat_id: int) -> None:
        self._catchup[chat_id] = None
        if self._syncing or self._nursery is None or self._closing:
            return  # a closing device catches up when it reconnects
        try:
            self._nursery.start_soon(self._syncer)
        except RuntimeError:  # the session's nursery is already closing
            return
        self._syncing = True

    def _start_sync(self, chats: list[ChatState], cursors: dict[int, int]) -> None:
        for chat in chats:
            visible = chat.visible_range(self.user_id)
            if visible is None:
                continue
            first, last = visible
            cursor = min(max(cursors.get(chat.id, first - 1), first - 1), last)
            self._sent[chat.id] = cursor
            if cursor < last:
                self._catchup[chat.id] = None

    async def _syncer(self) -> None:
        """Replay chats from the log while any need it, then exit (idle sessions hold no
        syncer task: started again by `_request_catchup`)."""
        try:
            while self._catchup and not self._closing:
                chat_id = next(iter(self._catchup))
                del self._catchup[chat_id]
                await self._catch_up(chat_id)
            if not self.synced:
                self.synced = True
                self._enqueue(SYNCED)
        except StorageError:
            # The device cannot be brought up to date now: it is told so and reconnects
            # later, resuming from its cursors (a storage outage is not a session crash).
            self.send_error(ChatError("unavailable", "storage is unavailable; reconnect"))
            self.close(errors.CLOSE_INTERNAL, "storage is unavailable; reconnect")
        finally:
            self._syncing = False

    async def _catch_up(self, chat_id: int) -> None:
        """Queue the log entries of one chat that this device has not had yet."""
        chats = self.node.chats
        page = max(1, min(self._limits.history_page, self._capacity // 4))
        while True:
            chat = await chats.load(chat_id)
            visible = chat.visible_range(self.user_id) if chat else None
            if visible is None:
                return
            first, last = visible
            sent = max(self._sent.get(chat_id, first - 1), first - 1)
            self._sent[chat_id] = sent
            if sent >= last:
                return
            rows = await chats.read_range(chat_id, sent + 1, last, page)
            hidden = await hidden_between(self.node.storage, self.user_id, chat_id, sent + 1,
                                          rows[-1][0]) if rows else ()  # deleted for this user
            await self._wait_for_room(len(rows))
            now = now_ms()
            own = self._own.get(chat_id)
            for seq, raw in rows:
                if seq <= self._sent[chat_id]:
                    continue
                self._sent[chat_id] = seq  # the log is the truth: a missing seq was purged
                if own and seq in own:
                    own.discard(seq)
                    continue
                if seq in hidden:
                    continue
                if b'"expires_at"' in raw and (orjson.loads(raw).get("expires_at") or now + 1) <= now:
                    continue
                if not self._enqueue(message_event(raw)):
                    return
            if len(rows) < page:
                # Everything up to `last` was committed before the read began, so the log
                # up to there has been seen in full (entries may have been purged).
                self._sent[chat_id] = max(self._sent[chat_id], last)
                return


# -- core frame handlers -----------------------------------------------------------------


def on_send(session: Session, event: dict[str, Any]) -> Awaitable[None] | None:
    client_msg_id = get_client_msg_id(event)
    session.note_send(client_msg_id)
    chat_id = get_id(event, "chat")
    node = session.node
    content = content_from_send(event, node.config.limits)
    if not node.send_limits.take(session.user_id):
        raise ChatError("rate_limited", "too many messages from this user; this one was not sent")
    gated, gating = node.gate_message_now(session.user_id, chat_id, content)
    if gated is None:
        return _send_later(session, chat_id, client_msg_id, None, gating)
    gated = _checked_media(gated)
    if not session.start_send_now():
        return _send_later(session, chat_id, client_msg_id, gated, None)
    op = SendMessage(session, chat_id, client_msg_id, gated)
    try:
        if node.chats.offer(op):
            return None
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        session.finish_send()
        raise ChatError("unavailable", "the node is shutting down") from None
    return _submit_send(session, op)


async def _send_later(session: Session, chat_id: int, client_msg_id: str, content: dict[str, Any] | None,
                      gating: Awaitable[dict[str, Any]] | None) -> None:
    """The rest of a send that must wait: for a gate, or for one of the device's send slots."""
    if gating is not None:
        content = await gating
    assert content is not None
    content = _checked_media(content)
    await session.start_send()
    await _submit_send(session, SendMessage(session, chat_id, client_msg_id, content))


async def _submit_send(session: Session, op: SendMessage) -> None:
    """Queue a send that holds a send slot (the sequencer's queue is full: wait for room)."""
    try:
        await session.node.chats.submit(op)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        session.finish_send()
        raise ChatError("unavailable", "the node is shutting down") from None


def _checked_media(content: dict[str, Any]) -> dict[str, Any]:
    if content["kind"] in MEDIA_KINDS and not isinstance(content.get("media"), dict):
        raise ChatError("bad_request", "media messages need the media plugin, which is not enabled")
    return content


def on_received(session: Session, event: dict[str, Any]) -> Awaitable[None] | None:
    check_fields(event, RECEIVED_FIELDS)
    chat_id = get_id(event, "chat")
    seq = get_int(event, "seq")
    op = MarkDelivered(session.user_id, chat_id, seq)
    chats = session.node.chats
    return None if chats.offer(op) else chats.submit(op)


def on_ping(session: Session, event: dict[str, Any]) -> None:
    session.send_event(PONG)


CORE_FRAME_HANDLERS: dict[str, FrameHandler] = {
    "send": on_send,
    "received": on_received,
    "ping": on_ping,
}
