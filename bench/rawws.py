"""A minimal many-connection WebSocket client on one selector loop, for load generation.

A trio-websocket client spends about as much CPU per frame as the server, so a benchmark
driven by it measures the client. This one sends pre-built frames (masked with a zero
key, which RFC 6455 permits) and parses only frame headers, so the node under test is
the bottleneck. It supports what the benchmarks need and nothing more: text frames,
ping/pong and close; no extensions, no fragmentation.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

ZERO_MASK = b"\x00\x00\x00\x00"


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + ZERO_MASK + payload


def upgrade_request(url: str) -> bytes:
    parts = urlsplit(url)
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Conn:
    __slots__ = ("closed", "loop", "on_close", "on_open", "on_text", "rbuf", "sock", "state", "wbuf")

    def __init__(self, loop: Loop, sock: socket.socket, on_text: Callable[[Conn, bytes], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.on_text = on_text
        self.closed = False
        self.state: object = None
        self.on_open: Callable[[Conn], None] | None = None  # set while the upgrade is pending
        self.on_close: Callable[[Conn], None] | None = None

    def send_text(self, payload: bytes) -> None:
        self.send_raw(text_frame(payload))

    def send_raw(self, data: bytes) -> None:
        if self.closed:
            return
        if self.wbuf:
            self.wbuf += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self.wbuf += data[sent:]
            self.loop.sel.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        del self.wbuf[:sent]
        if not self.wbuf:
            self.loop.sel.modify(self.sock, selectors.EVENT_READ, self)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.rbuf += data
        if self.on_open is not None and not self._upgraded():
            return
        buf = self.rbuf
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.on_text(self, payload)
            elif opcode == 0x9:
                self.send_raw(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + ZERO_MASK + payload)
            elif opcode == 0x8:
                self.close()
                return
        del buf[:pos]

    def _upgraded(self) -> bool:
        """Consume the 101 response of a non-blocking connect; True once it is done."""
        end = self.rbuf.find(b"\r\n\r\n")
        if end < 0:
            return False
        ok = self.rbuf.startswith(b"HTTP/1.1 101")
        del self.rbuf[: end + 4]
        on_open, self.on_open = self.on_open, None
        if not ok:
            self.close()
            return False
        on_open(self)
        return not self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.loop.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            if self.on_close is not None:
                self.on_close(self)


class Loop:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []

    def connect(self, url: str, on_text: Callable[[Conn, bytes], None]) -> Conn:
        """Open a WebSocket (blocking handshake), then switch it to the loop."""
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(upgrade_request(url))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            response += chunk
        head, _, rest = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        sock.setblocking(False)
        conn = Conn(self, sock, on_text)
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.conns.append(conn)
        if rest:
            conn.rbuf += rest
        return conn

    def open(self, url: str, on_open: Callable[[Conn], None], on_text: Callable[[Conn, bytes], None]) -> Conn:
        """Open a WebSocket without blocking: `on_open(conn)` runs once the upgrade is
        answered (a failed upgrade just closes the connection)."""
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(self, sock, on_text)
        conn.on_open = on_open
        try:
            sock.connect((parts.hostname, parts.port or 80))
        except BlockingIOError:
            pass
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.conns.append(conn)
        conn.send_raw(upgrade_request(url))  # queued until the connect completes
        return conn

    def run(self, until: float, tick: Callable[[float], float | None] | None = None) -> None:
        """Serve sockets until `until` (perf_counter). `tick(now)` may return the next
        time it wants to run."""
        next_tick = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= until:
                return
            if tick is not None and now >= next_tick:
                wanted = tick(now)
                next_tick = wanted if wanted is not None else until
            timeout = max(0.0, min(until, next_tick if tick else until) - time.perf_counter())
            for key, mask in self.sel.select(timeout):
                conn = key.data
                if mask & selectors.EVENT_WRITE:
                    conn._flush()
                if mask & selectors.EVENT_READ and not conn.closed:
                    conn._readable()

    def close_all(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()
