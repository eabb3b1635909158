"""One cluster port, two kinds of stream: gossip's state exchanges and node links.

Membership accepts streams for its state exchanges; links (node/cluster/links.py) dial
the same address. The first frame tells them apart: a link opens with a sealed hello
under the link purpose, which a state exchange never carries. `DemuxTransport` wraps
the real transport: it reads that first frame, hands link streams to the links, and
gives every other stream to membership as if unread (`ReplayStream`).

Anyone who reaches the port can open connections, so those still waiting for their
first frame are bounded (`MAX_UNIDENTIFIED`) and a newcomer evicts the one that has
waited longest: connections held open idle, or trickling bytes, cannot keep members
out, since a member's first frame arrives within a round trip, long before its
connection is the oldest.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

import trio

from .links import Links
from .transport import FrameError, Transport, receive_frame

MAX_UNIDENTIFIED = 32  # streams at once whose first frame has not arrived yet; a newcomer evicts the oldest


class ReplayStream(trio.abc.Stream):
    """A stream whose first bytes were read already: they are received again first."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self._stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            n = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:n], self._head[n:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self._stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class DemuxTransport:
    """The cluster transport, with link streams taken out before membership sees them."""

    def __init__(self, inner: Transport, links: Links, *, first_frame_timeout: float, max_frame: int) -> None:
        self._inner = inner
        self._links = links
        self._timeout = first_frame_timeout
        self._max_frame = max_frame
        self._waiting: dict[int, trio.CancelScope] = {}  # streams waiting for their first frame, oldest first
        self._ids = itertools.count()
        self.address = inner.address
        self.dropped = 0  # streams whose first frame did not come (in time) or was malformed
        self.evicted = 0  # streams that waited longest when a newcomer needed their place

    async def send_packet(self, address: str, data: bytes) -> None:
        await self._inner.send_packet(address, data)

    async def receive_packet(self) -> tuple[str, bytes]:
        return await self._inner.receive_packet()

    async def connect(self, address: str) -> trio.abc.Stream:
        return await self._inner.connect(address)

    async def serve_streams(
        self, handler: Callable[[trio.abc.Stream], Awaitable[None]], *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async def demux(stream: trio.abc.Stream) -> None:
            if len(self._waiting) >= MAX_UNIDENTIFIED:
                self._waiting.pop(next(iter(self._waiting))).cancel()
                self.evicted += 1
            key = next(self._ids)
            scope = self._waiting[key] = trio.CancelScope(deadline=trio.current_time() + self._timeout)
            frame: bytes | None = None
            try:
                with scope:
                    frame = await receive_frame(stream, self._max_frame)
            except FrameError:
                frame = None
            finally:
                self._waiting.pop(key, None)
            if frame is None:
                self.dropped += 1
                await trio.aclose_forcefully(stream)
                return
            hello = self._links.open_hello(frame)
            if hello is not None:
                peer, boot = hello
                await self._links.serve_inbound(peer, stream, boot)
                return
            head = len(frame).to_bytes(4, "big") + frame
            await handler(ReplayStream(stream, head))

        await self._inner.serve_streams(demux, task_status=task_status)
