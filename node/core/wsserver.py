"""The chat WebSocket listener: bare trio-websocket, one `Session` per connection."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from .errors import CLOSE_INTERNAL
from .session import Session

if TYPE_CHECKING:
    from ..app import Node

log = logging.getLogger(__name__)


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


def peer_address(request: WebSocketRequest) -> str:
    """The client's address, or "" if it has already hung up (getpeername fails then)."""
    try:
        return str(request.remote.address)
    except OSError:
        return ""


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def serve_chat_socket(
    node: Node,
    *,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept chat connections until cancelled; reports the bound port when ready.

    Connection handlers run in `handler_nursery`, so cancelling this function stops
    accepting without cutting connections that are being closed gracefully.
    """
    cfg = node.config.websocket
    limits = node.config.limits
    sock = trio.socket.socket(family_of(cfg.host), socket.SOCK_STREAM)
    tune_listen_socket(sock, cfg.tcp_user_timeout)
    await sock.bind((cfg.host, cfg.port))
    sock.listen(4096)
    port = sock.getsockname()[1]

    async def handler(request: WebSocketRequest) -> None:
        # An exception escaping a trio-websocket handler would crash the whole server.
        try:
            if request.path.split("?", 1)[0] != cfg.path:
                await request.reject(404, body=b"not found")
                return
            if node.shutdown_requested.is_set():
                await request.reject(503, body=b"shutting down")
                return
            remote = peer_address(request)
            ws = await request.accept()
        except ConnectionClosed:
            return
        try:
            await Session(node, ws, remote).run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("chat session crashed")
            with trio.move_on_after(1):
                await ws.aclose(CLOSE_INTERNAL, "internal error")

    server = WebSocketServer(
        handler,
        [trio.SocketListener(sock)],
        handler_nursery=handler_nursery,
        message_queue_size=4,
        max_message_size=limits.max_frame_bytes,
        receive_buffer_size=65_536,
        connect_timeout=limits.hello_timeout,
        disconnect_timeout=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(port)
