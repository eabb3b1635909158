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
send       req, user, device, chat, client_msg_id, content,    a device's send, to the chat's owner
           hops, gone
run        req, operation, fields, hops, gone                  an awaited operation, to the owner
op         operation, fields, hops, gone                       a fire-and-forget one (``received``)
res        req, ok, kind, value                                the answer to ``send``/``run``/``online?``/
                                                               ``sub``/``stat?``
dlv        chat, seq, event, [(user, floor)], exclude          a stored entry for devices on the node
sub        req, user, [chats], on                              the user's devices here follow these chats
loc        user, on                                            to the user's home: devices here or not
lost       [users]                                             to the users' new home: they had devices on
                                                               a member that failed (or restarted), and it
                                                               was their home
relay      [users], payload, origin                            to the users' home: pass an event on
ev         [users], payload                                    an ephemeral event for devices here
online?    req, user                                           to the user's home (to every node while it
                                                               is unsettled): any device of the user's?
inv        kind, [ids]                                         caches to drop (``user``, ``blocks``,
                                                               ``user_chats``)
revoke     token_hash                                          close that device's sockets here
resub                                                          send me your subscriptions again (the
                                                               sender had given this node up)
seq        [(chat, seq)]                                       the sender stopped sequencing these
                                                               chats, stored up to these seqs
bye                                                            the sender is stopping: it owns nothing
                                                               now, and passes on what still reaches it
byeok                                                          the ``bye`` was seen: nothing more will
                                                               be sent to be sequenced there
