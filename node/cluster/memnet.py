"""An in-memory network for simulating clusters: loss, delay, partitions and stalls.

The simulation runs the real protocol code (membership.py) for many nodes in one
trio run, usually under ``trio.testing.MockClock(autojump_threshold=0)`` so minutes
of protocol time pass in seconds. Faults that cannot be produced on a real machine
without netem or root live here instead:

* loss: each datagram is dropped with probability ``loss`` (seeded RNG);
* delay: each datagram arrives after ``delay`` plus up to ``jitter`` seconds;
* partitions: groups of addresses that cannot reach each other (datagrams and
  streams alike);
* crashes: a crashed address swallows everything sent to it;
* stalls: a node whose event loop is stuck (a starved CPU, a long GC pause). While
  stalled, none of its timers fire and none of its packets are handled; they wait in
  its bounded inbox and everything that fell due runs when the stall ends, in
  whatever order the scheduler picks, exactly as after a real stall;
* lag: a node that is persistently behind (an overloaded CPU) and handles each
  datagram only ``lag`` seconds after it arrived, so answers reach it late;
* broken streams: a partition, a crash or ``cut`` breaks the streams between the
  addresses it separates, as a TCP connection dies: what was still in flight is lost,
  the sender's next write fails and the reader sees the end of the stream. Stream
  bytes arrive ``stream_delay`` plus up to ``stream_jitter`` seconds after they were
  written, in order.

Nothing here touches a socket.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio


class Stall:
    """When a node's event loop is stuck; every wait of that node ends no earlier than this.

    ``lag`` is how late the node handles each datagram (0: on arrival).
    """

    def __init__(self) -> None:
        self.until = -1.0
        self.stalls = 0
        self.lag = 0.0

    def stall_for(self, seconds: float) -> None:
        now = trio.current_time()
        self.until = max(self.until, now + seconds)
        self.stalls += 1

    async def wait_unstalled(self) -> None:
        while trio.current_time() < self.until:  # noqa: ASYNC110 (a stall may be extended meanwhile)
            await trio.sleep_until(self.until)


class StallableClock:
    """trio's clock, except that a stalled node wakes only when its stall is over."""

    def __init__(self, stall: Stall) -> None:
        self._stall = stall

    def now(self) -> float:
        return trio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        await self._stall.wait_unstalled()

    async def wait_event(self, event: trio.Event, deadline: float) -> bool:
        with trio.move_on_at(deadline):
            await event.wait()
        await self._stall.wait_unstalled()
        return event.is_set()


@attrs.define
class NetworkStatistics:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    partitioned: int = 0
    to_crashed: int = 0
    inbox_full: int = 0
    streams: int = 0
    streams_refused: int = 0
    streams_broken: int = 0


