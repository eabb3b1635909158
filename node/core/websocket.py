"""The chat socket's WebSocket layer: websockets' sans-I/O protocol on a trio socket.

trio-websocket gives every connection a reader task and a message channel of its own,
on top of the session's tasks. Here nothing runs on its own: the session's reader task
parses frames as it reads them and its writer task sends. The protocol work (the HTTP
upgrade, framing, masking, size limits, the close handshake, answering pings) is done by
the `websockets` package's sans-I/O `ServerProtocol`, whose frame codec costs about half
of wsproto's per small frame (its unmasking is in C; bench/README.md), and which keeps
no state of its own between frames beyond a small buffer.

Ordinary frames take a shorter path than the protocol's general parser: a whole, masked,
final text frame within the size limit is unmasked here (websockets' C `apply_mask`), and a
server frame is framed here (a header and the payload), about a sixth of the cost of
websockets' generator-based parser and serializer per small frame (bench/README.md).
Everything else (control frames, fragments, binary frames, anything malformed) goes to the
protocol, a whole frame at a time, so that its parser is always between frames and answers
errors exactly as it would have; a frame too big or malformed in its header hands the rest
of the connection to it.

Once open, the socket is read and written directly (`os.read`/`os.write` on its
non-blocking descriptor) rather than through trio's SocketStream, which costs a failed
`recv` and a scheduler round per read and per write: a read that drained the socket
waits for readiness before the next one, and a write that the kernel takes whole (the
usual case) returns without yielding.

Clients (node/client.py, the tests) keep using trio-websocket.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import logging
import os
import re
import socket
import time

import trio
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import BINARY, CLOSE, CONT, TEXT, CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (websockets without its C extension)
    from websockets.utils import apply_mask

RECEIVE_BYTES = 65_536
CLOSE_TIMEOUT = 2.0  # how long to wait for the peer's answer to our close frame
LINGER_TIMEOUT = 1.0  # ... and for the end of what a peer we closed on was still sending
LINGER_BYTES = 1 << 20  # ... of which this much at most is read and dropped
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009

_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_NO_HEADERS = Headers()

#: websockets logs every connection opened and closed at INFO: too much for a chat node.
_log = logging.getLogger(__name__ + ".protocol")
_log.setLevel(logging.WARNING)


class ConnectionClosed(Exception):
    """The connection is closed (by the peer, by us, or by the network)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Upgrade:
    """A valid WebSocket upgrade request read from a new connection, to accept or reject."""

    __slots__ = ("_response", "host", "origin", "path", "protocol", "stream")

    def __init__(self, stream: trio.SocketStream, protocol: ServerProtocol | None, path: str,
                 response: Response | bytes, host: str = "", origin: str | None = None) -> None:
        self.stream = stream
        self.protocol = protocol  # None: the request took the fast path (`_quick_upgrade`)
        self.path = path
        self._response: Response | bytes | None = response  # the 101 answer, sent by `accept`
        self.host = host  # the Host header
        self.origin = origin  # the Origin header (a browser sends one; None: absent)

    async def accept(self, *, max_message_size: int) -> WebSocket:
        """Open the WebSocket (larger messages, even in fragments, close it with 1009)."""
        response, self._response = self._response, None  # the handshake's request and headers go with it
        assert response is not None, "already accepted"
        if isinstance(response, bytes):  # the fast path: a protocol that starts open
            ws = WebSocket(self.stream, ServerProtocol(state=State.OPEN, max_size=max_message_size, logger=_log))
            await ws._send_bytes(response)
            return ws
        protocol, self.protocol = self.protocol, None
        assert protocol is not None
        protocol.max_message_size = max_message_size
        protocol.send_response(response)
        ws = WebSocket(self.stream, protocol)
        await ws._flush()
        return ws

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with a plain HTTP error; the caller closes the stream."""
        assert self._response is not None, "already accepted"
        protocol = self.protocol or ServerProtocol(logger=_log)
        response = protocol.reject(status, body.decode())
        protocol.send_response(response)
        await _send_handshake(self.stream, protocol)


# The fast path of the opening handshake (`_quick_upgrade`): what websockets' parser and
# `ServerProtocol.accept` would check and answer for an ordinary upgrade request, at a
# fraction of the cost per connection (the parser, the Headers, a Date formatted per
# connection). Whatever it does not recognise goes through websockets' full handshake,
# which answers the errors.
_TOKEN = re.compile(rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_PATH = re.compile(rb"[\x21-\x7e]+")
_MAX_HEADERS = 128
_MAX_LINE = 8192
_SINGLE = frozenset({b"upgrade", b"sec-websocket-key", b"sec-websocket-version", b"host", b"origin"})
_FALL_BACK = frozenset({b"transfer-encoding", b"content-length", b"sec-websocket-protocol"})
_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date[1]


def _quick_upgrade(data: bytes) -> tuple[str, bytes, str, str | None] | None:
    """(path, the 101 answer, Host, Origin) for a whole, ordinary upgrade request, as
    websockets would accept it (no subprotocol, no extension); None for anything else."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or rest:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1 or any(len(line) > _MAX_LINE for line in lines):
        return None
    method, _, rest_line = lines[0].partition(b" ")
    path, _, version = rest_line.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not _PATH.fullmatch(path):
        return None
    headers: dict[bytes, bytes] = {}
    connection = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        key = name.lower()
        if key in _FALL_BACK or (key in _SINGLE and key in headers):
            return None
        if key == b"connection":
            options = [option.strip(b" \t") for option in value.split(b",")]
            if not all(_TOKEN.fullmatch(option) for option in options if option):
                return None
            connection = connection or any(option.lower() == b"upgrade" for option in options)
        headers[key] = value
    ws_key = headers.get(b"sec-websocket-key", b"")
    try:
        valid_key = len(base64.b64decode(ws_key, validate=True)) == 16
    except binascii.Error:
        return None
    if (not connection or headers.get(b"upgrade", b"").lower() != b"websocket" or not valid_key
            or headers.get(b"sec-websocket-version") != b"13"):
        return None
    origin = headers.get(b"origin")
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nDate: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: %s\r\n\r\n" % (_http_date(), accept_key(ws_key.decode()).encode()))
    return (path.decode(), answer, headers.get(b"host", b"").decode("iso-8859-1"),
            None if origin is None else origin.decode("iso-8859-1"))


