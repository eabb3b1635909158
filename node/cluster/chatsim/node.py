"""One simulated chat node: the real core and cluster code, wired as node/app.py and
node/cluster/service.py wire them, on simulated I/O.

Real: the sequencer (`Chats`) and its operations, `ClusterRouting` (ownership by
rendezvous hashing, forwarding, subscriptions, the polite stop's hand-over), `Links`
over the in-memory network's streams, `Membership` (SWIM) over its datagrams, `Hub`,
`Accounts`, `Blocks`, the Snowflake generator with its high-water mark, the group-commit
`Writer`, and a real `Session` per device connection. Stand-ins: storage
(memstore.py: PostgreSQL's constraints in memory), the WebSocket (wire.py), the clock
(trio's MockClock, which the Snowflake clock and the cluster's timers follow) and the
plugins (none are loaded: `NoPlugins`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ...app import _high_water_key, _read_id_high_water
from ...config import Config
from ...core.accounts import Accounts
from ...core.blocks import Blocks
from ...core.chats import Chats
from ...core.cluster_routing import ClusterRouting
from ...core.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL, ChatError
from ...core.hub import Hub
from ...core.ratelimit import UserBuckets
from ...core.session import CORE_FRAME_HANDLERS, FrameHandler, Session
from ...core.snowflake import SnowflakeGenerator
from ...core.websocket import ConnectionClosed
from ...observe import Metrics
from ...storage import StorageError, WriteBatch
from ..demux import DemuxTransport
from ..keyring import Keyring
from ..links import Links
from ..membership import JoinRefused, Membership
from ..memnet import MemoryNetwork, Stall, StallableClock
from .memstore import SharedDatabase, SimStorage, StorageFaults
from .wire import MemoryWebSocket, WireConnection

log = logging.getLogger(__name__)

START_RETRY = 0.5  # seconds between tries of a start-up read that failed


def _storage_failure(exc: BaseException) -> bool:
    """Whether an exception (or every one in a group) is a storage failure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_storage_failure(e) for e in exc.exceptions)
    return isinstance(exc, StorageError)


class NoPlugins:
    """The plugin hooks the core calls, with no plugin loaded."""

    def notify(self, hook: str, **kwargs: Any) -> None:
        pass

    def has_impls(self, hook: str) -> bool:
        return False

    def client_error(self, exc: ChatError) -> ChatError:
        return exc

    async def gate(self, hook: str, **kwargs: Any) -> None:
        pass


@attrs.define(eq=False)
class Environment:
    """What every node of one simulated cluster shares."""

    config: Config
    network: MemoryNetwork
    db: SharedDatabase
    keyring: Keyring
    faults: Callable[[], StorageFaults]
    wall_ms: Callable[[], int]  # the Snowflake clock: simulated time, in Unix ms
    seed: int
    on_failure: Callable[[str], None]  # something that must never happen (a session crashed)


