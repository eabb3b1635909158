"""Links between nodes: batched, ordered, sealed message streams, one per peer and direction.

A node sends to a peer over one TCP stream that it dials itself (the peer's cluster
address, the same port gossip uses); it receives over the streams its peers dial. Every
frame is sealed with the cluster keyring (purpose ``link``), so links need no keys of
their own and rotate with gossip's. A frame carries every message waiting for that peer
(one syscall and one seal per batch, not per message); order is kept per peer.

Nothing waits on a slow peer: each peer has a bounded queue, filled without blocking;
when it is full the message is refused (`send` returns False) and counted, and the
caller decides (a request fails with a retryable error; a delivery is dropped, and the
devices on that peer catch up from the log, which is the truth). A broken stream is
dialed again with backoff; what was queued meanwhile goes out once it is back, unless
the peer has left the membership, when its queue is dropped.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from .keyring import Keyring, OpenError
from .transport import FrameError, Transport, receive_frame, send_frame

log = logging.getLogger(__name__)

PURPOSE_LINK = b"chatnode/cluster/link"
HELLO = "hello"
MAX_BATCH_BYTES = 1 << 20  # a frame holds at most about this much
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0

#: A message: a msgpack-able tuple whose first item names its kind.
Message = tuple[Any, ...]


def pack(messages: list[Message]) -> bytes:
    return msgpack.packb(messages, use_bin_type=True)


def unpack(data: bytes) -> list[Message]:
    value = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
    if not isinstance(value, tuple) or not all(isinstance(m, tuple) and m and isinstance(m[0], str) for m in value):
        raise ValueError("a link frame is a list of messages")
    return list(value)


class _Peer:
    """One outbound link: its queue and the task that drains it."""

    __slots__ = ("address", "connected", "dropped", "in_flight", "node", "queue", "ready", "sent", "sent_frames", "started",
                 "stream_scope", "task_scope")

    def __init__(self, node: int, address: str) -> None:
        self.node = node
        self.address = address
        self.queue: deque[Message] = deque()
        self.ready = trio.Event()
        self.connected = False
        self.sent = 0
        self.sent_frames = 0
        self.in_flight = 0  # messages taken from the queue, not yet written to the stream
        self.dropped = 0
        self.started = False  # its task runs (started by the first message)
        self.task_scope = trio.CancelScope()
        self.stream_scope: trio.CancelScope | None = None  # the current stream's: cancelled, it is dialed again


class Links:
    """Every link of this node. Run `serve` in a nursery; hand inbound link streams to
    `serve_inbound` (the cluster's stream demultiplexer does)."""

    def __init__(
        self,
        node_id: int,
        keyring: Keyring,
        transport: Transport,
        on_message: Callable[[int, Message], None],
        *,
        on_restart: Callable[[int], None] = lambda _node: None,
        on_interrupted: Callable[[int], None] = lambda _node: None,
        queue_limit: int = 65_536,
        max_frame: int = 8 << 20,
    ) -> None:
        self.node_id = node_id
        # Every start of a node is a new life: peers tell lives apart by this, from the
        # hello of a link, and so notice a restart that membership may not have seen.
        self.boot = secrets.randbits(63)
        self._boots: dict[int, int] = {}  # peer -> the boot id of its life we last heard
        self._on_restart = on_restart
        self._on_interrupted = on_interrupted
        self._keyring = keyring
        self._transport = transport
        self._on_message = on_message
        self._queue_limit = queue_limit
        self._max_frame = max_frame
        self._peers: dict[int, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self.received = 0
        self.dropped_inbound = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- sending ---------------------------------------------------------------------

    def set_peer(self, node: int, address: str) -> None:
        """A live member and where it listens (dialed on the first message to it)."""
        peer = self._peers.get(node)
        if peer is not None and peer.address != address:
            self.drop_peer(node)  # it restarted elsewhere: start afresh
            peer = None
        if peer is None and node != self.node_id:
            peer = self._peers[node] = _Peer(node, address)
            if self._nursery is not None:  # dial now: the hello tells the peer about our life
                peer.started = True
                self._nursery.start_soon(self._run_peer, peer)

    def drop_peer(self, node: int) -> list[Message]:
        """The member left or failed: stop its link; returns what was still queued. Its
        next life is then no surprise: its hello is not reported as a restart (unless this
        node hears from the life it gave up meanwhile: see `serve_inbound`)."""
        self._boots.pop(node, None)
        peer = self._peers.pop(node, None)
        if peer is None:
            return []
        peer.task_scope.cancel()
        left = list(peer.queue)
        peer.queue.clear()
        return left

    def send(self, node: int, message: Message) -> bool:
        """Queue a message for a peer; never waits. False if the peer is unknown or its
        queue is full (the message is not sent)."""
        peer = self._peers.get(node)
        if peer is None:
            return False
        if len(peer.queue) >= self._queue_limit:
            peer.dropped += 1
            return False
        peer.queue.append(message)
        peer.ready.set()
        if not peer.started and self._nursery is not None:
            peer.started = True
            self._nursery.start_soon(self._run_peer, peer)
        return True

    async def _run_peer(self, peer: _Peer) -> None:
        """Dial the peer and send what is queued, in batches, until the peer is dropped."""
        with peer.task_scope:
            backoff = RECONNECT_MIN
            while True:
                try:
                    stream = await self._transport.connect(peer.address)
                except OSError as exc:
                    log.debug("cluster link to %d (%s): %s", peer.node, peer.address, exc)
                    await trio.sleep(backoff)
                    backoff = min(RECONNECT_MAX, backoff * 2)
                    continue
                backoff = RECONNECT_MIN
                try:
                    with trio.CancelScope() as peer.stream_scope:
                        await send_frame(stream, self._keyring.seal(pack([(HELLO, self.node_id, self.boot)]),
                                                                    PURPOSE_LINK))
                        peer.connected = True
                        await self._drain(peer, stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("cluster link to %d broke: %s", peer.node, exc)
                finally:
                    peer.stream_scope = None
                    peer.connected = False
                    await trio.aclose_forcefully(stream)

    async def _drain(self, peer: _Peer, stream: trio.abc.Stream) -> None:
        while True:
            if not peer.queue:
                peer.ready = trio.Event()
                await peer.ready.wait()
                continue
            batch: list[Message] = []
            size = 0
            while peer.queue and size < MAX_BATCH_BYTES:
                message = peer.queue.popleft()
                batch.append(message)
                size += _estimate(message)
            peer.in_flight = len(batch)
            try:
                await send_frame(stream, self._keyring.seal(pack(batch), PURPOSE_LINK))
            except BaseException:
                peer.queue.extendleft(reversed(batch))  # not sent: first in line on the next stream
                raise
            finally:
                peer.in_flight = 0
            peer.sent += len(batch)
            peer.sent_frames += 1

    # -- receiving -----------------------------------------------------------------------

    def open_hello(self, frame: bytes) -> tuple[int, int] | None:
        """The peer's node id and boot id (its life) if `frame` opens a link, else None
        (another kind of stream). A hello from a new life of a known peer is reported to
        `on_restart`; one from the same life (its earlier stream broke: what was in flight
        on it may be lost) to `on_interrupted`."""
        try:
            messages = unpack(self._keyring.open(frame, PURPOSE_LINK))
        except (OpenError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None
        if len(messages) != 1 or len(messages[0]) != 3 or messages[0][0] != HELLO:
            return None
        _, node, boot = messages[0]
        if not isinstance(node, int) or not isinstance(boot, int):
            return None
        previous = self._boots.get(node)
        self._boots[node] = boot
        if previous is not None and previous != boot:
            self._dial_again(node)
            self._on_restart(node)
        elif previous is not None:
            self._on_interrupted(node)
        return node, boot

    def _dial_again(self, node: int) -> None:
        """The peer restarted: the stream to it may be one to the life that ended, which
        would swallow what is written next (what `on_restart` sends, say) until a write
        fails. It is closed, and what is queued or was being written goes on a new one."""
        peer = self._peers.get(node)
        if peer is not None and peer.stream_scope is not None:
            peer.stream_scope.cancel()

    async def serve_inbound(self, peer: int, stream: trio.abc.Stream, boot: int) -> None:
        """Read a peer's frames until it closes, handing each message to `on_message`;
        `boot` is the life of the peer that opened the stream (its hello).
        When it ends, what the peer had written but this node had not read is lost:
        `on_interrupted` is told (the peer may not notice before its next write).

        A stream outlives `drop_peer` (membership gave the peer up, a pause or a partition,
        while the peer lived on): if it speaks again, this node has heard from that life
        again, so its next life's hello is a restart to report. Forgotten, the restart
        would pass unnoticed when membership never saw the peer go (this node was paused
        meanwhile), and what this node holds about that life (a ``bye``: it owns
        nothing) would outlive it."""
        try:
            while True:
                frame = await receive_frame(stream, self._max_frame)
                try:
                    messages = unpack(self._keyring.open(frame, PURPOSE_LINK))
                except (OpenError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                    self.dropped_inbound += 1
                    return  # not from a key holder: end the stream
                self._boots.setdefault(peer, boot)  # heard from this life (again, after `drop_peer`)
                self.received += len(messages)
                for message in messages:
                    try:
                        self._on_message(peer, message)
                    except Exception:  # one bad message must not end the link
                        log.exception("cluster: handling %r from node %d failed", message[0], peer)
        except FrameError:
            return
        finally:
            self._on_interrupted(peer)
            await trio.aclose_forcefully(stream)

    # -- observing ---------------------------------------------------------------------

    def queued(self, node: int) -> int:
        """Messages for the peer not yet written to its stream."""
        peer = self._peers.get(node)
        return len(peer.queue) + peer.in_flight if peer is not None else 0

    def peer_statistics(self, node: int) -> dict[str, Any] | None:
        """The outbound link to one peer: messages waiting (`queued`), taken for the frame
        being written (`in_flight`), sent, refused because the queue was full (`dropped`),
        and whether its stream is up; None if there is no link to it."""
        peer = self._peers.get(node)
        if peer is None:
            return None
        return {"queued": len(peer.queue), "in_flight": peer.in_flight, "sent": peer.sent, "frames": peer.sent_frames,
                "dropped": peer.dropped, "connected": peer.connected}

    def statistics(self) -> dict[str, Any]:
        return {
            "peers": {str(n): self.peer_statistics(n) for n in self._peers},
            "received": self.received,
            "dropped_inbound": self.dropped_inbound,
        }


def _estimate(message: Message) -> int:
    """A cheap estimate of a message's packed size (its bytes and strings dominate)."""
    size = 16
    for item in message:
        if isinstance(item, (bytes, str)):
            size += len(item)
        elif isinstance(item, (tuple, list)):
            size += 16 * len(item)
        else:
            size += 9
    return size