class MemoryNetwork:
    """Datagrams and streams between ``MemoryTransport``s, with faults you can set."""

    def __init__(
        self, *, seed: int = 0, loss: float = 0.0, delay: float = 0.001, jitter: float = 0.001, inbox: int = 512,
        stream_delay: float = 0.0, stream_jitter: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.stream_delay = stream_delay
        self.stream_jitter = stream_jitter
        self.inbox_size = inbox
        self._connections: list[_Connection] = []  # open streams, in the order they were made
        self.stats = NetworkStatistics()
        self._nodes: dict[str, MemoryTransport] = {}
        self._crashed: set[str] = set()
        self._group: dict[str, int] = {}  # partition id per address; absent = group 0
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()

    def attach(self, address: str, stall: Stall | None = None) -> MemoryTransport:
        t = MemoryTransport(self, address, stall or Stall())
        self._nodes[address] = t
        self._crashed.discard(address)
        return t

    # -- faults --------------------------------------------------------------------

    def crash(self, address: str) -> None:
        """Everything addressed to ``address`` from now on vanishes (its tasks are the
        caller's to cancel); its streams break."""
        self._crashed.add(address)
        self._break(lambda c: address in (c.src, c.dst))

    def partition(self, *groups: list[str]) -> None:
        """Split the network: addresses in different groups cannot reach each other (their
        streams break)."""
        self._group = {a: i + 1 for i, g in enumerate(groups) for a in g}
        self._break(lambda c: self._group.get(c.src, 0) != self._group.get(c.dst, 0))

    def heal(self) -> None:
        self._group = {}

    def cut(self, a: str, b: str) -> int:
        """Break the streams between two addresses (a connection reset); returns how many."""
        return self._break(lambda c: {c.src, c.dst} == {a, b})

    def _break(self, which: Callable[[_Connection], bool]) -> int:
        broken = [c for c in self._connections if which(c)]
        for connection in broken:
            connection.break_()
        self._connections = [c for c in self._connections if not c.broken]
        self.stats.streams_broken += len(broken)
        return len(broken)

    def reachable(self, src: str, dst: str) -> bool:
        return dst not in self._crashed and self._group.get(src, 0) == self._group.get(dst, 0)

    # -- datagrams -----------------------------------------------------------------

    def send(self, src: str, dst: str, data: bytes) -> None:
        self.stats.sent += 1
        if dst in self._crashed or dst not in self._nodes:
            self.stats.to_crashed += 1
            return
        if self._group.get(src, 0) != self._group.get(dst, 0):
            self.stats.partitioned += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.stats.lost += 1
            return
        at = trio.current_time() + self.delay + self.rng.random() * self.jitter
        heapq.heappush(self._queue, (at, next(self._seq), src, dst, data))
        self._wakeup.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued datagrams when they are due. Runs until cancelled."""
        task_status.started()
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            at = self._queue[0][0]
            if at > trio.current_time():
                self._wakeup = trio.Event()
                with trio.move_on_at(at):
                    await self._wakeup.wait()
                continue
            _, _, src, dst, data = heapq.heappop(self._queue)
            node = self._nodes.get(dst)
            if node is None or dst in self._crashed or not self.reachable(src, dst):
                self.stats.to_crashed += 1
                continue
            try:
                node._inbox_send.send_nowait((src, data, trio.current_time()))
                self.stats.delivered += 1
            except trio.WouldBlock:  # a full socket buffer drops, it does not block the sender
                self.stats.inbox_full += 1

    # -- streams -------------------------------------------------------------------

    async def connect(self, src: str, dst: str) -> trio.abc.Stream:
        node = self._nodes.get(dst)
        if node is None or not self.reachable(src, dst) or node._handler is None:
            self.stats.streams_refused += 1
            raise OSError(f"connection to {dst} refused")
        self.stats.streams += 1
        await trio.sleep(self.delay)  # the handshake costs a round trip, roughly
        if not self.reachable(src, dst) or node._handler is None:  # gone during the handshake
            self.stats.streams_refused += 1
            raise OSError(f"connection to {dst} refused")
        self._connections = [c for c in self._connections if not c.closed]
        connection = _Connection(self, src, dst)
        self._connections.append(connection)
        src_stall = self._nodes[src].stall if src in self._nodes else Stall()
        node._accept(_SimStream(connection, connection.back, connection.forth, node.stall))
        return _SimStream(connection, connection.forth, connection.back, src_stall)

    def _arrival(self) -> float:
        return trio.current_time() + self.stream_delay + (self.rng.random() * self.stream_jitter
                                                          if self.stream_jitter else 0.0)


class _Pipe:
    """One direction of a stream: chunks with the time each arrives, then maybe EOF."""

    def __init__(self) -> None:
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.eof = False
        self.reader_gone = False  # the reading end closed: writes fail, as after a TCP reset
        self.changed = trio.Event()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class _Connection:
    """A stream between two addresses: two pipes that break together."""

    def __init__(self, network: MemoryNetwork, src: str, dst: str) -> None:
        self.network = network
        self.src = src
        self.dst = dst
        self.forth = _Pipe()  # src -> dst
        self.back = _Pipe()  # dst -> src
        self.broken = False
        self.ends_closed = 0

    @property
    def closed(self) -> bool:
        return self.broken or self.ends_closed == 2

    def break_(self) -> None:
        self.broken = True
        for pipe in (self.forth, self.back):
            pipe.chunks.clear()  # in flight: lost
            pipe.wake()


class _SimStream(trio.abc.Stream):
    """One end of a `_Connection`; reads wait out the owner's stall."""

    def __init__(self, connection: _Connection, out: _Pipe, into: _Pipe, stall: Stall) -> None:
        self._connection = connection
        self._out = out
        self._in = into
        self._stall = stall
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._connection.broken or self._out.reader_gone:
            raise trio.BrokenResourceError("connection reset")
        if data:
            at = self._connection.network._arrival()
            if self._out.chunks:
                at = max(at, self._out.chunks[-1][0])  # a stream keeps its order
            self._out.chunks.append((at, bytes(data)))
            self._out.wake()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint()
        pipe = self._in
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if self._connection.broken:
                return b""  # reset: the reader sees the stream end
            if pipe.chunks:
                at, data = pipe.chunks[0]
                if at <= trio.current_time():
                    if max_bytes is not None and len(data) > max_bytes:
                        pipe.chunks[0] = (at, data[max_bytes:])
                        data = data[:max_bytes]
                    else:
                        pipe.chunks.popleft()
                    await self._stall.wait_unstalled()
                    return b"" if self._connection.broken else data
                changed = pipe.changed
                with trio.move_on_at(at):
                    await changed.wait()
                continue
            if pipe.eof:
                return b""
            await pipe.changed.wait()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._out.wake()
            self._in.reader_gone = True
            self._in.chunks.clear()
            self._connection.ends_closed += 1
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """One node's end of a ``MemoryNetwork``."""

    def __init__(self, network: MemoryNetwork, address: str, stall: Stall) -> None:
        self.network = network
        self.address = address
        self.stall = stall
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[tuple[str, bytes, float]](network.inbox_size)
        self._handler: Callable[[trio.abc.Stream], Awaitable[None]] | None = None
        self._nursery: trio.Nursery | None = None

    async def send_packet(self, address: str, data: bytes) -> None:
        self.network.send(self.address, address, data)

    async def receive_packet(self) -> tuple[str, bytes]:
        source, data, arrived = await self._inbox_receive.receive()
        if self.stall.lag:
            await trio.sleep_until(arrived + self.stall.lag)
        await self.stall.wait_unstalled()
        return source, data

    async def connect(self, address: str) -> trio.abc.Stream:
        return await self.network.connect(self.address, address)

    async def serve_streams(
        self,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._handler, self._nursery = handler, nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._handler = self._nursery = None

    def _accept(self, server: trio.abc.Stream) -> None:
        assert self._nursery is not None and self._handler is not None
        self._nursery.start_soon(self._handler, server)