class SimChatNode:
    """One life of a node (a restart makes a new one with the same id and address)."""

    def __init__(self, env: Environment, node_id: int, life: int) -> None:
        self.env = env
        self.node_id = node_id
        self.life = life
        self.address = f"sim-{node_id}:7946"
        self.stall = Stall()
        self.scope = trio.CancelScope()
        self.ready = False  # joined and serving devices
        self.down = False  # crashed or stopped
        rng = random.Random(env.seed * 1_000_003 + node_id * 1009 + life)
        self.storage = SimStorage(env.db, self.stall, env.faults, rng, max_batch=env.config.storage.max_batch)
        self.plugins = NoPlugins()
        self.metrics = Metrics()
        limits = env.config.limits  # sends per user on this node, on the simulation's clock
        self.send_limits = UserBuckets(limits.user_messages_per_second, limits.user_message_burst,
                                       clock=trio.current_time)
        self.frame_handlers: dict[str, FrameHandler] = dict(CORE_FRAME_HANDLERS)
        self.read_hub = None  # the simulated sockets are read by their sessions' tasks
        self.shutdown_requested = trio.Event()
        self._membership_rng = random.Random(rng.random())
        self._sessions: trio.Nursery | None = None
        self._session_count = 0
        self.sessions_failed = 0  # sessions ended by a storage failure (wsserver closes them with 1011)
        self._sequencer_done = trio.Event()
        # Built in `run` (after the high-water mark is read), as serve_node builds them.
        self.ids: SnowflakeGenerator
        self.hub: Hub
        self.routing: ClusterRouting
        self.accounts: Accounts
        self.blocks: Blocks
        self.chats: Chats
        self.links: Links
        self.membership: Membership

    @property
    def config(self) -> Config:
        return self.env.config

    # -- what a Session needs of its node (node/core/services.py) --------------------------

    async def gate_message(self, user_id: int, chat_id: int, content: dict[str, Any]) -> dict[str, Any]:
        return content  # no plugins: nothing gates or prepares a message

    def gate_message_now(self, user_id: int, chat_id: int, content: dict[str, Any]) -> tuple[dict[str, Any], None]:
        return content, None

    # -- running -----------------------------------------------------------------------------

    async def run(self, seeds: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start as serve_node and serve_cluster do, join through `seeds`, serve until
        cancelled (a crash) or stopped."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.storage.writer.serve)
                after = await self._retry(lambda: _read_id_high_water(self.storage, self.node_id))
                self.ids = SnowflakeGenerator(self.node_id, after=after, clock=self.env.wall_ms)
                self.storage.add_commit_hook(self._id_high_water)
                cfg = self.config
                self.hub = Hub(cfg.limits.max_connections_per_user)
                self.routing = routing = ClusterRouting(self.node_id, self.hub, self.plugins)
                self.accounts = Accounts(self.storage, self.ids, cfg.accounts)
                self.blocks = Blocks(self.storage)
                self.accounts.shared_storage = True
                self.accounts.on_change = lambda uid: routing.invalidate("user", (uid,))
                self.blocks.on_change = lambda uid: routing.invalidate("blocks", (uid,))
                self.chats = Chats(
                    self.storage, self.ids, self.hub, self.plugins, self.accounts, self.blocks, routing,
                    max_batch=cfg.storage.max_batch, max_group_members=cfg.limits.max_group_members,
                    edit_window=cfg.limits.edit_window,
                )
                self.chats.metrics = self.metrics
                self.hub.on_user_online.append(routing.user_connected)
                self.hub.on_user_offline.append(routing.user_disconnected)
                await nursery.start(self._serve_sequencer)
                await self._start_cluster(nursery, seeds)
                self._sessions = await nursery.start(self._serve_sessions)
                self.ready = True
                task_status.started()

    async def _start_cluster(self, nursery: trio.Nursery, seeds: list[str]) -> None:
        cfg = self.config.cluster
        transport = self.env.network.attach(self.address, self.stall)
        self.links = Links(self.node_id, self.env.keyring, transport, self.routing.on_message,
                           on_restart=self.routing.peer_restarted, on_interrupted=self.routing.link_interrupted,
                           max_frame=cfg.max_stream_bytes)
        demux = DemuxTransport(transport, self.links, first_frame_timeout=cfg.stream_timeout,
                               max_frame=cfg.max_stream_bytes)
        self.membership = Membership(
            cfg, node_id=self.node_id, name=f"node-{self.node_id}", http_url=f"http://sim-{self.node_id}.invalid",
            transport=demux, clock=StallableClock(self.stall), keyring=self.env.keyring, rng=self._membership_rng,
        )
        await nursery.start(self.links.serve)
        self.routing.attach(self.links, self.chats, self.accounts, self.blocks)
        await nursery.start(self.routing.serve)
        await nursery.start(self.membership.run)
        seeds = [s for s in seeds if s != self.address]
        try:
            answered = await self.membership.join(seeds) if seeds else 0
        except JoinRefused:  # a seed still holds a stale view: an operator would start it again
            answered = 0
        if seeds and not answered:
            nursery.start_soon(self._keep_joining, seeds)
        membership, routing = self.membership, self.routing

        def follow(_event: object = None) -> None:
            routing.members_now({m.node: m.address for m in membership.live_members()})

        follow()
        membership.add_listener(follow)

    async def _keep_joining(self, seeds: list[str]) -> None:
        while True:
            try:
                await self.membership.join_until_joined(seeds)
                return
            except JoinRefused:
                await trio.sleep(self.config.cluster.join_retry_interval)

    async def _retry(self, read: Callable[[], Any]) -> Any:
        while True:
            try:
                return await read()
            except StorageError:
                await trio.sleep(START_RETRY)

    def _id_high_water(self) -> WriteBatch:
        batch = WriteBatch()
        batch.put_meta(_high_water_key(self.node_id), self.ids.last_id.to_bytes(8, "big"))
        return batch

    async def _serve_sequencer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.chats.serve(task_status=task_status)
        finally:
            self._sequencer_done.set()

    async def _serve_sessions(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()

    # -- devices -----------------------------------------------------------------------------

    def accept(self, wire: WireConnection) -> bool:
        """A device connects: run a real Session on this end of the wire (False: refused)."""
        if self._sessions is None or not self.ready or self.shutdown_requested.is_set():
            return False
        self._sessions.start_soon(self._run_session, wire)
        return True

    async def _run_session(self, wire: WireConnection) -> None:
        ws = MemoryWebSocket(wire)
        self._session_count += 1
        try:
            await Session(self, ws).run()  # type: ignore[arg-type]
        except ConnectionClosed:
            pass
        except Exception as exc:  # wsserver logs these and closes with 1011
            if _storage_failure(exc):  # a read failed under a storage fault: the device reconnects
                self.sessions_failed += 1
            else:
                log.exception("chat session crashed")
                self.env.on_failure(f"node {self.node_id}: a session crashed: {exc!r}")
            wire.close_server_side(CLOSE_INTERNAL)
        finally:
            self._session_count -= 1
            wire.close_server_side()

    # -- faults ----------------------------------------------------------------------------

    def crash(self) -> None:
        """Die without a word: every task stops, the address swallows everything."""
        self.down = True
        self.ready = False
        self.env.network.crash(self.address)
        self.scope.cancel()

    async def stop(self) -> None:
        """A polite stop, in serve_node's and serve_cluster's order: hand over (own
        nothing, say `bye`), close sessions gracefully, let the sequencer finish, wait for
        the hand-over to settle, leave the membership, stop."""
        self.shutdown_requested.set()
        self.ready = False
        cfg = self.config
        self.routing.leave()
        for session in self.hub.all_sessions():
            session.close(CLOSE_GOING_AWAY, "server shutting down", graceful=True)
        with trio.move_on_after(cfg.http.graceful_timeout + 1):
            while self._session_count:  # noqa: ASYNC110 (simulated time: the poll is free)
                await trio.sleep(0.01)
        await self.chats.close()
        with trio.move_on_after(cfg.http.graceful_timeout + 1):
            await self._sequencer_done.wait()
        with trio.move_on_after(cfg.cluster.leave_timeout):
            await self.routing.wait_settled()
        with trio.move_on_after(cfg.cluster.leave_timeout + 1):
            await self.membership.leave()
        self.crash()
