"""The node: wires storage, accounts, chats and both listeners under one nursery.

Task tree (every task has an owner):

    serve_node
    ├── storage writer (group commit)           open_storage
    ├── chat sequencer                          core nursery
    ├── sweepers: expired messages, old dedupe  core nursery
    ├── cluster membership and links            core nursery ([cluster] enabled)
    ├── sessions nursery: one task per chat WebSocket
    └── listeners nursery: the chat socket's accept loop (core/wsserver.py), hypercorn (REST + web client)

Shutdown (`Node.request_shutdown`, SIGINT/SIGTERM): stop accepting; every session
finishes its in-flight sends, flushes and closes with 1001; hypercorn drains; the
sequencer and then the writer finish what is queued; in a cluster the node hands its
chats over and leaves; the storage engine closes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Iterable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework
from werkzeug.exceptions import HTTPException

from .config import Config, ConfigError, listen_error
from .core.accounts import Accounts, Device
from .core.admin import announce_offline_revocations
from .core.blocks import Blocks
from .core.chats import Chats, now_ms
from .core.connlimit import ConnectionLimits
from .core.dedupe import sweep_dedupe
from .core.errors import CLOSE_GOING_AWAY, ChatError
from .core.hub import Hub
from .core.operations import MarkRead, PostMessage, PurgeExpired
from .core.ratelimit import UserBuckets
from .core.readhub import ReadHub
from .core.routing import Routing
from .core.session import CORE_FRAME_HANDLERS, FrameHandler
from .core.snowflake import SnowflakeGenerator
from .core.state import ChatState
from .core.views import reads_shared
from .core.wsserver import family_of, serve_chat_socket, tune_listen_socket
from .observe import Metrics
from .plugin_api import Chat
from .plugin_manager import Plugins
from .storage import Storage, StorageError, WriteBatch, open_storage
from .web.access import RequestLog
from .web.api import create_app, observe_request
from .web.cors import Cors, allowed_origins, socket_origin_allowed
from .web.proxy import ForwardedFor
from .web.server import serve as serve_app

if TYPE_CHECKING:
    from .cluster.service import ClusterService

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
    blocks: Blocks
    plugins: Plugins
    frame_handlers: dict[str, FrameHandler]
    routing: Routing
    shutdown_requested: trio.Event = attrs.Factory(trio.Event)
    sequencer_done: trio.Event = attrs.Factory(trio.Event)  # every queued operation applied
    stash: dict[str, Any] = attrs.Factory(dict)  # per-plugin state, keyed by plugin name
    http_port: int = 0
    ws_port: int = 0
    version: str = VERSION
    cluster: ClusterService | None = None  # when [cluster] is enabled
    http_app: Any = None  # the quart app serving the HTTP API (node/web/api.py)
    connections: ConnectionLimits = attrs.Factory(lambda node: ConnectionLimits.of(node.config), takes_self=True)
    send_limits: UserBuckets = attrs.Factory(  # sends per user, over all their devices on this node
        lambda node: UserBuckets(node.config.limits.user_messages_per_second, node.config.limits.user_message_burst),
        takes_self=True)
    metrics: Metrics = attrs.Factory(Metrics)  # histograms and counters for /metrics (node/observe.py)
    read_hub: ReadHub | None = None  # reads the chat sockets while the node serves them

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

    def node_urls(self) -> list[str]:
        """The HTTP URLs clients may use: this node's, then the other live members'."""
        urls = [self.http_url]
        if self.cluster is not None:
            urls += [url for url in self.cluster.http_urls() if url != self.http_url]
        return urls

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    def statistics(self) -> dict[str, object]:
        """Counters for the admin endpoint and metrics."""
        return {
            "hub": self.hub.statistics(),
            "storage": self.storage.statistics(),
            "chats": {"operations_applied": self.chats.applied, "dedupe_purged": self.chats.dedupe_purged},
            "plugins": self.plugins.statistics(),
            "connections": self.connections.statistics(),
            **({"routing": self.routing.statistics()} if self.routing.clustered else {}),
            **({"cluster": self.cluster.statistics()} if self.cluster is not None else {}),
        }

    # -- what the plugin API builds on (node/plugin_api.py) -----------------------------

    async def post_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any]:
        """Store a message from `user_id` (a member) and deliver it; returns the record.
        It passes the same gates as a client's send."""
        content = await self.gate_message(user_id, chat_id, content)
        return await self.chats.run(PostMessage(user_id=user_id, chat_id=chat_id, content=content))

    async def gate_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any]:
        """`check_message` for every kind, then `prepare_message` for new messages."""
        gated, rest = self.gate_message_now(user_id, chat_id, content)
        if rest is not None:
            return await rest
        assert gated is not None
        return gated

    def gate_message_now(self, user_id: int, chat_id: int, content: dict[str, Any]
                         ) -> tuple[dict[str, Any], None] | tuple[None, Awaitable[dict[str, Any]]]:
        """`gate_message` without an await while every gate answers at once (Plugins.message_gates_now)."""
        return self.plugins.message_gates_now(user_id=user_id, chat_id=chat_id, content=content,
                                              prepare=content["kind"] not in ("edit", "delete"))

    async def mark_read(self, user_id: int, chat_id: int, seq: int) -> int:
        """Advance the user's read cursor in a chat; returns the cursor."""
        return await self.chats.run(MarkRead(user_id=user_id, chat_id=chat_id, seq=seq))

    def send_to_user(self, user_id: int, event: dict[str, Any] | bytes) -> None:
        """An ephemeral event to every connected device of a user, on any node (never waits)."""
        self.send_to_users((user_id,), event)

    def send_to_users(self, user_ids: Iterable[int], event: dict[str, Any] | bytes) -> None:
        payload = event if isinstance(event, bytes) else orjson.dumps(event)
        self.routing.send_to_users(user_ids, payload)

    async def announce_user(self, user_id: int, user: dict[str, Any]) -> None:
        """A changed profile, live to its owner's devices and to everyone who shares a chat
        with them (others see it when they next look the user up)."""
        payload = orjson.dumps({"type": "user", "user": user})
        for uid in (user_id, *await self.chats.contacts_of(user_id)):
            self.send_to_user(uid, payload)

    async def is_online(self, user_id: int) -> bool:
        """Whether a device of the user is connected to any node of the cluster."""
        return await self.routing.is_online(user_id)

    async def reads_shared(self, user_id: int) -> bool:
        """Whether a user shares read receipts (their `read_receipts` setting)."""
        return await reads_shared(self, user_id)

    def chat_snapshot(self, chat: ChatState) -> Chat:
        record = chat.record
        members = frozenset(chat.active_ids())
        group = chat.kind == "group"
        return Chat(
            chat.id, chat.kind, record.get("title", "") if group else "", record["created"],
            int(record.get("created_by") or 0), record.get("ttl", 0), chat.committed_seq, members,
            chat.watermark("delivered").floor if group else min((chat.members[u]["delivered"] for u in members), default=0),
            chat.watermark("read").floor if group else min((chat.members[u]["read"] for u in members), default=0),
            record.get("photo") if group else None,
        )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _high_water_key(node_id: int) -> str:
    """Each node keeps its own: nodes of a cluster share one storage."""
    return f"id_high_water.{node_id}"


