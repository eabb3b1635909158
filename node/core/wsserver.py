"""The chat WebSocket listener: one `Session` per connection, over `websocket.py`."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..config import listen_error
from .errors import CLOSE_INTERNAL
from .session import Session
from .websocket import ConnectionClosed, read_upgrade

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

ACCEPT_BURST = 100  # connections accepted per wake-up of the listener
ACCEPT_PAUSE = 0.1  # seconds to wait after accept ran out of descriptors or memory (as trio.serve_listeners)
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# Errors of one connection (reset or refused before it was accepted), as trio.SocketListener ignores them.
ACCEPT_IGNORED_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))


def tune_listen_socket(sock: socket.socket | trio.socket.SocketType, user_timeout: float) -> None:
    """Options inherited by accepted sockets: cut peers that stall (TCP_USER_TIMEOUT) or
    vanish (keepalive), so a dead client never holds a send forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve_chat_socket(
    node: Services,
    *,
    handler_nursery: trio.Nursery,
    origin_allowed: Callable[[str | None, str], bool] = lambda origin, host: True,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept chat connections until cancelled; reports the bound port when ready.

    Connection handlers run in `handler_nursery`, so cancelling this function stops
    accepting without cutting connections that are being closed gracefully.
    `origin_allowed(origin, host)` says whether a handshake's Origin and Host headers
    may open a socket (the web layer decides: node/web/cors.py); others get 403.
    """
    cfg = node.config.websocket
    limits = node.config.limits
    raw = socket.socket(family_of(cfg.host), socket.SOCK_STREAM)
    sock = trio.socket.from_stdlib_socket(raw)  # (the same socket: bound and waited on through trio)
    tune_listen_socket(sock, cfg.tcp_user_timeout)
    try:
        await sock.bind((cfg.host, cfg.port))
    except OSError as exc:
        sock.close()
        raise listen_error("websocket", cfg.host, cfg.port, exc) from None
    sock.listen(4096)
    port = sock.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        # An exception escaping a connection handler would take the whole listener down.
        upgrade = await read_upgrade(stream, timeout=limits.hello_timeout)
        if upgrade is None:
            return
        if upgrade.path.split("?", 1)[0] != cfg.path:
            await upgrade.reject(404, b"not found")
            return
        if not origin_allowed(upgrade.origin, upgrade.host):
            await upgrade.reject(403, b"origin not allowed")
            return
        if node.shutdown_requested.is_set():
            await upgrade.reject(503, b"shutting down")
            return
        try:
            ws = await upgrade.accept(max_message_size=limits.max_frame_bytes)
        except ConnectionClosed:
            return
        try:
            await Session(node, ws).run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("chat session crashed")
            with trio.move_on_after(1):
                await ws.aclose(CLOSE_INTERNAL, "internal error")

    guarded = node.connections.guard(handler)

    async def connection(conn: socket.socket) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
        try:
            await guarded(stream)
        finally:
            stream.socket.close()  # at once: no cancelled checkpoint, as trio's aclose_forcefully does

    try:
        task_status.started(port)
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BURST):  # what is waiting, without a scheduler round each
                try:
                    conn, _ = raw.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in ACCEPT_CAPACITY_ERRNOS:  # out of descriptors or memory: wait
                        log.error("accept: %s; trying again in %s s", os.strerror(exc.errno or 0), ACCEPT_PAUSE)
                        await trio.sleep(ACCEPT_PAUSE)
                        break
                    if exc.errno in ACCEPT_IGNORED_ERRNOS:  # that connection failed, not the listener
                        continue
                    raise
                handler_nursery.start_soon(connection, conn)
    finally:
        sock.close()
