"""The chat socket's WebSocket layer: wsproto driven straight from a trio stream.

trio-websocket gives every connection a reader task and a message channel of its own,
on top of the session's tasks. Measured on this stack (echo over loopback, bench/README.md),
driving wsproto directly costs about 30 % less CPU per frame and half the memory per idle
connection. So here nothing runs on its own: the session's reader task parses frames as
it reads them, its writer task sends, and a lock keeps the two from interleaving bytes
(the reader answers pings and close frames). wsproto does all of the protocol work:
the HTTP upgrade, framing, masking, UTF-8 checks, the close handshake.

Once open, the socket is read and written directly (`os.read`/`os.write` on its
non-blocking descriptor) rather than through trio's SocketStream, which costs a failed
`recv` and a scheduler round per read and per write: a read that drained the socket
waits for readiness before the next one, and a write that the kernel takes whole (the
usual case) returns without yielding. Measured in bench/README.md.

Clients (node/client.py, the tests) keep using trio-websocket.
"""

from __future__ import annotations

import os

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES = 65_536
CLOSE_TIMEOUT = 2.0  # how long to wait for the peer's answer to our close frame
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009

_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class ConnectionClosed(Exception):
    """The connection is closed (by the peer, by us, or by the network)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Upgrade:
    """An HTTP upgrade request read from a new connection, to accept or reject."""

    __slots__ = ("path", "protocol", "stream")

    def __init__(self, stream: trio.SocketStream, protocol: WSConnection, path: str) -> None:
        self.stream = stream
        self.protocol: WSConnection | None = protocol
        self.path = path

    async def accept(self, *, max_message_size: int) -> WebSocket:
        """Open the WebSocket. The upgrade is spent afterwards: it lets go of the
        handshake's HTTP parser (about 1.5 KiB per connection) and keeps only the
        WebSocket layer, even while the caller still holds this object."""
        protocol, self.protocol = self.protocol, None
        answer = protocol.send(AcceptConnection())
        connection = protocol.connection
        assert connection is not None
        ws = WebSocket(self.stream, connection, max_message_size)
        await ws._send_bytes(answer)
        return ws

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with a plain HTTP error; the caller closes the stream."""
        protocol = self.protocol
        assert protocol is not None, "already accepted"
        response = RejectConnection(status_code=status, headers=[(b"content-type", b"text/plain")], has_body=True)
        data = protocol.send(response) + protocol.send(RejectData(data=body))
        try:
            await self.stream.send_all(data)
        except _TRANSPORT_ERRORS:
            pass


async def read_upgrade(stream: trio.SocketStream, *, timeout: float) -> Upgrade | None:
    """Read the opening handshake; None if the peer left, stalled or spoke no WebSocket
    (a request that is HTTP but not an upgrade gets wsproto's 4xx answer first)."""
    protocol = WSConnection(ConnectionType.SERVER)
    with trio.move_on_after(timeout):
        try:
            while True:
                for event in protocol.events():
                    if isinstance(event, Request):
                        return Upgrade(stream, protocol, event.target)
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return None
                protocol.receive_data(data)
        except RemoteProtocolError as exc:
            if exc.event_hint is not None:
                try:
                    await stream.send_all(protocol.send(exc.event_hint))
                except (*_TRANSPORT_ERRORS, LocalProtocolError):
                    pass
        except _TRANSPORT_ERRORS:
            pass
    return None