async def _send_handshake(stream: trio.SocketStream, protocol: ServerProtocol) -> None:
    data = b"".join(protocol.data_to_send())
    if data:
        try:
            await stream.send_all(data)
        except _TRANSPORT_ERRORS:
            pass


async def read_upgrade(stream: trio.SocketStream, *, timeout: float) -> Upgrade | None:
    """Read the opening handshake; None if the peer left, stalled or spoke no WebSocket
    (a request that is HTTP but not a valid upgrade gets a 4xx answer first)."""
    with trio.move_on_after(timeout):
        try:
            data = await stream.receive_some(RECEIVE_BYTES)
        except _TRANSPORT_ERRORS:
            return None
        if not data:
            return None
        quick = _quick_upgrade(data)
        if quick is not None:  # the usual case: the whole request in one read
            path, answer, host, origin = quick
            return Upgrade(stream, None, path, answer, host, origin)
        protocol = ServerProtocol(max_size=None, logger=_log)
        protocol.receive_data(data)
        try:
            while True:
                for event in protocol.events_received():
                    if isinstance(event, Request):
                        response = protocol.accept(event)
                        if response.status_code != 101:
                            protocol.send_response(response)
                            await _send_handshake(stream, protocol)
                            return None
                        # The protocol's parser keeps the request for the connection's life:
                        # without its headers it weighs about 1.5 KiB less.
                        host, origin = event.headers.get("Host", ""), event.headers.get("Origin")
                        event.headers = _NO_HEADERS
                        return Upgrade(stream, protocol, event.path, response, host, origin)
                if protocol.handshake_exc is not None:  # not HTTP, or headers too large
                    await _send_handshake(stream, protocol)
                    return None
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return None
                protocol.receive_data(data)
        except _TRANSPORT_ERRORS:
            pass
    return None


