"""A device's connection to a node without sockets: what a `Session` reads and writes.

The real `Session` (node/core/session.py) talks to a `WebSocket` through three calls:
`get_message`, `send_message` and `aclose`. `MemoryWebSocket` is that surface over two
bounded trio channels, and `ClientEnd` is the device's side. A paused node neither
reads nor writes until its pause ends; a crashed node's end is closed by its owner, and
the device then reads the end of the connection, as after a TCP reset.
"""

from __future__ import annotations

import trio

from ...core.websocket import ABNORMAL_CLOSURE, ConnectionClosed
from ..memnet import Stall

FRAMES_IN_FLIGHT = 256  # each direction; a full channel makes the writer wait, as a socket buffer would


class WireConnection:
    """Both directions of one device connection, and how it ended."""

    def __init__(self, stall: Stall) -> None:
        self.stall = stall
        self.to_server_send, self.to_server_recv = trio.open_memory_channel[str](FRAMES_IN_FLIGHT)
        self.to_client_send, self.to_client_recv = trio.open_memory_channel[str](FRAMES_IN_FLIGHT)
        self.close_code: int | None = None

    def close_server_side(self, code: int = ABNORMAL_CLOSURE) -> None:
        """The node closed (or lost) the connection: the device reads what was sent, then the end."""
        if self.close_code is None:
            self.close_code = code
        self.to_server_recv.close()
        self.to_client_send.close()

    def close_client_side(self) -> None:
        """The device dropped the connection (a network blip, a phone going to sleep)."""
        if self.close_code is None:
            self.close_code = ABNORMAL_CLOSURE
        self.to_server_send.close()
        self.to_client_recv.close()


class MemoryWebSocket:
    """The node's end, as `Session` uses it."""

    def __init__(self, wire: WireConnection) -> None:
        self._wire = wire

    async def get_message(self) -> str:
        try:
            text = await self._wire.to_server_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionClosed(self._wire.close_code or ABNORMAL_CLOSURE) from None
        await self._wire.stall.wait_unstalled()
        return text

    # No write without waiting: the session's writer task sends everything, on the
    # simulation's clock and stalls (`Session` asks before it sends from the sequencer).
    can_send_nowait = False
    rest_pending = False

    async def send_rest(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_message(self, text: str | bytes) -> None:
        await self._wire.stall.wait_unstalled()
        if isinstance(text, bytes):
            text = text.decode()
        try:
            await self._wire.to_client_send.send(text)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionClosed(self._wire.close_code or ABNORMAL_CLOSURE) from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self._wire.close_server_side(code)
        await trio.lowlevel.checkpoint()


class ClientEnd:
    """The device's end: send frames, read frames until the connection ends."""

    def __init__(self, wire: WireConnection) -> None:
        self._wire = wire

    async def send(self, text: str) -> bool:
        """False if the connection is gone (the frame is lost)."""
        try:
            await self._wire.to_server_send.send(text)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def receive(self) -> str | None:
        """The next frame, or None once the connection has ended."""
        try:
            return await self._wire.to_client_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            return None

    def close(self) -> None:
        self._wire.close_client_side()
