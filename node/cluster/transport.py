"""How membership reaches other nodes and tells time, behind two small interfaces.

The protocol code (membership.py) only ever uses ``Transport`` (best-effort
datagrams plus reliable streams) and ``Clock``. In production they are trio UDP and
TCP sockets and trio's clock; the simulation swaps in an in-memory network and a
clock whose node can be stalled (memnet.py), and runs the very same protocol code.

Datagrams carry probes and gossip (small, lossy, at most ``max_packet_bytes``);
streams carry full state exchanges, each a sequence of length-prefixed frames.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .config import is_loopback, join_host_port, split_host_port

log = logging.getLogger(__name__)

FRAME_HEADER = 4  # big-endian length before every stream frame


class FrameError(Exception):
    """A stream frame was too large, truncated, or the peer went away mid-frame."""


class Clock(Protocol):
    """Time as the protocol sees it. Every wait of the protocol goes through here."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...

    async def wait_event(self, event: trio.Event, deadline: float) -> bool:
        """Wait for ``event`` until ``deadline``; True if it was set in time."""
        ...


class Transport(Protocol):
    """Datagrams and streams between cluster addresses (``"host:port"`` strings)."""

    address: str  # where others reach us

    async def send_packet(self, address: str, data: bytes) -> None:
        """Best effort; never raises for an unreachable peer."""
        ...

    async def receive_packet(self) -> tuple[str, bytes]: ...

    async def connect(self, address: str) -> trio.abc.Stream: ...

    async def serve_streams(
        self, handler: Callable[[trio.abc.Stream], Awaitable[None]], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Accept streams forever, each handled in its own task of this call's nursery."""
        ...


class TrioClock:
    """trio's clock (a MockClock under tests that install one)."""

    def now(self) -> float:
        return trio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await trio.sleep_until(deadline)

    async def wait_event(self, event: trio.Event, deadline: float) -> bool:
        with trio.move_on_at(deadline):
            await event.wait()
        return event.is_set()


async def send_frame(stream: trio.abc.Stream, data: bytes) -> None:
    await stream.send_all(len(data).to_bytes(FRAME_HEADER, "big") + data)


async def receive_frame(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """One length-prefixed frame; raises FrameError on oversize, EOF or a broken stream."""
    header = await _receive_exactly(stream, FRAME_HEADER)
    size = int.from_bytes(header, "big")
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    return await _receive_exactly(stream, size)


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.receive_some(min(n - len(buf), 65_536))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise FrameError(f"stream broken: {exc}") from None
        if not chunk:
            raise FrameError("stream closed mid-frame")
        buf += chunk
    return bytes(buf)


def _source_host(bound: str) -> str | None:
    """The bound host, unless it is the unspecified address (then the system chooses)."""
    try:
        return None if ipaddress.ip_address(bound).is_unspecified else bound
    except ValueError:
        return None


class UdpTcpTransport:
    """UDP datagrams and TCP streams on one host and port, like memberlist.

    Use ``open()``: it binds both sockets, on the same port number (also when the
    configured port is 0).
    """

    def __init__(self, udp: trio.socket.SocketType, tcp: trio.socket.SocketType, advertise: str, max_packet: int):
        self._udp = udp
        self._tcp = tcp
        self.address = advertise
        self.bound = join_host_port(*tcp.getsockname()[:2])
        self._source = _source_host(tcp.getsockname()[0])
        self._max_packet = max_packet
        self.send_errors = 0

    @classmethod
    async def open(cls, host: str, port: int, advertise_host: str, advertise_port: int, max_packet: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _attempt in range(20 if port == 0 else 1):
            tcp = trio.socket.socket(family, socket.SOCK_STREAM)
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await tcp.bind((host, port))
                bound_port = tcp.getsockname()[1]
                await udp.bind((host, bound_port))
            except OSError as exc:
                tcp.close()
                udp.close()
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue  # the TCP port's UDP twin is taken: try another free port
                raise
            tcp.listen(128)
            advertise = join_host_port(advertise_host or host, advertise_port or bound_port)
            return cls(udp, tcp, advertise, max_packet)
        raise OSError(errno.EADDRINUSE, f"no free port with both UDP and TCP on {host}")

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()

    async def send_packet(self, address: str, data: bytes) -> None:
        try:
            host, port = split_host_port(address)
            await self._udp.sendto(data, (host, port))
        except (OSError, ValueError) as exc:  # unreachable, refused, bad address: UDP is best effort
            self.send_errors += 1
            log.debug("cluster: datagram to %s failed: %s", address, exc)

    async def receive_packet(self) -> tuple[str, bytes]:
        while True:
            try:
                # one byte more than allowed, so an oversized datagram is recognisable
                data, addr = await self._udp.recvfrom(self._max_packet + 1)
            except ConnectionResetError:  # an ICMP error from an earlier send; not about this read
                continue
            return join_host_port(addr[0], addr[1]), data

    async def connect(self, address: str) -> trio.abc.Stream:
        """A stream to a member. It leaves from the bound address when that names one, as
        the datagrams do, so members (and firewalls) see one address per member."""
        host, port = split_host_port(address)
        if self._source is not None and (is_loopback(host) or not is_loopback(self._source)):
            return await trio.open_tcp_stream(host, port, local_address=self._source)
        return await trio.open_tcp_stream(host, port)

    async def serve_streams(
        self,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = trio.SocketListener(self._tcp)
        await trio.serve_listeners(handler, [listener], task_status=task_status)
