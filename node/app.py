"""The node: wires storage, accounts, chats and both listeners under one nursery.

Task tree (every task has an owner):

    serve_node
    ├── storage writer (group commit)           open_storage
    ├── chat sequencer                          core nursery
    ├── sessions nursery: one task per chat WebSocket
    └── listeners nursery: trio-websocket accept loop, hypercorn (REST + web client)

Shutdown (`Node.request_shutdown`, SIGINT/SIGTERM): stop accepting; every session
finishes its in-flight sends, flushes and closes with 1001; hypercorn drains; the
sequencer and then the writer finish what is queued; LMDB closes.
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from importlib.metadata import PackageNotFoundError, version

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .config import Config
from .core.accounts import Accounts
from .core.chats import Chats
from .core.errors import CLOSE_GOING_AWAY
from .core.hub import Hub
from .core.session import CORE_FRAME_HANDLERS, FrameHandler
from .core.snowflake import SnowflakeGenerator
from .core.wsserver import family_of, serve_chat_socket, tune_listen_socket
from .storage import Storage, WriteBatch, open_storage
from .storage.keys import from_u64, u64
from .web.api import create_app

log = logging.getLogger(__name__)

try:
    VERSION = version("chatnode")
except PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"


@attrs.define(eq=False)
class Node:
    """The running node, handed to request handlers, sessions and plugins."""

    config: Config
    storage: Storage
    ids: SnowflakeGenerator
    hub: Hub
    accounts: Accounts
    chats: Chats
    frame_handlers: dict[str, FrameHandler]
    shutdown_requested: trio.Event = attrs.Factory(trio.Event)
    http_port: int = 0
    ws_port: int = 0
    version: str = VERSION
    cluster: object | None = None  # node.cluster.service.ClusterService when [cluster] enabled

    @property
    def http_url(self) -> str:
        if self.config.http.public_url:
            return self.config.http.public_url.rstrip("/")
        return f"http://{_url_host(self.config.http.host)}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return self.ws_url_for(f"{_url_host(self.config.websocket.host)}", "http")

    def ws_url_for(self, request_host: str, scheme: str) -> str:
        """The chat socket URL for a client that reached the HTTP API at `request_host`."""
        cfg = self.config.websocket
        if cfg.public_url:
            return cfg.public_url
        host = request_host.rsplit(":", 1)[0] if request_host.count(":") == 1 else request_host
        if host.startswith("[") and "]:" in host:
            host = host.split("]:")[0] + "]"
        return f"{'wss' if scheme == 'https' else 'ws'}://{host}:{self.ws_port}{cfg.path}"

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    def statistics(self) -> dict[str, object]:
        """Counters for the admin endpoint and metrics."""
        return {
            "hub": self.hub.statistics(),
            "storage": {"commits": self.storage.writer.commits, "committed_ops": self.storage.writer.committed_ops},
            "chats": {"operations_applied": self.chats.applied},
        }


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _read_id_high_water(storage: Storage) -> int:
    raw = storage.get("meta", b"id_high_water")
    return from_u64(raw) if raw else 0


async def serve_http(node: Node, app, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """hypercorn on a socket we create (TCP_USER_TIMEOUT: a stalled client cannot hang it)."""
    cfg = node.config.http
    sock = socket.socket(family_of(cfg.host), socket.SOCK_STREAM)
    tune_listen_socket(sock, node.config.websocket.tcp_user_timeout)
    sock.bind((cfg.host, cfg.port))
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    hc = HypercornConfig()
    hc.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket from here
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = cfg.graceful_timeout
    hc.websocket_max_message_size = node.config.limits.max_frame_bytes
    await hypercorn_serve(app, hc, shutdown_trigger=node.shutdown_requested.wait, task_status=_Started(task_status, port))


class _Started:
    """Adapts hypercorn's task_status (it reports bind strings) to report our port."""

    def __init__(self, task_status: trio.TaskStatus[int], port: int) -> None:
        self._task_status = task_status
        self._port = port

    def started(self, _binds: object = None) -> None:
        self._task_status.started(self._port)


async def serve_node(config: Config, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one chat node until `request_shutdown()`; reports the Node once it is serving."""
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    async with open_storage(
        data_dir / "db",
        map_size=config.storage.map_size_mb * 1024 * 1024,
        max_map_size=config.storage.max_map_size_mb * 1024 * 1024,
        max_batch=config.storage.max_batch,
        sync=config.storage.sync,
    ) as storage:
        ids = SnowflakeGenerator(config.node.id, after=_read_id_high_water(storage))

        def id_high_water() -> WriteBatch:
            batch = WriteBatch()
            batch.put("meta", b"id_high_water", u64(ids.last_id))
            return batch

        storage.writer.add_commit_hook(id_high_water)
        hub = Hub(config.limits.max_connections_per_user)
        accounts = Accounts(storage, ids, config.accounts, on_revoke=hub.revoke)
        chats = Chats(storage, ids, hub, max_batch=config.storage.max_batch)
        node = Node(config, storage, ids, hub, accounts, chats, dict(CORE_FRAME_HANDLERS))
        app = create_app(node)

        async with trio.open_nursery() as core:
            await core.start(chats.serve)
            # -- cluster (node/cluster owns what is inside this block) -----------------
            if config.cluster.enabled:
                from .cluster.service import serve_cluster

                node.cluster = await core.start(serve_cluster, node)  # leaves when shutdown is requested
            # -- end cluster --
            async with trio.open_nursery() as sessions:
                async with trio.open_nursery() as listeners:
                    ws_scope = trio.CancelScope()

                    async def accept_chat(task_status: trio.TaskStatus[int]) -> None:
                        with ws_scope:
                            await serve_chat_socket(node, handler_nursery=sessions, task_status=task_status)

                    node.ws_port = await listeners.start(accept_chat)
                    node.http_port = await listeners.start(partial(serve_http, node, app))
                    log.info("node %s (id %d) serving %s, chat socket %s", config.node.name, config.node.id,
                             node.http_url, node.ws_url)
                    task_status.started(node)
                    await node.shutdown_requested.wait()
                    log.info("shutting down")
                    ws_scope.cancel()
                    for session in hub.all_sessions():
                        session.close(CLOSE_GOING_AWAY, "server shutting down", graceful=True)
                    sessions.cancel_scope.deadline = trio.current_time() + config.http.graceful_timeout + 1
            await chats.close()
    log.info("stopped")