def _text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (a server's), as websockets would frame it."""
    n = len(payload)
    if n < 126:
        return b"\x81" + _SHORT_LENGTHS[n] + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


_SHORT_LENGTHS = [bytes((n,)) for n in range(126)]


class WebSocket:
    """One open WebSocket: one task may read while another sends."""

    __slots__ = ("_broken", "_drained", "_events", "_max_size", "_needed", "_partial", "_parts", "_protocol", "_rest",
                 "_send_busy", "_send_free", "_socket", "_stream", "_text", "_whole_frames")

    def __init__(self, stream: trio.SocketStream, protocol: ServerProtocol) -> None:
        self._stream = stream
        self._socket = stream.socket
        self._protocol = protocol
        self._events: list = []  # text payloads (bytes) and protocol frames not yet handled, the next one last
        self._partial: bytearray | None = None  # the start of a frame whose end has not arrived yet
        self._needed = 0  # ... and how long it must grow before it is looked at again
        self._whole_frames = True  # False: everything read goes straight to the protocol (see `_frames`)
        size = protocol.max_message_size
        self._max_size = size if size is not None else 1 << 64
        self._parts: list[bytes] = []  # fragments of the message being received
        self._text = True  # the message being received is text
        self._drained = True  # the last read emptied the socket: wait for readiness first
        self._send_busy = False  # a frame is partly written: others wait for `_send_free`
        self._send_free: trio.Event | None = None
        self._rest: bytes | None = None  # the unwritten end of a `send_nowait`: goes out first
        self._broken = False  # a send was cut off mid-frame: only closing the TCP is safe now

    # -- receiving -------------------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        """The next whole message (text as str, binary as bytes); answers pings on the way.

        Raises ConnectionClosed when the peer closes (after answering its close frame),
        when the connection drops (1006), or when the peer breaks the protocol or sends
        a message over the size limit (the connection is then closed with 1002, 1007 or
        1009).
        """
        protocol = self._protocol
        while True:
            events = self._events
            while events:  # one read may bring several frames: the rest wait for the next call
                frame = events.pop()
                if type(frame) is bytes:  # a whole text message (`_frames`)
                    self._text = True
                    data = frame
                elif (opcode := frame.opcode) is TEXT or opcode is BINARY:
                    self._text = opcode is TEXT
                    if not frame.fin:
                        self._parts.append(frame.data)
                        continue
                    data = frame.data
                elif opcode is CONT:
                    self._parts.append(frame.data)
                    if not frame.fin:
                        continue
                    data = b"".join(self._parts)
                    self._parts.clear()
                elif opcode is CLOSE:
                    await self._closed()
                    continue
                else:  # ping (the protocol queued the pong) or pong
                    continue
                if not self._text:
                    return data
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                    await self._closed()
            if protocol.writes:  # pongs, our answer to a close, a close for a protocol error
                await self._flush()
            if protocol.state is not State.OPEN:
                await self._closed()
            data = await self._receive()
            if not data:
                protocol.receive_eof()  # the peer is gone: 1006
                events = protocol.events_received()
            elif self._whole_frames:
                events = self._frames(data)
            else:
                protocol.receive_data(data)
                events = protocol.events_received()
            events.reverse()
            self._events = events

    # -- reading for the read hub (node/core/readhub.py) ------------------------------------

    def fileno(self) -> int:
        return self._socket.fileno()

    def between_messages(self) -> bool:
        """Nothing read waits to be handled, no message is half received, nothing is to be
        answered, and frames are read the ordinary way: another task may read for now."""
        protocol = self._protocol
        return (not self._events and not self._parts and self._whole_frames and protocol.state is State.OPEN
                and not protocol.writes)

    def read_now(self) -> list | None:
        """What the socket has now, as `_frames` gives it (text payloads as bytes, the
        protocol's events for other frames): [] if nothing; None at the end of the
        connection (left for `get_message` to find). Only `between_messages`."""
        fd = self._socket.fileno()
        if fd < 0:
            return None
        try:
            data = os.read(fd, RECEIVE_BYTES)
        except BlockingIOError:
            return []
        except OSError:
            return None
        if not data:
            return None
        return self._frames(data)

    def put_back(self, items: list) -> None:
        """Items of `read_now` not handled: `get_message` returns them first, in order."""
        items.reverse()
        self._events = items + self._events
        self._drained = False  # (a read first: cheap, and the socket may have more)

    def _frames(self, data: bytes) -> list:
        """What `data` completes, in order: the payload of each whole, final, masked text
        frame (as bytes), and the protocol's events for every other whole frame, fed to it
        one frame at a time. A frame's start waits in `_partial` for its end (at most the
        size limit). A header the protocol must refuse (unmasked, reserved bits, over the
        limit) hands it everything from there on."""
        partial = self._partial
        if partial is not None:  # (grown in place: a frame trickling in is copied once, not per read)
            partial += data
            if len(partial) < self._needed:
                return []
            data = bytes(partial)
            self._partial = None
        protocol = self._protocol
        out: list = []
        end = len(data)
        pos = 0
        needed = 2
        while end - pos >= 2:
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            extended = 0 if length < 126 else 2 if length == 126 else 8  # bytes of a longer length
            if extended:
                if end - pos < 2 + extended:
                    needed = 2 + extended
                    break
                length = int.from_bytes(data[pos + 2:pos + 2 + extended], "big")
            head = pos + 6 + extended  # (after the mask)
            if not second & 0x80 or first & 0x70 or length > self._max_size:
                self._whole_frames = False  # the protocol answers it (1002, 1009) and closes
                protocol.receive_data(data[pos:])
                out.extend(protocol.events_received())
                return out
            stop = head + length
            if stop > end:
                needed = stop - pos
                break
            if first == 0x81 and protocol.current_size is None and protocol.state is State.OPEN:
                out.append(apply_mask(data[head:stop], data[head - 4:head]))
            else:
                protocol.receive_data(data[pos:stop])
                out.extend(protocol.events_received())
            pos = stop
        if pos < end:
            self._partial = bytearray(data[pos:])
            self._needed = needed
        return out

    async def _closed(self) -> None:
        """The peer closed, broke the protocol, or dropped the connection: send what the
        protocol answers (our close frame), drop the TCP, and raise."""
        protocol = self._protocol
        await self._flush()
        if protocol.close_rcvd is None and protocol.close_sent is not None and not self._broken:
            await self._linger()
        self._stream.socket.close()  # (no checkpoint: the caller is on its way out anyway)
        if protocol.close_rcvd is not None:
            raise ConnectionClosed(protocol.close_rcvd.code, protocol.close_rcvd.reason)
        if protocol.close_sent is not None:
            raise ConnectionClosed(protocol.close_sent.code, protocol.close_sent.reason)
        raise ConnectionClosed(ABNORMAL_CLOSURE, "connection lost")

    async def _linger(self) -> None:
        """We closed (the peer broke the protocol, or sent a frame over the limit) while the
        peer may still be sending. Closing the socket with its data unread would reset the
        connection, and the peer would lose our close frame with it; so end our side and
        drop what comes until the peer closes too, for a moment at most."""
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            return
        dropped = 0
        with trio.move_on_after(LINGER_TIMEOUT):
            while dropped < LINGER_BYTES:
                data = await self._receive()
                if not data:
                    return
                dropped += len(data)

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

    # -- sending ---------------------------------------------------------------------------

    async def send_message(self, message: str | bytes) -> None:
        """Send one text message (bytes: already UTF-8); ConnectionClosed if the
        connection is no longer open."""
        if self._protocol.state is not State.OPEN:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection is closing")
        await self._send_bytes(self._framed(message.encode() if isinstance(message, str) else message))

    def _framed(self, message: bytes) -> bytes:
        """`message` as a text frame, after what the protocol has queued (a pong)."""
        frame = _text_frame(message)
        protocol = self._protocol
        return b"".join(protocol.data_to_send()) + frame if protocol.writes else frame

    @property
    def can_send_nowait(self) -> bool:
        """No other write is under way or left unfinished."""
        return not self._send_busy and self._rest is None

    def send_nowait(self, message: bytes) -> None:
        """Send one text message (UTF-8) from any task without waiting; only when
        `can_send_nowait`. If the kernel takes only part of it, the rest goes out first
        with the next send (see `rest_pending`: someone must then call `send_rest`).
        ConnectionClosed as `send_message`.
        """
        assert self.can_send_nowait
        protocol = self._protocol
        if protocol.state is not State.OPEN or self._broken:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection is closing")
        data = self._framed(message)
        sent = self._write(data)
        if sent < len(data):
            self._rest = data[sent:]

    @property
    def rest_pending(self) -> bool:
        """Part of a `send_nowait` frame is still to be written."""
        return self._rest is not None

    async def send_rest(self) -> None:
        """Write the rest of a partly written `send_nowait` frame (waits for the socket)."""
        if self._rest is not None:
            await self._send_bytes(b"")

    async def _flush(self) -> None:
        """Write what the protocol has queued (b"" in it means: close the TCP after)."""
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._send_bytes(data)

    async def _send_bytes(self, data: bytes) -> None:
        """Write whole frames; no other frame's bytes get in between."""
        while self._send_busy:  # another task is halfway through a frame (rare: pings, close)
            if self._send_free is None:
                self._send_free = trio.Event()
            await self._send_free.wait()
        if self._broken:
            raise ConnectionClosed(ABNORMAL_CLOSURE, "connection broken")
        if self._rest is not None:  # a frame's end from `send_nowait` goes first
            data, self._rest = self._rest + data, None
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
        protocol = self._protocol
        try:
            if self._partial is not None:  # the protocol reads on from here, between frames
                partial, self._partial = bytes(self._partial), None
                protocol.receive_data(partial)
            if protocol.state is State.OPEN and not self._broken:
                protocol.send_close(code, reason)
                await self._flush()
                with trio.move_on_after(CLOSE_TIMEOUT):
                    while protocol.close_rcvd is None and protocol.state is not State.CLOSED:
                        data = await self._receive()
                        if not data:
                            break
                        protocol.receive_data(data)  # messages still in flight are dropped
                        protocol.events_received()
        except (ConnectionClosed, InvalidState, ProtocolError, EOFError):
            pass
        finally:
            self._stream.socket.close()
