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
  datagram only ``lag`` seconds after it arrived, so answers reach it late.

Nothing here touches a socket.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Awaitable, Callable

import attrs
import trio
import trio.testing


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


class MemoryNetwork:
    """Datagrams and streams between ``MemoryTransport``s, with faults you can set."""

    def __init__(
        self, *, seed: int = 0, loss: float = 0.0, delay: float = 0.001, jitter: float = 0.001, inbox: int = 512
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.inbox_size = inbox
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
        """Everything addressed to ``address`` from now on vanishes (its tasks are the caller's to cancel)."""
        self._crashed.add(address)

    def partition(self, *groups: list[str]) -> None:
        """Split the network: addresses in different groups cannot reach each other."""
        self._group = {a: i + 1 for i, g in enumerate(groups) for a in g}

    def heal(self) -> None:
        self._group = {}

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
        client, server = trio.testing.memory_stream_pair()
        await trio.sleep(self.delay)  # the handshake costs a round trip, roughly
        src_stall = self._nodes[src].stall if src in self._nodes else Stall()
        node._accept(_StalledStream(server, node.stall))
        return _StalledStream(client, src_stall)


class _StalledStream(trio.abc.Stream):
    """A memory stream whose reads wait out its owner's stall."""

    def __init__(self, inner: trio.abc.Stream, stall: Stall) -> None:
        self._inner = inner
        self._stall = stall

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        await self._stall.wait_unstalled()
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


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