class WebSocket:
    """One open WebSocket: one task may read while another sends."""

    __slots__ = ("_broken", "_drained", "_max_size", "_parts", "_protocol", "_send_busy", "_send_free", "_size",
                 "_socket", "_stream")

    def __init__(self, stream: trio.SocketStream, protocol: Connection, max_message_size: int) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._protocol = protocol
        self._max_size = max_message_size
        self._parts: list[str | bytes] = []  # fragments of the message being received
        self._size = 0
        self._drained = True  # the last read emptied the socket: wait for readiness first
        self._send_busy = False  # a frame is partly written: others wait for `_send_free`
        self._send_free: trio.Event | None = None
        self._broken = False  # a send was cut off mid-frame: only closing the TCP is safe now

    # -- receiving -------------------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        """The next whole message (text as str, binary as bytes); answers pings on the way.

        Raises ConnectionClosed when the peer closes (after answering its close frame),
        when the connection drops (1006), or when a message exceeds the size limit (the
        connection is then closed with 1009).
        """
        protocol = self._protocol
        while True:
            for event in protocol.events():
                kind = type(event)
                if kind is TextMessage or kind is BytesMessage:
                    message = self._collect(event)  # type: ignore[arg-type]
                    if message is not None:
                        return message
                    if self._size > self._max_size:
                        await self.aclose(MESSAGE_TOO_BIG, "message too big")
                        raise ConnectionClosed(MESSAGE_TOO_BIG, "message too big")
                elif kind is Ping:
                    await self._send_control(event.response())  # type: ignore[union-attr]
                elif kind is CloseConnection:
                    await self._finish_close(event)  # type: ignore[arg-type]
            data = await self._receive()
            protocol.receive_data(data or None)  # None: the peer is gone, wsproto reports 1006

    async def _receive(self) -> bytes:
        """The bytes the socket has (up to RECEIVE_BYTES); b"" once it is closed or gone.

        The descriptor is looked up before every call, with no await in between: once the
        socket is closed it reads -1, never a number since reused by another connection.
        """
        if self._drained:
            await self._wait(trio.lowlevel.wait_readable)
        else:
            await trio.lowlevel.checkpoint()  # a full buffer last time: more may be waiting
        while True:
            fd = self._socket.fileno()
            if fd < 0:
                return b""
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                self._drained = True
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except OSError:
                return b""
            self._drained = len(data) < RECEIVE_BYTES
            return data

    async def _wait(self, wait) -> None:
        """Wait for the socket to be ready; returns at once if it is closed (the syscall
        that follows then finds it so)."""
        fd = self._socket.fileno()
        if fd >= 0:
            try:
                await wait(fd)
            except trio.ClosedResourceError:
                pass

    def _collect(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        """Add a fragment; the message once it is complete (and not too big)."""
        self._size += len(event.data)
        if self._size > self._max_size:
            self._parts.clear()
            return None
        if event.message_finished:
            if not self._parts:
                self._size = 0
                return event.data
            self._parts.append(event.data)
            message = ("" if isinstance(event, TextMessage) else b"").join(self._parts)  # type: ignore[arg-type]
            self._parts.clear()
            self._size = 0
            return message
        self._parts.append(event.data)
        return None

    async def _finish_close(self, event: CloseConnection) -> None:
        """The peer closed, broke the protocol, or dropped the connection: answer with a
        close frame where one is due, then end."""
        state = self._protocol.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer's close frame: echo it
            await self._send_control(event.response())
        elif state is ConnectionState.OPEN:  # a protocol error (1002, 1007 ...): say which
            await self._send_control(CloseConnection(code=event.code, reason=(event.reason or "")[:120]))
        await self._stream.aclose()
        raise ConnectionClosed(event.code, event.reason or "")

    # -- sending ---------------------------------------------------------------------------

    async def send_message(self, text: str) -> None:
        """Send one text message; ConnectionClosed if the connection is no longer open."""
        try:
            data = self._protocol.send(TextMessage(data=text))
        except LocalProtocolError:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection is closing") from None
        await self._send_bytes(data)

    async def _send_control(self, event: CloseConnection | object) -> None:
        try:
            data = self._protocol.send(event)  # type: ignore[arg-type]
        except LocalProtocolError:
            return
        try:
            await self._send_bytes(data)
        except ConnectionClosed:
            pass

    async def _send_bytes(self, data: bytes) -> None:
        """Write a whole frame; no other frame's bytes get in between."""
        while self._send_busy:  # another task is halfway through a frame (rare: pings, close)
            if self._send_free is None:
                self._send_free = trio.Event()
            await self._send_free.wait()
        if self._broken:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection broken")
        sent = self._write(data)
        if sent == len(data):
            return  # the usual case: the kernel took it all, nothing to wait for
        self._send_busy = True
        done = False
        try:
            view = memoryview(data)[sent:]
            while view:
                await self._wait(trio.lowlevel.wait_writable)
                view = view[self._write(view):]
            done = True
        finally:
            self._send_busy = False
            if not done:
                self._broken = True
            if self._send_free is not None:
                self._send_free.set()
                self._send_free = None

    def _write(self, data: bytes | memoryview) -> int:
        """Write what the kernel takes now; ConnectionClosed if the socket is gone."""
        fd = self._socket.fileno()  # see `_receive`: never a reused descriptor
        try:
            if fd < 0:
                raise OSError("closed")
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self._broken = True
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection lost") from None

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close with `code`: send a close frame, wait briefly for the answer, drop the TCP.

        Only for when no other task is reading (the session's reader has ended)."""
        try:
            if self._protocol.state is ConnectionState.OPEN and not self._broken:
                await self._send_bytes(self._protocol.send(CloseConnection(code=code, reason=reason)))
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._await_close_answer()
        except (ConnectionClosed, LocalProtocolError, RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    async def _await_close_answer(self) -> None:
        protocol = self._protocol
        while protocol.state is not ConnectionState.CLOSED:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _TRANSPORT_ERRORS:
                return
            if not data:
                return
            protocol.receive_data(data)
            for _ in protocol.events():  # messages still in flight are dropped
                pass