stat?      req                                                 what do you sequence, serve and queue?
                                                               (for the admin's cluster view)
=========  ==================================================  =====================================

**How an owner learns where members' devices are.** When a user's first device connects
to a node, the node subscribes the user, at the owner of each of the user's chats, for
that node (``sub``); when the last one goes, it unsubscribes. The owner then sends each
stored entry once per subscribed node (``dlv``), naming the members there who may see
it; that node offers it to their devices. After the owner confirms (its ``res``), the node
re-reads the chats' stored seqs and lets its devices catch up from the log on whatever
was stored before the subscription took effect, so nothing falls in between. When
ownership moves, nodes subscribe again at the new owners (and catch up the same way).

**Views that disagree.** A request travels at most ``MAX_HOPS`` times (``hops``). It
names the members its forwarders know to be stopping (``gone``: those that said ``bye``,
and the forwarder itself if it is stopping), since a ``bye`` may reach this node later
than a request that went round it through a third node. A node that still takes one of
them for the chat's owner holds the request (``PARK_TIMEOUT`` at most) until its own view
moves on, instead of sending it back to where it was refused; after that it goes by its
own view.

**Where users are.** A user's home keeps the set of nodes with a device of theirs
(``loc``): ephemeral events (typing, receipts, presence) go there to be passed on
(``relay``), presence edges (``on_user_online``/``on_user_offline``) fire there once for
the whole cluster, and ``is_online`` asks it. Nodes register their users at a new home
once their own view has moved, so a home passes the events of a user it became home of
within ``HOME_SETTLE`` (or is not home of in its view) to every node, and ``is_online``
asks every node then; relays queued for a home that left go to the next one. A member
that fails takes with it the locations it kept as home: the owners that had its users'
devices subscribed tell each user's new home (``lost``), which fires ``on_user_offline``
for those no node has registered once ``HOME_SETTLE`` has passed; so do they when a peer
restarts too fast for membership to see it fail (its new life is the home again).

**A polite stop.** A stopping node gives up its chats and users at once (it stops
sequencing and passes on whatever still reaches it) and says ``bye`` to every peer. Each
peer moves what the stopping node owned to the next owners, just as for a failure,
answers ``byeok``, and from then on sends it nothing to sequence. The stopping node waits
for every ``byeok`` and for every answer it owes or is owed before it leaves the
membership and closes its links, so no request is left without an answer: a rolling
restart costs its clients a reconnect (and, under load, rarely a retried ``unavailable``),
never a message. When the node comes back, its new life's hello may reach a peer after the
requests that peer already sent it (over a new link, once the new life was in the peer's
view): those are answered, and only requests sent to the life that ended are failed (see
``peer_restarted``).
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from ..cluster.metrics import ClusterMetrics
from ..cluster.ownership import CHAT, SINGLETON, USER, Ownership, owner_of
from ..plugin_api import PluginError
from ..storage import StorageError
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
LEFT_ANSWER_GRACE = 1.0  # seconds the answers of a member that left politely may still take to arrive
PARK_TIMEOUT = 2.0  # seconds a request waits for this node's view to learn that its owner is stopping
RESUBSCRIBE_CHUNK = 200  # users resubscribed between checkpoints after ownership moves
RESUBSCRIBE_DELAY = 0.2  # seconds before a refused subscription (or work whose read failed) is tried again
STORAGE_RETRY_DELAY = 1.0  # seconds before work that storage refused (a failover?) is done again
MOVES_CHUNK = 1000  # chats compared between checkpoints when counting ownership moves
HOME_SETTLE = 10.0  # seconds after a user's home moved during which their events go to every node

def forwardable(name: str) -> type[Operation] | None:
    """The operation class of that name, if it may travel to a chat's owner: one with a
    chat and plain-data fields (a send travels as ``send``: it names its device)."""
    cls = OPERATIONS.get(name)
    if cls is None or cls is SendMessage or "chat_id" not in {f.name for f in _attributes(cls)}:
        return None
    return cls


def _attributes(cls: type) -> tuple[attrs.Attribute[Any], ...]:
    """The attrs fields of an operation class (none if it is not an attrs class)."""
    return tuple(attrs.fields(cls)) if attrs.has(cls) else ()


def _fields(op: Operation) -> dict[str, Any]:
    return {f.name: getattr(op, f.name) for f in _attributes(type(op)) if f.init}


def _error_value(error: ChatError) -> list[Any]:
    return [error.code, error.message, error.status]


def _error_from(value: Any) -> ChatError:
    code, message, status = value
    return PluginError(code, message, status=status)


# `unavailable` answers, one text per cause (the code is the same; the text helps operators)
UNREACHABLE = ChatError("unavailable", "the node that owns this chat cannot be reached; retry")
OWNER_RESTARTED = ChatError("unavailable", "the node that owns this chat restarted before answering; retry")
OWNER_GONE = ChatError("unavailable", "the node that owns this chat left or failed before answering; retry")
OWNER_SILENT = ChatError("unavailable", "the node that owns this chat did not answer in time; retry")
NO_OWNER = ChatError("unavailable", "the nodes do not yet agree which one owns this chat; retry")


@attrs.define(eq=False)
class _Request:
    peer: int
    deadline: float
    on_result: Callable[[bool, str, Any], None]
    sent: float = attrs.Factory(trio.current_time)
    forward: bool = False  # an operation forwarded to its chat's owner: its answer time is observed


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
        self._entered_at: dict[int, float] = {}  # when each peer last came into the view
        self._bye_unanswered: set[int] = set()  # peers yet to answer this node's `bye`
        self._quiet = trio.Event()  # set when a change may have settled the hand-over
        # Request ids are unique across restarts of this node: a peer may still hold answers
        # for this node's previous life in its queue, and they must never match a new request.
        self._req_ids = itertools.count((secrets.randbits(30) + 1) << 32)
        self._pending: dict[int, _Request] = {}
        # Requests whose owner in this view is a member their forwarders know to be stopping:
        # (operation, hops, gone, until when) until the view catches up (`_unpark`).
        self._parked: list[tuple[Operation, int, frozenset[int], float]] = []
        self.subs: dict[int, dict[int, set[int]]] = {}  # owner side: chat -> node -> users
        self.locations: dict[int, set[int]] = {}  # home side: user -> nodes with a device of theirs
        # Views this node had before recent changes, until when each counts: a user whose home
        # moved here since may have devices on nodes that have not registered them yet.
        self._moved_homes: list[tuple[float, Ownership]] = []
        self._lost: set[int] = set()  # home side: users said `lost`, not yet checked
        self._local_chats: dict[int, set[int]] = {}  # this node: user -> chats subscribed for them
        self._work_send, self._work_recv = trio.open_memory_channel[tuple[str, Any]](100_000)
        self.stats = {"forwarded": 0, "forward_failures": 0, "served": 0, "deliveries_sent": 0,
                      "deliveries_received": 0, "relayed": 0, "request_timeouts": 0, "deferred_for_storage": 0}
        self.metrics = ClusterMetrics()  # for /metrics (node/cluster/metrics.py)
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
        for node in members.keys() - known - {self.node_id}:
            self._entered_at[node] = trio.current_time()
        orphans = {u for node in gone for u in self._orphaned_by(node)}  # (before the subscriptions go)
        unsent = [message for node in gone for message in self._peer_gone(node)]
        self._members = dict(members)
        self.departing &= set(members)
        self._bye_unanswered &= set(members)
        self._reown()
        self._to_homes(orphans, self._on_lost, lambda users: ("lost", users))
        for message in unsent:  # never left this node: to the chats' owners (users' homes) in the new view
            if message[0] == "op":
                _, name, fields, hops, *hint = message
                self._serve_op(name, fields, hops, *hint)
            elif message[0] == "relay":
                _, users, payload, origin = message
                self._relay_via_homes(users, payload, origin)
            else:  # "run": served here as if it had come from this node, answered to its request
                _, req, name, fields, hops, *hint = message
                self._serve_run(self.node_id, req, name, fields, hops, *hint)

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
        view_before = self.ownership.members
        self.joined = True
        if self.leaving and not set(members) - {self.node_id}:
            self.leaving = False  # everyone else is gone: the chats come back until this node stops
            self._bye_unanswered.clear()
        self._quiet.set()
        if not self.ownership.update(members, include_self=not self.leaving):
            return
        self._settling_views()  # (drops those that have settled)
        self._moved_homes.append((trio.current_time() + HOME_SETTLE, before))
        known = set(self.chats._chats) | set(self.subs)  # before they are dropped below
        self.given_up(self.chats.forget_chats(self.owns))
        for chat_id in [c for c in self.subs if not self.owns(c)]:
            del self.subs[chat_id]
        for user_id in [u for u in self.locations if self.ownership.owner(u, USER) != self.node_id]:
            del self.locations[user_id]
        self._work_send.send_nowait(("rebalance", before))
        self._work_send.send_nowait(("count_moves", (view_before, self.ownership.members, known)))
        self._unpark()

    def peer_restarted(self, node: int) -> None:
        """A peer came back as a new process (a crash and a quick restart that membership
        may never have seen as a failure): what it held in memory is gone. Its old
        subscriptions and user locations here are dropped (it registers its own users
        again), this node subscribes and registers its users there again, and tells it
        which of its users had their devices subscribed here from it (`lost`).

        Requests still waiting for its answer are failed (`unavailable`: the client's
        retry settles them) if they went to the life that ended. Those sent after the
        peer came back into this node's view went to the new life over a new link, and
        are answered: the new life's hello may arrive after them, when the old life spoke
        again once this node had given it up."""
        orphans = self._orphaned_by(node)  # (before the subscriptions go)
        back = self._entered_at.pop(node, None)
        since = back if back is not None and trio.current_time() - back < REQUEST_TIMEOUT else None
        for req, request in list(self._pending.items()):
            if request.peer == node and (since is None or request.sent < since):
                del self._pending[req]
                request.on_result(False, "error", _error_value(OWNER_RESTARTED))
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
        # Its users whose devices were there alone: the new life, their home, never heard
        # of them, so no one would say they went offline (as for a member that failed).
        self._to_homes(orphans, self._on_lost, lambda users: ("lost", users))
        self._work_send.send_nowait(("peer_restarted", node))

    async def _redo_with(self, node: int) -> None:
        """Subscribe and register this node's users again at a peer that restarted or had
        given this node up. That peer may have stored entries this node was never sent:
        while the views disagreed (a partition) it sequenced the chats it owned in its own
        view, and a peer that died may have stored an entry without passing it on. So
        what this node cached about chats is read again, and its devices catch up from
        the log on every chat (those subscribed again do once the owner confirms)."""
        assert self.chats is not None
        self.chats.refresh(list(self.chats._chats))
        for i, (user_id, chats) in enumerate(list(self._local_chats.items())):
            if not self.hub.is_online(user_id):
                continue
            if self.home(user_id) == node:
                self._locate(user_id, True)
            moved = {c for c in chats if self.owner(c) == node}
            await self._subscribe(user_id, moved, fresh=False)
            await self._catch_up(user_id, sorted(chats - moved))
            if i % RESUBSCRIBE_CHUNK == 0:
                await trio.lowlevel.checkpoint()

    def given_up(self, chats: list[tuple[int, int]]) -> None:
        """Chats this node sequenced and owns no more. Members whose view differed (a
        partition, a join not yet heard of everywhere) subscribed their devices at
        another owner and were never sent what this node stored: every member is told
        how far each chat is stored, so those devices catch up and owners reading a
        stale copy read it again."""
        chats = [(chat_id, seq) for chat_id, seq in chats if seq]
        if chats:
            self._broadcast(("seq", chats))

    def _on_stored(self, chats: list[tuple[int, int]]) -> None:
        """Another node stored these chats up to these seqs (`seq`)."""
        assert self.chats is not None
        stored = dict(chats)
        self.chats.refresh([c for c, seq in stored.items() if (chat := self.chats.get(c)) and chat.committed_seq < seq])
        for user_id, followed in self._local_chats.items():
            for chat_id in followed & stored.keys():
                for session in self.hub.sessions_of(user_id):
                    session.notice(chat_id, stored[chat_id])

    def link_interrupted(self, node: int) -> None:
        """A peer's stream to this node ended or was dialed again: what was in flight on
        it may be lost, deliveries included, so the devices here catch up from the log
        on the chats that peer owns."""
        if node in self._members:
            self._work_send.send_nowait(("interrupted", node))

    async def _catch_up_from(self, node: int) -> None:
        for i, (user_id, chats) in enumerate(list(self._local_chats.items())):
            owned = sorted(c for c in chats if self.owner(c) == node)
            if owned and self.hub.is_online(user_id):
                await self._catch_up(user_id, owned)
            if i % RESUBSCRIBE_CHUNK == 0:
                await trio.lowlevel.checkpoint()

    def _peer_gone(self, node: int) -> list[Any]:
        """Forget a member that left the view. Returns the operations still queued for it,
        fire-and-forget (`received`) or awaited (`read`, a reaction, a group change, ...):
        they never left, so they go to the chats' owners in the new view, each applied
        once; and the events queued for it as their users' home (`relay`), which go to
        the users' new homes. A `send` still queued fails like one in flight (the client
        retries it with its client_msg_id); so do awaited operations whose request has
        already expired, since their requester was told they failed."""
        assert self.links is not None
        unsent = [m for m in self.links.drop_peer(node)
                  if m[0] in ("op", "relay") or (m[0] == "run" and m[1] in self._pending)]
        for message in unsent:
            if message[0] == "run":
                self._pending[message[1]].peer = self.node_id  # answered here now
        waiting = [req for req, request in self._pending.items() if request.peer == node]
        if node in self.departing and self._nursery is not None:
            # It said `bye` and wrote out every answer it owed before it left, but the news
            # of its leaving (gossip) may overtake those answers (its stream): they get a
            # moment to arrive.
            self._nursery.start_soon(self._fail_later, waiting)
        else:
            self._fail(waiting)
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
        return unsent

    def _fail(self, reqs: Iterable[int]) -> None:
        """Answer these requests, if still unanswered, with `unavailable`."""
        for req in reqs:
            request = self._pending.pop(req, None)
            if request is not None:
                request.on_result(False, "error", _error_value(OWNER_GONE))
        if not self._pending:
            self._quiet.set()

    async def _fail_later(self, reqs: list[int]) -> None:
        await trio.sleep(LEFT_ANSWER_GRACE)
        self._fail(reqs)

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
                 on_result: Callable[[bool, str, Any], None], *, timeout: float = REQUEST_TIMEOUT,
                 forward: bool = False) -> int:
        """Send a request; `on_result` gets its answer, or an error once `timeout` has
        passed. Returns its id, or 0 if it could not be queued for the peer."""
        assert self.links is not None
        req = next(self._req_ids)
        self._pending[req] = _Request(peer, trio.current_time() + timeout, on_result, forward=forward)
        if self.links.send(peer, message_for(req)):
            return req
        del self._pending[req]
        self.stats["forward_failures"] += 1
        return 0

    async def ask(self, peer: int, message_for: Callable[[int], tuple[Any, ...]],
                  timeout: float) -> tuple[Any, float] | None:
        """A request to a peer, awaited for at most `timeout` seconds: (the answer's value,
        seconds from sending to the answer), or None if it could not be sent, was refused
        or did not come in time (a late answer is then ignored)."""
        answer: list[tuple[bool, Any, float]] = []
        came = trio.Event()
        started = trio.current_time()

        def on_result(ok: bool, kind: str, value: Any) -> None:
            answer.append((ok, value, trio.current_time() - started))
            came.set()

        req = self._request(peer, message_for, on_result, timeout=timeout)
        if not req:
            return None
        try:
            with trio.move_on_after(timeout):
                await came.wait()
        finally:  # (also when cancelled: the answer is not wanted any more)
            if not answer:
                self._pending.pop(req, None)
                if not self._pending:
                    self._quiet.set()
        if not answer:
            return None
        ok, value, took = answer[0]
        return (value, took) if ok else None

    def answer(self, node: int, req: int, ok: bool, kind: str, value: Any) -> None:
        if node == self.node_id:
            self._on_result(req, ok, kind, value)
        elif self.links is not None:
            self.links.send(node, ("res", req, ok, kind, value))

    def forward_nowait(self, op: Operation, hops: int = 0, gone: Iterable[int] = (),
                       until: float | None = None) -> None:
        """Send an operation on to its chat's owner. `gone`: members that the nodes it came
        through know to be stopping; if this view still has one of them as the owner, the
        operation waits here for the view to catch up (see the module docstring)."""
        owner = self.owner(op.chat_id)  # type: ignore[attr-defined]
        gone = frozenset(gone)
        if owner in gone and owner != self.node_id and hops < MAX_HOPS:
            now = trio.current_time()
            if until is None or now < until:
                self._parked.append((op, hops, gone, now + PARK_TIMEOUT if until is None else until))
                return
            gone = frozenset()  # waited long enough: this node's own view decides
        if hops >= MAX_HOPS or owner == self.node_id:
            op.reject(NO_OWNER)
            return
        gone = gone | self.departing | ({self.node_id} if self.leaving else set())
        hint = sorted(gone)
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

            sent = bool(self._request(owner, lambda req: (
                "send", req, origin.user_id, device, op.chat_id, op.client_msg_id, orjson.dumps(op.content), hops + 1,
                hint,
            ), on_send_result, forward=True))
        elif isinstance(op, Awaitable):
            sent = bool(self._request(owner, lambda req: (
                "run", req, type(op).__name__, orjson.dumps(_fields(op)), hops + 1, hint,
            ), lambda ok, kind, value: self._settle(op, ok, kind, value), forward=True))
        else:
            assert self.links is not None
            sent = self.links.send(owner, ("op", type(op).__name__, orjson.dumps(_fields(op)), hops + 1, hint))
            if not sent:
                self.stats["forward_failures"] += 1
        if sent:
            self.stats["forwarded"] += 1
            self.metrics.forwarded.inc(type(op).__name__)
        else:
            op.reject(UNREACHABLE)

    def _unpark(self, expired_only: bool = False) -> None:
        """Go on with held requests: all of them once the view has changed, else those
        that have waited `PARK_TIMEOUT` (they then go by this node's own view)."""
        if not self._parked:
            return
        now = trio.current_time()
        held, self._parked = self._parked, []
        for op, hops, gone, until in held:
            if expired_only and now < until:
                self._parked.append((op, hops, gone, until))
            elif self.owns(op.chat_id):  # type: ignore[attr-defined]
                assert self.chats is not None
                if not self.chats.submit_nowait(op):
                    op.reject(ChatError("unavailable", "the node is overloaded; retry"))
            else:
                self.forward_nowait(op, hops, gone, until)

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
        took = trio.current_time() - request.sent
        self._rtt_total += took
        self._rtt_count += 1
        if request.forward:
            self.metrics.forward.observe(took)
        request.on_result(ok, kind, value)

    async def _expire_requests(self) -> None:
        while True:
            await trio.sleep(1.0)
            self._unpark(expired_only=True)
            now = trio.current_time()
            for req, request in list(self._pending.items()):
                if request.deadline <= now:
                    del self._pending[req]
                    self.stats["request_timeouts"] += 1
                    request.on_result(False, "error", _error_value(OWNER_SILENT))

    # -- what the owner does for others ----------------------------------------------------

    def _serve_send(self, peer: int, req: int, user: int, device: int, chat_id: int, cmid: str, content: bytes,
                    hops: int, gone: Iterable[int] = ()) -> None:
        assert self.chats is not None
        self.stats["served"] += 1
        op = SendMessage(RemoteOrigin(self, peer, req, user, device), chat_id, cmid, orjson.loads(content))
        if not self.owns(chat_id):
            self.forward_nowait(op, hops, gone)
        elif not self.chats.submit_nowait(op):
            op.reject(ChatError("unavailable", "the node is overloaded; retry"))

    def _serve_run(self, peer: int, req: int, name: str, fields: bytes, hops: int, gone: Iterable[int] = ()) -> None:
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
            self.forward_nowait(op, hops, gone)
        elif not self.chats.submit_nowait(op):
            op.reject(ChatError("unavailable", "the node is overloaded; retry"))

    def _serve_op(self, name: str, fields: bytes, hops: int, gone: Iterable[int] = ()) -> None:
        assert self.chats is not None
        cls = forwardable(name)
        if cls is None:
            return
        op = cls(**orjson.loads(fields))
        if not self.owns(op.chat_id):  # type: ignore[attr-defined]
            self.forward_nowait(op, hops, gone)
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

    def _orphaned_by(self, node: int) -> set[int]:
        """Users whose devices on `node` (leaving the view) were subscribed here and whose
        home it was: no node is left that knows they were online (`lost`). None if it
        said `bye`: its users were re-homed then."""
        if node in self.departing:
            return set()
        return {u for by_node in self.subs.values() for u in by_node.get(node, ()) if self.home(u) == node}

    def _on_lost(self, users: Iterable[int]) -> None:
        """These users had devices on a member that failed while it was their home, so no
        node remembers them as online there: once their other nodes have had HOME_SETTLE to
        register them here, those still unregistered went offline with it."""
        fresh = [u for u in users if u not in self._lost]
        if fresh and self._nursery is not None:
            self._lost.update(fresh)
            self._nursery.start_soon(self._offline_unless_registered, fresh)

    async def _offline_unless_registered(self, users: list[int]) -> None:
        await trio.sleep(HOME_SETTLE)
        for user_id in users:
            self._lost.discard(user_id)
            if self.home(user_id) == self.node_id and not self.locations.get(user_id):
                self.plugins.notify("on_user_offline", user_id=user_id)

    async def _worker(self) -> None:
        """Subscribe connecting users at the owners of their chats, catch their devices up
        once an owner confirmed, resubscribe after ownership moved. One task, so the work
        for one user stays in order. Work that storage could not serve (a database
        failover, say) is done again later: dropped, it would leave devices without live
        messages."""
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
                elif kind == "count_moves":
                    await self._count_moves(*value)
                elif kind == "peer_restarted":
                    await self._redo_with(value)
                elif kind == "interrupted":
                    await self._catch_up_from(value)
            except StorageError as exc:  # a read failed (a failover?): the same work again shortly
                log.warning("cluster routing: %s of %s failed (%s); trying again", kind, value, exc)
                self._later((kind, value))
            except Exception:
                log.exception("cluster routing: %s of %s failed", kind, value)

    def _later(self, work: tuple[str, Any]) -> None:
        """Queue `work` again after STORAGE_RETRY_DELAY (storage was unavailable)."""
        self.stats["deferred_for_storage"] += 1

        async def later() -> None:
            await trio.sleep(STORAGE_RETRY_DELAY)
            self._work_send.send_nowait(work)

        if self._nursery is not None:
            self._nursery.start_soon(later)

    async def _subscribe(self, user_id: int, moved: set[int] | None = None, *, fresh: bool = True) -> None:
        """Subscribe the user at the owners of the chats not subscribed yet (a refused or
        failed subscription is not), and again at those of `moved`. `fresh`: read the
        user's chats again (on connect), rather than from the cache."""
        assert self.chats is not None
        known = self._local_chats.setdefault(user_id, set())
        if moved:
            known.difference_update(moved)  # to subscribe again (and still to do if storage fails)
        if fresh:
            self.chats.forget_user_chats((user_id,))
        try:
            chat_ids = await self.chats.chat_ids_of(user_id)
        except StorageError:
            self._later(("subscribe_cached", user_id))
            return
        if not self.hub.is_online(user_id):
            self._local_chats.pop(user_id, None)  # gone while reading: nothing may look subscribed when back
            return
        by_owner: dict[int, list[int]] = {}
        for chat_id in chat_ids:
            if chat_id not in known:
                by_owner.setdefault(self.owner(chat_id), []).append(chat_id)
            known.add(chat_id)
        for owner, ids in by_owner.items():
            if owner == self.node_id:
                try:
                    await self._catch_up(user_id, ids)  # stored before this node owned them
                except StorageError:  # they are subscribed: only the catch-up is owed
                    self._later(("caught_up", (user_id, ids)))
                continue

            def subscribed(ok: bool, kind: str, value: Any, ids: list[int] = ids) -> None:
                if ok:  # the owner registered: what was stored before, the log has
                    self._work_send.send_nowait(("caught_up", (user_id, ids)))
                else:  # not registered: try again shortly
                    self._local_chats.get(user_id, set()).difference_update(ids)
                    self._retry_subscribe(user_id)

            def subscription(req: int, ids: list[int] = ids) -> tuple[Any, ...]:
                return ("sub", req, user_id, ids, True)

            if not self._request(owner, subscription, subscribed):
                known.difference_update(ids)
                self._retry_subscribe(user_id)

    _nursery: trio.Nursery | None = None

    def _retry_subscribe(self, user_id: int) -> None:
        self._retry_work("subscribe_cached", user_id)

    def _retry_work(self, kind: str, value: Any) -> None:
        """Queue work again after RESUBSCRIBE_DELAY (it failed, or was refused)."""
        async def later() -> None:
            await trio.sleep(RESUBSCRIBE_DELAY)
            self._work_send.send_nowait((kind, value))

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

    async def _count_moves(self, before: tuple[int, ...], after: tuple[int, ...], known: set[int]) -> None:
        """Count the chats whose owner differs between two views, among those this node
        knew of: the chats it sequenced, those peers had subscribed to here, and those its
        users follow. Off the membership callback, with checkpoints: hashing is not free."""
        if not before or not after:
            return
        chats = set(known)
        for i, followed in enumerate(list(self._local_chats.values())):
            chats.update(followed)
            if i % MOVES_CHUNK == 0:
                await trio.lowlevel.checkpoint()
        moved = 0
        for i, chat_id in enumerate(chats):
            moved += owner_of(chat_id, before, CHAT) != owner_of(chat_id, after, CHAT)
            if i % MOVES_CHUNK == 0:
                await trio.lowlevel.checkpoint()
        self.metrics.ownership_moves += moved

    # -- users anywhere ------------------------------------------------------------------

    def send_to_users(self, user_ids: Iterable[int], payload: bytes) -> None:
        users = list(user_ids)
        for user_id in users:
            for session in self.hub.sessions_of(user_id):
                session.send_event(payload)
        self._relay_via_homes(users, payload, self.node_id)

    def _relay_via_homes(self, user_ids: Iterable[int], payload: bytes, origin: int) -> None:
        """An event for these users, to be passed on by their homes in this view."""
        self._to_homes(user_ids, lambda users: self._relay(users, payload, origin),
                       lambda users: ("relay", users, payload, origin))

    def _to_homes(self, user_ids: Iterable[int], here: Callable[[list[int]], None],
                  message: Callable[[list[int]], tuple[Any, ...]]) -> None:
        """Users grouped by their home in this view: `here` for those of this node, one
        link message per other home."""
        by_home: dict[int, list[int]] = {}
        for user_id in user_ids:
            by_home.setdefault(self.home(user_id), []).append(user_id)
        for home, users in by_home.items():
            if home == self.node_id:
                here(users)
            elif self.links is not None:
                self.links.send(home, message(users))

    def _relay(self, users: list[int], payload: bytes, origin: int) -> None:
        """Pass an event on to the nodes with the users' devices (not back to `origin`,
        which gave it to its own). A user this node is not home of in its view, or became
        home of within HOME_SETTLE, may have devices on nodes that have not registered
        them here yet: their events go to every node."""
        by_node: dict[int, list[int]] = {}
        unsettled: list[int] = []
        settling = self._settling_views()
        for user_id in users:
            if self._home_unsettled(user_id, settling):
                unsettled.append(user_id)
                continue
            for node in self.locations.get(user_id, ()):
                if node != origin:
                    by_node.setdefault(node, []).append(user_id)
        if unsettled:
            for node in self._members or (self.node_id,):
                if node != origin:
                    by_node.setdefault(node, []).extend(unsettled)
        for node, node_users in by_node.items():
            self.stats["relayed"] += 1
            if node == self.node_id:
                self._deliver_event(node_users, payload)
            elif self.links is not None:
                self.links.send(node, ("ev", node_users, payload))

    def _settling_views(self) -> list[Ownership]:
        """The views before the changes of the last HOME_SETTLE seconds."""
        if self._moved_homes:
            now = trio.current_time()
            self._moved_homes = [(until, view) for until, view in self._moved_homes if until > now]
        return [view for _, view in self._moved_homes]

    def _home_unsettled(self, user_id: int, settling: list[Ownership]) -> bool:
        if self.home(user_id) != self.node_id:
            return True  # the sender's view differs from this node's
        # a view of this node alone: it had just started, or had no peers to learn from
        return any(len(view.members) <= 1 or view.owner(user_id, USER) != self.node_id for view in settling)

    def _deliver_event(self, users: Iterable[int], payload: bytes) -> None:
        for user_id in users:
            for session in self.hub.sessions_of(user_id):
                session.send_event(payload)

    async def is_online(self, user_id: int) -> bool:
        """Whether a device of the user's is connected to any node. The user's home knows,
        once it has settled: a home that moved within HOME_SETTLE (in this node's view)
        may not have heard of every device yet, so then every node is asked."""
        if self.hub.is_online(user_id):
            return True
        home = self.home(user_id)
        if home == self.node_id:
            if self.locations.get(user_id):
                return True
            if not self._home_unsettled(user_id, self._settling_views()):
                return False
        elif not self._settling_views():
            return await self._online_at_any([home], user_id)
        # this node's view moved lately: the home may not have heard of every device yet
        return await self._online_at_any([node for node in self._members if node != self.node_id], user_id)

    async def _online_at_any(self, nodes: list[int], user_id: int) -> bool:
        """Ask these nodes at once whether they know of a device of the user's; True at
        the first yes, False once each said no or did not answer in time."""
        if self.links is None or not nodes:
            return False
        found = False

        async def ask_one(node: int, cancel_scope: trio.CancelScope) -> None:
            nonlocal found
            answer = await self.ask(node, lambda req: ("online?", req, user_id), REQUEST_TIMEOUT)
            if answer is not None and answer[0]:
                found = True
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask_one, node, nursery.cancel_scope)
        return found

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
        elif kind == "lost":
            self._on_lost(message[1])
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
        elif kind == "seq":
            self._on_stored([(int(c), int(s)) for c, s in message[1]])
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
        elif kind == "stat?":
            self.answer(peer, message[1], True, "value", self.report())
        elif kind == "revoke":
            if self.accounts is not None:
                self.accounts.forget_device(message[1])
            self.hub.revoke(message[1])
        else:
            log.warning("cluster routing: unknown message %r from node %d", kind, peer)

    # -- observing -------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What this node tells a peer that asks (``stat?``) for the cluster view
        (node/cluster/status.py): what it sequences, serves and queues, as it is now."""
        assert self.chats is not None
        hub = self.hub.statistics()
        links = self.links
        return {
            "chats_sequenced": len(self.chats._chats),
            "devices": hub["connections"],
            "users_online": hub["users_online"],
            "subscribed_chats": len(self.subs),
            "users_homed": len(self.locations),
            "pending_requests": len(self._pending),
            "view": list(self.ownership.members),
            "leaving": self.leaving,
            "links": {str(n): links.peer_statistics(n) for n in self._members if n != self.node_id}
            if links is not None else {},
        }

    def statistics(self) -> dict[str, Any]:
        assert self.chats is not None
        return {
            **self.stats,
            "ownership_moves": self.metrics.ownership_moves,
            "members": len(self.ownership.members),
            "chats_owned": len(self.chats._chats),
            "subscribed_chats": len(self.subs),
            "users_homed": len(self.locations),
            "pending_requests": len(self._pending),
            "request_rtt_ms": round(1000 * self._rtt_total / self._rtt_count, 3) if self._rtt_count else 0.0,
            "links": self.links.statistics() if self.links is not None else {},
        }
