"""Connection limits shared by both listeners (the chat socket and HTTP).

Every connection is a file descriptor and a task. Without limits, one client can open
sockets until the node hits its open-files limit, and then nothing works: no client, no
admin, no log file, no LMDB reader. So each accepted connection passes `admit` before
anything else is done with it:

- **per client address**: at most `limits.max_connections_per_address` open connections
  over both ports together. IPv6 clients are counted per /64 (one subscriber's network:
  anyone with one address has 2^64 more), IPv4-mapped IPv6 as IPv4. Addresses in
  `http.trusted_proxies` (a reverse proxy carries many clients) are not capped.
- **a reserve of file descriptors**: descriptors are handed out lowest-first, so a new
  connection's descriptor number says how many are in use below it. When fewer than
  `limits.reserved_fds` would be left above it, new connections are refused, except from
  the node's own machine (127.0.0.1 and ::1: the operator's admin requests), which are
  refused only when fewer than half the reserve would be left. The rest stays for the
  node's own files, logs and LMDB readers.

A refused connection is closed at once, before a byte is read. Refusals are counted and
logged at most once a minute.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # seconds between two log lines about refused connections
LOCAL = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ConnectionLimits:
    def __init__(self, per_address: int, reserved_fds: int, trusted: Iterable[str] = ()) -> None:
        self.per_address = per_address
        self.reserved_fds = reserved_fds
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]
        self._open: dict[str, int] = {}
        self.refused = {"per_address": 0, "fd_reserve": 0}
        self._last_log = -LOG_EVERY
        self._unlogged = 0

    @classmethod
    def of(cls, config: Any) -> ConnectionLimits:
        return cls(config.limits.max_connections_per_address, config.limits.reserved_fds, config.http.trusted_proxies)

    def admit(self, peer: Address, fd: int) -> str | None:
        """Count a new connection from `peer` on descriptor `fd`, or say why it is refused."""
        left = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - fd - 1
        reserve = self.reserved_fds // 2 if peer in LOCAL else self.reserved_fds
        if left < reserve:
            return self._refuse("fd_reserve", peer, f"{left} file descriptors left")
        key = _key(peer)
        count = self._open.get(key, 0)
        if count >= self.per_address and not any(peer in net for net in self.trusted):
            return self._refuse("per_address", peer, f"{count} connections open from {key}")
        self._open[key] = count + 1
        return None

    def release(self, peer: Address) -> None:
        key = _key(peer)
        count = self._open.pop(key, 0) - 1
        if count > 0:
            self._open[key] = count

    def open_from(self, peer: str) -> int:
        """Open connections counted for an address (tests, the admin)."""
        return self._open.get(_key(ipaddress.ip_address(peer)), 0)

    def statistics(self) -> dict[str, Any]:
        return {"addresses": len(self._open), "refused": dict(self.refused)}

    def _refuse(self, reason: str, peer: Address, detail: str) -> str:
        self.refused[reason] += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            log.warning("refused %d connection(s) in the last minute; latest from %s: %s",
                        self._unlogged, peer, detail)
            self._last_log, self._unlogged = now, 0
        return reason

    def guard(self, handler: Callable[[trio.SocketStream], Awaitable[Any]]) -> Callable[[trio.SocketStream], Awaitable[None]]:
        """Wrap a listener's connection handler: refused connections are closed at once,
        admitted ones are counted until the handler returns."""

        async def guarded(stream: trio.SocketStream) -> None:
            peer = peer_address(stream)
            if peer is None:
                await stream.aclose()
                return
            if self.admit(peer, stream.socket.fileno()) is not None:
                await trio.aclose_forcefully(stream)
                return
            try:
                await handler(stream)
            finally:
                self.release(peer)

        return guarded


def peer_address(stream: trio.SocketStream) -> Address | None:
    """The client's IP address (IPv4-mapped IPv6 as IPv4), or None if the socket is gone."""
    try:
        peer = ipaddress.ip_address(stream.socket.getpeername()[0].split("%", 1)[0])
    except (OSError, ValueError, IndexError):
        return None
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        return peer.ipv4_mapped
    return peer


def _key(peer: Address) -> str:
    """What is counted: the IPv4 address, or the IPv6 /64."""
    if isinstance(peer, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((peer, 64), strict=False))
    return str(peer)