async def _read_id_high_water(storage: Storage, node_id: int) -> int:
    """The highest Snowflake this node minted before (also under the key of schema 3 and
    earlier, from a single node's data dir)."""
    found = [await storage.get_meta(_high_water_key(node_id)), await storage.get_meta("id_high_water")]
    return max((int.from_bytes(raw, "big") for raw in found if raw), default=0)


async def serve_http(node: Node, app: ASGIFramework, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """hypercorn on a socket we create (TCP_USER_TIMEOUT: a stalled client cannot hang it)."""
    cfg = node.config.http
    sock = socket.socket(family_of(cfg.host), socket.SOCK_STREAM)
    tune_listen_socket(sock, node.config.websocket.tcp_user_timeout)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as exc:
        sock.close()
        raise listen_error("http", cfg.host, cfg.port, exc) from None
    sock.listen(1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = cfg.graceful_timeout
    # No hc.read_timeout: hypercorn applies it to every read, so it would also cut a long
    # download to a client that has nothing to send. Bodies have deadlines of their own
    # (json_body, the upload route).
    hc.websocket_max_message_size = node.config.limits.max_frame_bytes
    # idle keep-alive connections close at once on shutdown (node/web/server.py)
    app = Cors(app, partial(allowed_origins, node))  # the API for the cluster's own web clients
    # X-Request-Id, the access log and the request-time histogram
    app = RequestLog(app, access=node.config.log.access, observe=partial(observe_request, node.metrics))
    app = ForwardedFor(app, cfg.trusted_proxies)  # the client's address behind a reverse proxy
    started = _Started(task_status, port)
    await serve_app(app, hc, sock, shutdown_trigger=node.shutdown_requested.wait, guard=node.connections.guard,
                    task_status=started)


class _Started:
    """Adapts the server's task_status (it reports nothing) to report our port."""

    def __init__(self, task_status: trio.TaskStatus[int], port: int) -> None:
        self._task_status = task_status
        self._port = port

    def started(self, _value: object = None) -> None:
        self._task_status.started(self._port)


async def serve_node(
    config: Config,
    *,
    plugins: Iterable[Any] = (),
    load_entrypoints: bool = True,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one chat node until `request_shutdown()`; reports the Node once it is serving.

    `plugins` are registered in addition to the built-in and installed ones (tests use
    it); `load_entrypoints=False` skips plugins installed under the ``chatnode`` group.
    A configuration problem found during start-up raises `ConfigError` itself, not
    wrapped in nursery exception groups.
    """
    try:
        await _run_node(config, plugins, load_entrypoints, task_status)
    except BaseExceptionGroup as group:
        problem = _first_leaf(group, (ConfigError, StorageError))
        if problem is None:
            raise
        raise problem from None


def _first_leaf(group: BaseExceptionGroup, types: tuple[type[BaseException], ...]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_leaf(exc, types)
            if found is not None:
                return found
        elif isinstance(exc, types):
            return exc
    return None


async def _run_node(config: Config, plugins: Iterable[Any], load_entrypoints: bool,
                    task_status: trio.TaskStatus[Node]) -> None:
    manager = Plugins(config.plugins, extra=plugins, load_entrypoints=load_entrypoints, node_version=VERSION)
    for plugin in manager.describe():
        log.info("plugin %s %s %s", plugin["name"], plugin["version"], "built in" if plugin["builtin"] else "installed")
    data_dir = config.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new data dir is the node's alone
    async with open_storage(config.storage, data_dir, now=now_ms) as storage:
        ids = SnowflakeGenerator(config.node.id, after=await _read_id_high_water(storage, config.node.id))

        def id_high_water() -> WriteBatch:
            batch = WriteBatch()
            batch.put_meta(_high_water_key(config.node.id), ids.last_id.to_bytes(8, "big"))
            return batch

        storage.add_commit_hook(id_high_water)
        hub = Hub(config.limits.max_connections_per_user)
        routing = _routing(config, hub, manager)

        def device_revoked(device: Device) -> None:
            """A token's deletion committed: close its sockets (on every node), then let
            plugins drop what they keep for that device (push targets)."""
            routing.revoke(device.token_hash)
            manager.notify("on_device_revoked", user_id=device.user_id, device_id=device.device_id)

        accounts = Accounts(storage, ids, config.accounts, on_revoke=device_revoked)
        blocks = Blocks(storage)
        if config.cluster.enabled:  # other nodes cache these too: tell them what changed
            accounts.shared_storage = True
            accounts.on_change = lambda uid: routing.invalidate("user", (uid,))
            blocks.on_change = lambda uid: routing.invalidate("blocks", (uid,))
        chats = Chats(
            storage, ids, hub, manager, accounts, blocks, routing,
            max_batch=config.storage.max_batch,
            max_group_members=config.limits.max_group_members,
            edit_window=config.limits.edit_window,
        )
        node = Node(config, storage, ids, hub, accounts, chats, blocks, manager, dict(CORE_FRAME_HANDLERS), routing)
        chats.metrics = node.metrics
        storage.writer.on_commit = node.metrics.observe_commit
        manager.bind(node)
        for name, handler in manager.frame_types().items():
            if name in node.frame_handlers:
                raise ConfigError(f"two handlers for the WebSocket event type {name!r}")
            node.frame_handlers[name] = handler
        routes = manager.routes(passthrough=(HTTPException,))
        app = node.http_app = create_app(node, routes)
        hub.on_user_online.append(routing.user_connected)
        hub.on_user_offline.append(routing.user_disconnected)

        async with trio.open_nursery() as core:
            await core.start(chats.serve)
            await core.start(manager.serve_pumps, config.plugins.event_queue)
            core.start_soon(sweep_expired, node)
            core.start_soon(sweep_dedupe, node)
            core.start_soon(keep_tokens_of_connections, node)
            # -- cluster (node/cluster owns what is inside this block) -----------------
            if config.cluster.enabled:
                from .cluster.service import serve_cluster

                node.cluster = await core.start(serve_cluster, node)  # leaves when shutdown is requested
            # -- end cluster --
            if node.cluster is not None:
                node.cluster.add_listener(lambda event: manager.notify("on_cluster_event", event=event), replay=True)
            async with trio.open_nursery() as plugin_tasks:
                await manager.startup(plugin_tasks)
                told = await announce_offline_revocations(node)  # `chatnode admin --offline` logouts
                if told:
                    log.info("told the plugins of %d devices logged out while the node was stopped", told)
                node.read_hub = ReadHub(node.chats)
                core.start_soon(node.read_hub.serve)
                async with trio.open_nursery() as sessions, trio.open_nursery() as listeners:
                    ws_scope = trio.CancelScope()

                    async def accept_chat(task_status: trio.TaskStatus[int]) -> None:
                        with ws_scope:
                            await serve_chat_socket(node, handler_nursery=sessions, task_status=task_status,
                                                    origin_allowed=partial(socket_origin_allowed, node))

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
                node.read_hub.close()
                await manager.shutdown()
                plugin_tasks.cancel_scope.cancel()
            await chats.close()
            node.sequencer_done.set()
            manager.close_pumps()
            # The sweepers, and in a cluster the hand-over and the leave (node/cluster/service.py)
            handover = 2 * config.cluster.leave_timeout + 1 if node.cluster is not None else 0.0
            core.cancel_scope.deadline = trio.current_time() + config.http.graceful_timeout + handover
    log.info("stopped")


def _routing(config: Config, hub: Hub, plugins: Plugins) -> Routing:
    """One node routes nothing; a cluster member sequences the chats it owns and forwards
    the rest (started for real once the cluster service has joined)."""
    if config.cluster.enabled:
        from .core.cluster_routing import ClusterRouting

        return ClusterRouting(config.node.id, hub, plugins)
    return Routing(config.node.id, hub, plugins)


async def keep_tokens_of_connections(node: Node) -> None:
    """An open socket is use of its token (it does not expire idle while connected), and a
    token past its maximum age is logged out even while connected."""
    while not node.shutdown_requested.is_set():
        with trio.move_on_after(node.accounts.connected_check_interval):
            await node.shutdown_requested.wait()
        try:
            await node.accounts.note_connected(s.device for s in node.hub.all_sessions() if s.device is not None)
        except StorageError:
            pass  # storage trouble the writer already logged: the next round tries again


async def sweep_expired(node: Node, interval: float = 0.0) -> None:
    """Purge disappearing messages whose time is up, in chunks, until shutdown."""
    interval = interval or node.config.storage.sweep_interval
    while not node.shutdown_requested.is_set():
        due: list[tuple[int, int, int, int]] = []
        try:
            if node.routing.runs_singletons():  # in a cluster, one node sweeps
                due = await node.storage.due_expiry(now_ms(), 1000)
            if due:
                await node.chats.run(PurgeExpired(entries=due))
        except (ChatError, StorageError):
            due = []  # shutting down, or storage trouble the writer already logged
        if len(due) < 1000:
            with trio.move_on_after(interval):
                await node.shutdown_requested.wait()
