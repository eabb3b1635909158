"""Routing in a cluster: owners sequence chats, homes know where users' devices are.

Every node computes the same owner for a chat and the same home for a user, by
rendezvous hashing over the live members (node/cluster/ownership.py); a join or a
failure moves only the keys of the member that changed. Nothing here keeps data
correct: that is PostgreSQL's job (a seq taken twice, a client_msg_id stored twice, a
chat's seq moved by someone else all fail the second writer's commit). Ownership only
keeps the common case fast and consistent.

What travels between nodes (node/cluster/links.py: one ordered, batched, sealed stream
per peer and direction):

=========  ==================================================  =====================================
message    fields                                              meaning
=========  ==================================================  =====================================
send       req, user, device, chat, client_msg_id, content     a device's send, to the chat's owner
run        req, operation, fields                              an awaited operation, to the owner
op         operation, fields                                   a fire-and-forget one (``received``)
res        req, ok, kind, value                                the answer to ``send``/``run``/``online?``
dlv        chat, seq, event, [(user, floor)], exclude          a stored entry for devices on the node
sub        req, user, [chats], on                              the user's devices here follow these chats
subok      req                                                 the owner registered the subscription
loc        user, on                                            to the user's home: devices here or not
relay      [users], payload, origin                            to the users' home: pass an event on
ev         [users], payload                                    an ephemeral event for devices here
online?    req, user                                           to the user's home: any device anywhere?
inv        kind, [ids]                                         caches to drop (``user``, ``blocks``,
                                                               ``user_chats``)
revoke     token_hash                                          close that device's sockets here
resub                                                          send me your subscriptions again (the
                                                               sender had given this node up)
bye                                                            the sender is stopping: it owns nothing
                                                               now, and passes on what still reaches it
byeok                                                          the ``bye`` was seen: nothing more will
                                                               be sent to be sequenced there
=========  ==================================================  =====================================

**How an owner learns where members' devices are.** When a user's first device connects
to a node, the node subscribes the user, at the owner of each of the user's chats, for
that node (``sub``); when the last one goes, it unsubscribes. The owner then sends each
stored entry once per subscribed node (``dlv``), naming the members there who may see
it; that node offers it to their devices. After the owner confirms (``subok``), the node
re-reads the chats' stored seqs and lets its devices catch up from the log on whatever
was stored before the subscription took effect, so nothing falls in between. When
ownership moves, nodes subscribe again at the new owners (and catch up the same way).

**Where users are.** A user's home keeps the set of nodes with a device of theirs
(``loc``): ephemeral events (typing, receipts, presence) go there to be passed on
(``relay``), presence edges (``on_user_online``/``on_user_offline``) fire there once for
the whole cluster, and ``is_online`` asks it.

**A polite stop.** A stopping node gives up its chats and users at once (it stops
sequencing and passes on whatever still reaches it) and says ``bye`` to every peer. Each
peer moves what the stopping node owned to the next owners, just as for a failure,
answers ``byeok``, and from then on sends it nothing to sequence. The stopping node waits
for every ``byeok`` and for every answer it owes or is owed before it leaves the
membership and closes its links, so no request is left without an answer: a rolling
restart costs its clients a reconnect, never an error.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ..cluster.ownership import CHAT, SINGLETON, USER, Ownership
from ..plugin_api import PluginError
from . import chatprefs, groups, operations, profiles, reactions  # noqa: F401 - their operations register
from .chats import OPERATIONS, Awaitable, Operation
from .errors import ChatError
from .operations import SendMessage
from .routing import Routing
from .state import ChatState

if TYPE_CHECKING:
    from ..cluster.links import Links
    from .accounts import Accounts
    from .blocks import Blocks
    from .chats import Chats
    from .hub import Hub
    from .services import PluginHooks

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds a forwarded request may wait for its answer
MAX_HOPS = 3  # forwards of one operation while views of the membership disagree
RESUBSCRIBE_CHUNK = 200  # users resubscribed between checkpoints after ownership moves
RESUBSCRIBE_DELAY = 0.2  # seconds before a refused subscription is tried again

def forwardable(name: str) -> type[Operation] | None:
    """The operation class of that name, if it may travel to a chat's owner: one with a
    chat and plain-data fields (a send travels as ``send``: it names its device)."""
    cls = OPERATIONS.get(name)
    if cls is None or cls is SendMessage or not attrs.has(cls):
        return None
    if "chat_id" not in {f.name for f in attrs.fields(cls)}:
        return None
    return cls


def _fields(op: Operation) -> dict[str, Any]:
    return {f.name: getattr(op, f.name) for f in attrs.fields(type(op)) if f.init}


def _error_value(error: ChatError) -> list[Any]:
    return [error.code, error.message, error.status]


def _error_from(value: Any) -> ChatError:
    code, message, status = value
    return PluginError(code, message, status=status)


UNAVAILABLE = ChatError("unavailable", "the node that owns this chat cannot be reached; retry")


@attrs.define(eq=False)
class _Request:
    peer: int
    deadline: float
    on_result: Callable[[bool, str, Any], None]
    sent: float = attrs.Factory(time.monotonic)


class RemoteOrigin:
    """The sender of a forwarded ``send``, standing in for its session on the owner:
    the ack or the error goes back to the node the device is connected to."""

    __slots__ = ("_routing", "device_id", "node_id", "req", "user_id")

    def __init__(self, routing: ClusterRouting, node_id: int, req: int, user_id: int, device_id: int) -> None:
        self._routing = routing
        self.node_id = node_id
        self.req = req
        self.user_id = user_id
        self.device_id = device_id

    def finish_send(self) -> None:
        pass  # the sending node counts its own in-flight sends

    def send_ack(self, client_msg_id: str, record: dict[str, Any], *, pending: bool = False,
                 duplicate: bool = False) -> None:
        ack = {k: record[k] for k in ("chat", "id", "seq", "ts")}
        self._routing.answer(self.node_id, self.req, True, "ack", {**ack, "pending": pending, "duplicate": duplicate})

    def send_error(self, exc: ChatError, *, ref: str | None = None) -> None:
        self._routing.answer(self.node_id, self.req, False, "error", _error_value(exc))


class ClusterRouting(Routing):
    """This node's part of the cluster's routing (see the module docstring)."""

    clustered = True

    def __init__(self, node_id: int, hub: Hub, plugins: PluginHooks) -> None:
        super().__init__(node_id, hub, plugins)
        self.ownership = Ownership(node_id)
        self.links: Links | None = None
        self.chats: Chats | None = None
        self.accounts: Accounts | None = None
        self.blocks: Blocks | None = None
        self.joined = False  # until the cluster is joined, this node sequences nothing
        self.leaving = False  # stopping: it sequences nothing any more
        self._members: dict[int, str] = {}  # the live members as membership last told
        self.departing: set[int] = set()  # peers that said `bye`: live, but owning nothing
        self._bye_unanswered: set[int] = set()  # peers yet to answer this node's `bye`
        self._quiet = trio.Event()  # set when a change may have settled the hand-over
        # Request ids are unique across restarts of this node: a peer may still hold answers
        # for this node's previous life in its queue, and they must never match a new request.
        self._req_ids = itertools.count((secrets.randbits(30) + 1) << 32)
        self._pending: dict[int, _Request] = {}
        self.subs: dict[int, dict[int, set[int]]] = {}  # owner side: chat -> node -> users
        self.locations: dict[int, set[int]] = {}  # home side: user -> nodes with a device of theirs
        self._local_chats: dict[int, set[int]] = {}  # this node: user -> chats subscribed for them
        self._work_send, self._work_recv = trio.open_memory_channel[tuple[str, Any]](100_000)
        self.stats = {"forwarded": 0, "forward_failures": 0, "served": 0, "deliveries_sent": 0,
                      "deliveries_received": 0, "relayed": 0, "ownership_moves": 0, "request_timeouts": 0}
        self._rtt_total = 0.0
        self._rtt_count = 0

    # -- wiring --------------------------------------------------------------------------

    def attach(self, links: Links, chats: Chats, accounts: Accounts, blocks: Blocks) -> None:
        self.links = links
        self.chats = chats
        self.accounts = accounts
        self.blocks = blocks

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: subscriptions of connecting users, request deadlines."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._worker)
            nursery.start_soon(self._expire_requests)
            task_status.started()

    def members_now(self, members: dict[int, str]) -> None:
        """The live members (node id -> cluster address, this node included), after every
        change of the view: links follow, ownership is recomputed, work moves."""
        assert self.links is not None
        for node, address in members.items():
            if node != self.node_id:
                self.links.set_peer(node, address)
        known = set(self._members) | set(self.ownership.members)
        gone = [n for n in known if n not in members and n != self.node_id]
        for node in gone:
            self._peer_gone(node)
        self._members = dict(members)
        self.departing &= set(members)
        self._bye_unanswered &= set(members)
        self._reown()

    def _reown(self) -> None:
        """Recompute ownership from the live members less the departing ones, and move
        what changed hands."""
        assert self.links is not None and self.chats is not None
        members = [n for n in self._members if n not in self.departing] or [self.node_id]
        for node in members:
            if node != self.node_id and node not in self.ownership.members:
                # New in this view, or back after this node had given it up (and dropped
                # what it registered here): ask it to subscribe and register again.
                self.links.send(node, ("resub",))
        before = Ownership(self.node_id, self.ownership.members)
        self.joined = True
        if self.leaving and not set(members) - {self.node_id}:
            self.leaving = False  # everyone else is gone: the chats come back until this node stops
            self._bye_unanswered.clear()
        self._quiet.set()
        if not self.ownership.update(members, include_self=not self.leaving):
            return
        owned_before = len(self.chats._chats)
        self.chats.forget_chats(self.owns)
        self.stats["ownership_moves"] += owned_before - len(self.chats._chats)
        for chat_id in [c for c in self.subs if not self.owns(c)]:
            del self.subs[chat_id]
        for user_id in [u for u in self.locations if self.ownership.owner(u, USER) != self.node_id]:
            del self.locations[user_id]
        self._work_send.send_nowait(("rebalance", before))

    def peer_restarted(self, node: int) -> None:
        """A peer came back as a new process (a crash and a quick restart that membership
        may never have seen as a failure): what it held in memory is gone. Its old
        subscriptions and user locations here are dropped (it registers its own users
        again), and this node subscribes and registers its users there again."""
        for req, request in list(self._pending.items()):
            if request.peer == node:
                del self._pending[req]
                request.on_result(False, "error", _error_value(UNAVAILABLE))
        for by_node in self.subs.values():
            by_node.pop(node, None)
        if node in self.departing:  # a new life: it owns its share again
            self.departing.discard(node)
            self._reown()
        self._bye_unanswered.discard(node)
        self._quiet.set()
        for user_id, nodes in list(self.locations.items()):
            if node in nodes:
                nodes.discard(node)
                if not nodes:
                    del self.locations[user_id]
                    self.plugins.notify("on_user_offline", user_id=user_id)
        self._work_send.send_nowait(("peer_restarted", node))

    async def _redo_with(self, node: int) -> None:
        """Subscribe and register this node's users again at a restarted peer."""
        for i, (user_id, chats) in enumerate(list(self._local_chats.items())):
            if not self.hub.is_online(user_id):
                continue
            if self.home(user_id) == node:
                self._locate(user_id, True)
            moved = {c for c in chats if self.owner(c) == node}
            await self._subscribe(user_id, moved, fresh=False)
            if i % RESUBSCRIBE_CHUNK == 0:
                await trio.lowlevel.checkpoint()

    def _peer_gone(self, node: int) -> None:
        assert self.links is not None
        self.links.drop_peer(node)
        for req, request in list(self._pending.items()):
            if request.peer == node:
                del self._pending[req]
                request.on_result(False, "error", _error_value(UNAVAILABLE))
        for by_node in self.subs.values():
            by_node.pop(node, None)
        self._bye_unanswered.discard(node)
        self._quiet.set()
        went_offline = []
        for user_id, nodes in self.locations.items():
            if node in nodes:
                nodes.discard(node)
                if not nodes:
                    went_offline.append(user_id)
        for user_id in went_offline:
            del self.locations[user_id]
            self.plugins.notify("on_user_offline", user_id=user_id)

    # -- ownership -----------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.ownership.version

    def owns(self, chat_id: int) -> bool:
        return self.joined and not self.leaving and self.ownership.owns(chat_id, CHAT)

    def leave(self) -> None:
        """This node is stopping: it owns nothing from now on, and says `bye` to its peers.
        Whatever still reaches it is passed on to the new owners while its links last."""
        assert self.chats is not None and self.links is not None
        others = [n for n in self._members if n != self.node_id and n not in self.departing]
        if not others:
            return  # the last member keeps its chats until it stops: there is no one to hand them to
        self.leaving = True
        self._bye_unanswered = set(others)
        self._reown()  # owns nothing now: its own users follow their chats' new owners
        for node in self._members:
            if node != self.node_id:
                self.links.send(node, ("bye",))

    def settled(self) -> bool:
        """Every peer has seen this node's `bye`, no answer is owed to or by it, and what it
        queued for its peers has been written out."""
        assert self.links is not None
        return not (self._bye_unanswered or self._pending or any(self.links.queued(n) for n in self._members))

    async def wait_settled(self) -> None:
        """Until `settled()`: the last step of a polite stop before the links close."""
        while not self.settled():
            self._quiet = trio.Event()
            with trio.move_on_after(0.05):  # queues drain without telling: look again soon
                await self._quiet.wait()

    def owner(self, chat_id: int) -> int:
        return self.ownership.owner(chat_id, CHAT)

    def home(self, user_id: int) -> int:
        return self.ownership.owner(user_id, USER)

    def runs_singletons(self) -> bool:
        return self.joined and self.ownership.owns(0, SINGLETON)

    # -- forwarding ----------------------------------------------------------------------

    def _request(self, peer: int, message_for: Callable[[int], tuple[Any, ...]],
                 on_result: Callable[[bool, str, Any], None]) -> bool:
        assert self.links is not None
        req = next(self._req_ids)
        self._pending[req] = _Request(peer, time.monotonic() + REQUEST_TIMEOUT, on_result)
        if self.links.send(peer, message_for(req)):
            self.stats["forwarded"] += 1
            return True
        del self._pending[req]
        self.stats["forward_failures"] += 1
        return False

    def answer(self, node: int, req: int, ok: bool, kind: str, value: Any) -> None:
        if node == self.node_id:
            self._on_result(req, ok, kind, value)
        elif self.links is not None:
            self.links.send(node, ("res", req, ok, kind, value))

    def forward_nowait(self, op: Operation, hops: int = 0) -> None:
        owner = self.owner(op.chat_id)  # type: ignore[attr-defined]
        if hops >= MAX_HOPS or owner == self.node_id:
            op.reject(UNAVAILABLE)
            return
        if isinstance(op, SendMessage):
            origin = op.origin
            device = getattr(origin, "device_id", 0)

            def on_send_result(ok: bool, kind: str, value: Any) -> None:
                origin.finish_send()
                if ok:
                    record = {k: value[k] for k in ("chat", "id", "seq", "ts")}
                    origin.send_ack(op.client_msg_id, record, pending=value["pending"], duplicate=value["duplicate"])
                else:
                    origin.send_error(_error_from(value), ref=op.client_msg_id)

            sent = self._request(owner, lambda req: (
                "send", req, origin.user_id, device, op.chat_id, op.client_msg_id, orjson.dumps(op.content), hops + 1,
            ), on_send_result)
        elif isinstance(op, Awaitable):
            sent = self._request(owner, lambda req: (
                "run", req, type(op).__name__, orjson.dumps(_fields(op)), hops + 1,
            ), lambda ok, kind, value: self._settle(op, ok, kind, value))
        else:
            assert self.links is not None
            sent = self.links.send(owner, ("op", type(op).__name__, orjson.dumps(_fields(op)), hops + 1))
            if sent:
                self.stats["forwarded"] += 1
        if not sent:
            op.reject(UNAVAILABLE)

    def _settle(self, op: Awaitable, ok: bool, kind: str, value: Any) -> None:
        if not ok:
            op.reject(_error_from(value))
        elif kind == "chat":
            op.resolve(("chat", value))  # the requester loads it fresh: see `forward`
        else:
            op.resolve(value)

    async def forward(self, op: Awaitable) -> Any:
        if forwardable(type(op).__name__) is None:
            raise ChatError("internal", f"{type(op).__name__} cannot be forwarded to another node")
        self.forward_nowait(op)
        result = await op.wait()
        if isinstance(result, tuple) and len(result) == 2 and result[0] == "chat":
            assert self.chats is not None
            return await self.chats.load(result[1])
        return result

    def _on_result(self, req: int, ok: bool, kind: str, value: Any) -> None:
        request = self._pending.pop(req, None)
        if request is None:
            return  # timed out already: the client's retry settles it
        if not self._pending:
            self._quiet.set()
        self._rtt_total += time.monotonic() - request.sent
        self._rtt_count += 1
        request.on_result(ok, kind, value)

    async def _expire_requests(self) -> None:
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for req, request in list(self._pending.items()):
                if request.deadline <= now:
                    del self._pending[req]
                    self.stats["request_timeouts"] += 1
                    request.on_result(False, "error", _error_value(UNAVAILABLE))

    # -- what the owner does for others ----------------------------------------------------

    def _serve_send(self, peer: int, req: int, user: int, device: int, chat_id: int, cmid: str, content: bytes,
                    hops: int) -> None:
        assert self.chats is not None
        self.stats["served"] += 1
        op = SendMessage(RemoteOrigin(self, peer, req, user, device), chat_id, cmid, orjson.loads(content))
        if not self.owns(chat_id):
            self.forward_nowait(op, hops)
        elif not self.chats.submit_nowait(op):
            op.reject(ChatError("unavailable", "the node is overloaded; retry"))

    def _serve_run(self, peer: int, req: int, name: str, fields: bytes, hops: int) -> None:
        assert self.chats is not None
        cls = forwardable(name)
        if cls is None:
            self.answer(peer, req, False, "error", _error_value(ChatError("internal", f"unknown operation {name}")))
            return
        self.stats["served"] += 1
        op = cls(**orjson.loads(fields))
        assert isinstance(op, Awaitable)

        def done(result: Any, error: ChatError | None) -> None:
            if error is not None:
                self.answer(peer, req, False, "error", _error_value(error))
            elif isinstance(result, ChatState):
                self.answer(peer, req, True, "chat", result.id)
            elif isinstance(result, tuple) and len(result) == 2 and result[0] == "chat":
                self.answer(peer, req, True, "chat", result[1])  # it was forwarded on
            else:
                self.answer(peer, req, True, "value", result)

        op.on_done = done
        if not self.owns(op.chat_id):  # type: ignore[attr-defined]
            self.forward_nowait(op, hops)
        elif not self.chats.submit_nowait(op):
            op.reject(ChatError("unavailable", "the node is overloaded; retry"))

    def _serve_op(self, name: str, fields: bytes, hops: int) -> None:
        assert self.chats is not None
        cls = forwardable(name)
        if cls is None:
            return
        op = cls(**orjson.loads(fields))
        if not self.owns(op.chat_id):  # type: ignore[attr-defined]
            self.forward_nowait(op, hops)
        else:
            self.chats.submit_nowait(op)

    def fan_out_remote(self, chat: ChatState, seq: int, event: bytes, exclude: Any) -> set[int]:
        by_node = self.subs.get(chat.id)
        if not by_node or self.links is None:
            return set()
        exclude_node, exclude_device = (
            (exclude.node_id, exclude.device_id) if isinstance(exclude, RemoteOrigin) else (-1, 0))
        reached: set[int] = set()
        for node, users in by_node.items():
            recipients = []
            for user_id in users:
                member = chat.members.get(user_id)
                if member is None or seq < member["from_seq"]:
                    continue
                until = member.get("until_seq")
                if until is not None and seq > until:
                    continue
                recipients.append((user_id, member["from_seq"] - 1))
            if recipients and self.links.send(node, ("dlv", chat.id, seq, event, recipients, exclude_node,
                                                     exclude_device)):
                self.stats["deliveries_sent"] += 1
                reached.update(u for u, _ in recipients)
        return reached

    def members_changed(self, chat_id: int, user_ids: Iterable[int]) -> None:
        users = list(user_ids)
        if users:
            self._broadcast(("inv", "user_chats", users))
            self._resubscribe_local(users)

    # -- subscriptions and the registry (this node's users) ------------------------------

    def user_connected(self, user_id: int) -> None:
        self._locate(user_id, True)
        self._work_send.send_nowait(("subscribe", user_id))

    def user_disconnected(self, user_id: int) -> None:
        self._locate(user_id, False)
        chats = self._local_chats.pop(user_id, set())
        by_owner: dict[int, list[int]] = {}
        for chat_id in chats:
            by_owner.setdefault(self.owner(chat_id), []).append(chat_id)
        for owner, chat_ids in by_owner.items():
            if owner != self.node_id and self.links is not None:
                self.links.send(owner, ("sub", 0, user_id, chat_ids, False))

    def _locate(self, user_id: int, on: bool) -> None:
        home = self.home(user_id)
        if home == self.node_id:
            self._on_loc(self.node_id, user_id, on)
        elif self.links is not None:
            self.links.send(home, ("loc", user_id, on))

    def _on_loc(self, node: int, user_id: int, on: bool) -> None:
        nodes = self.locations.setdefault(user_id, set())
        was_online = bool(nodes)
        (nodes.add if on else nodes.discard)(node)
        if not nodes:
            del self.locations[user_id]
        if was_online != bool(nodes):
            self.plugins.notify("on_user_online" if nodes else "on_user_offline", user_id=user_id)

    async def _worker(self) -> None:
        """Subscribe connecting users at the owners of their chats, catch their devices up
        once an owner confirmed, resubscribe after ownership moved. One task, so the work
        for one user stays in order."""
        async for kind, value in self._work_recv:
            try:
                if kind == "subscribe" and self.hub.is_online(value):
                    await self._subscribe(value)
                elif kind == "subscribe_cached" and self.hub.is_online(value):
                    await self._subscribe(value, fresh=False)
                elif kind == "caught_up":
                    await self._catch_up(*value)
                elif kind == "rebalance":
                    await self._rebalance(value)
                elif kind == "peer_restarted":
                    await self._redo_with(value)
            except Exception:
                log.exception("cluster routing: %s of %s failed", kind, value)

    async def _subscribe(self, user_id: int, moved: set[int] | None = None, *, fresh: bool = True) -> None:
        """Subscribe the user at the owners of the chats not subscribed yet (a refused or
        failed subscription is not), and again at those of `moved`. `fresh`: read the
        user's chats again (on connect), rather than from the cache."""
        assert self.chats is not None
        if fresh:
            self.chats.forget_user_chats((user_id,))
        chat_ids = await self.chats.chat_ids_of(user_id)
        known = self._local_chats.setdefault(user_id, set())
        by_owner: dict[int, list[int]] = {}
        for chat_id in chat_ids:
            if chat_id not in known or (moved is not None and chat_id in moved):
                by_owner.setdefault(self.owner(chat_id), []).append(chat_id)
            known.add(chat_id)
        for owner, ids in by_owner.items():
            if owner == self.node_id:
                await self._catch_up(user_id, ids)  # stored before this node owned them
                continue

            def subscribed(ok: bool, kind: str, value: Any, ids: list[int] = ids) -> None:
                if ok:  # the owner registered: what was stored before, the log has
                    self._work_send.send_nowait(("caught_up", (user_id, ids)))
                else:  # not registered: try again shortly
                    self._local_chats.get(user_id, set()).difference_update(ids)
                    self._retry_subscribe(user_id)

            if not self._request(owner, lambda req, ids=ids: ("sub", req, user_id, ids, True), subscribed):
                known.difference_update(ids)
                self._retry_subscribe(user_id)

    _nursery: trio.Nursery | None = None

    def _retry_subscribe(self, user_id: int) -> None:
        async def later() -> None:
            await trio.sleep(RESUBSCRIBE_DELAY)
            self._work_send.send_nowait(("subscribe_cached", user_id))

        if self._nursery is not None:
            self._nursery.start_soon(later)

    async def _catch_up(self, user_id: int, chat_ids: list[int]) -> None:
        assert self.chats is not None
        sessions = self.hub.sessions_of(user_id)
        if not sessions:
            return
        for chat in (await self.chats.load_many(chat_ids)).values():
            visible = chat.visible_range(user_id)
            if visible is None:
                continue
            for session in sessions:
                session.notice(chat.id, visible[1])

    def _resubscribe_local(self, user_ids: Iterable[int]) -> None:
        for user_id in user_ids:
            if self.hub.is_online(user_id):
                self._work_send.send_nowait(("subscribe", user_id))

    async def _rebalance(self, before: Ownership) -> None:
        """After a change of the view (from `before`): subscribe again where chats moved
        (compared with the view now, so several quick changes are all covered), register
        users at their new homes."""
        users = list(self._local_chats)
        for i, user_id in enumerate(users):
            if not self.hub.is_online(user_id):
                continue
            if before.owner(user_id, USER) != self.home(user_id):
                self._locate(user_id, True)
            chats = self._local_chats.get(user_id, set())
            moved = {c for c in chats if before.owner(c, CHAT) != self.owner(c)}
            await self._subscribe(user_id, moved, fresh=False)
            if i % RESUBSCRIBE_CHUNK == 0:
                await trio.lowlevel.checkpoint()

    # -- users anywhere ------------------------------------------------------------------

    def send_to_users(self, user_ids: Iterable[int], payload: bytes) -> None:
        by_home: dict[int, list[int]] = {}
        for user_id in user_ids:
            for session in self.hub.sessions_of(user_id):
                session.send_event(payload)
            by_home.setdefault(self.home(user_id), []).append(user_id)
        for home, users in by_home.items():
            if home == self.node_id:
                self._relay(users, payload, self.node_id)
            elif self.links is not None:
                self.links.send(home, ("relay", users, payload, self.node_id))

    def _relay(self, users: list[int], payload: bytes, origin: int) -> None:
        by_node: dict[int, list[int]] = {}
        for user_id in users:
            for node in self.locations.get(user_id, ()):
                if node != origin:
                    by_node.setdefault(node, []).append(user_id)
        for node, node_users in by_node.items():
            self.stats["relayed"] += 1
            if node == self.node_id:
                self._deliver_event(node_users, payload)
            elif self.links is not None:
                self.links.send(node, ("ev", node_users, payload))

    def _deliver_event(self, users: Iterable[int], payload: bytes) -> None:
        for user_id in users:
            for session in self.hub.sessions_of(user_id):
                session.send_event(payload)

    async def is_online(self, user_id: int) -> bool:
        if self.hub.is_online(user_id):
            return True
        home = self.home(user_id)
        if home == self.node_id:
            return bool(self.locations.get(user_id))
        answer: list[bool] = []
        settled = trio.Event()

        def on_result(ok: bool, kind: str, value: Any) -> None:
            answer.append(bool(ok and value))
            settled.set()

        if not self._request(home, lambda req: ("online?", req, user_id), on_result):
            return False
        await settled.wait()
        return answer[0]

    def invalidate(self, kind: str, ids: Iterable[int]) -> None:
        self._broadcast(("inv", kind, list(ids)))

    def revoke(self, token_hash: bytes) -> None:
        self.hub.revoke(token_hash)
        self._broadcast(("revoke", token_hash))

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        if self.links is not None:
            for node in self._members:
                if node != self.node_id:
                    self.links.send(node, message)

    # -- messages from other nodes ---------------------------------------------------------

    def on_message(self, peer: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "dlv":
            _, chat_id, seq, event, recipients, exclude_node, exclude_device = message
            self.stats["deliveries_received"] += 1
            for user_id, floor in recipients:
                for session in self.hub.sessions_of(user_id):
                    if exclude_node == self.node_id and session.device_id == exclude_device:
                        continue
                    session.deliver(chat_id, seq, event, floor)
        elif kind == "res":
            self._on_result(*message[1:])
        elif kind == "send":
            self._serve_send(peer, *message[1:])
        elif kind == "run":
            self._serve_run(peer, *message[1:])
        elif kind == "op":
            self._serve_op(*message[1:])
        elif kind == "ev":
            self._deliver_event(message[1], message[2])
        elif kind == "relay":
            self._relay(list(message[1]), message[2], message[3])
        elif kind == "sub":
            _, req, user_id, chat_ids, on = message
            for chat_id in chat_ids:
                users = self.subs.setdefault(chat_id, {}).setdefault(peer, set())
                (users.add if on else users.discard)(user_id)
            if req:
                self.answer(peer, req, True, "value", None)
        elif kind == "loc":
            self._on_loc(peer, message[1], message[2])
        elif kind == "online?":
            _, req, user_id = message
            online = bool(self.locations.get(user_id)) or self.hub.is_online(user_id)
            self.answer(peer, req, True, "value", online)
        elif kind == "inv":
            _, what, ids = message
            if what == "user" and self.accounts is not None:
                self.accounts.forget_users(ids)
            elif what == "blocks" and self.blocks is not None:
                self.blocks.forget(ids)
            elif what == "user_chats" and self.chats is not None:
                self.chats.forget_user_chats(ids)
                self._resubscribe_local(ids)
        elif kind == "resub":
            self._work_send.send_nowait(("peer_restarted", peer))
        elif kind == "bye":
            if peer in self._members and peer not in self.departing:
                self.departing.add(peer)
                self._reown()
            assert self.links is not None
            self.links.send(peer, ("byeok",))
        elif kind == "byeok":
            self._bye_unanswered.discard(peer)
            self._quiet.set()
        elif kind == "revoke":
            if self.accounts is not None:
                self.accounts.forget_device(message[1])
            self.hub.revoke(message[1])
        else:
            log.warning("cluster routing: unknown message %r from node %d", kind, peer)

    # -- observing -------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        assert self.chats is not None
        return {
            **self.stats,
            "members": len(self.ownership.members),
            "chats_owned": len(self.chats._chats),
            "subscribed_chats": len(self.subs),
            "users_homed": len(self.locations),
            "pending_requests": len(self._pending),
            "request_rtt_ms": round(1000 * self._rtt_total / self._rtt_count, 3) if self._rtt_count else 0.0,
            "links": self.links.statistics() if self.links is not None else {},
        }
