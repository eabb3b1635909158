"""The SWIM protocol loops with Lifeguard's refinements, over an injected transport and clock.

Task tree (all in the nursery of ``Membership.run``)::

    run
    ├── receive loop       datagrams: ping → ack, ping-req → relay, gossip → member table
    ├── stream server      push-pull state exchanges (one task per connection)
    ├── probe loop         one member per (health-scaled) probe interval, round robin
    ├── gossip loop        pending broadcasts to ``gossip_nodes`` members per interval
    ├── push-pull loop     full state with a random live member (scaled by cluster size)
    ├── reconnect loop     full state with a random failed member: heals partitions
    ├── reaper             forgets members failed or left long ago
    └── one task per running suspicion and per relayed ping-req

Probing (SWIM §4 plus Lifeguard): ping the target; with no ack within the probe
timeout, ask ``indirect_checks`` members to ping it for us and to nack if it stays
silent; with no ack by the end of the probe interval, suspect it. A suspected
target is told so inside the next ping (the buddy system) so it can refute at once.
Missing nacks mean our own side is unwell, which raises the local health score and
stretches our intervals and timeouts (awareness.py).

Every datagram piggybacks pending membership updates (broadcast.py) up to the safe
packet size; full state goes over streams (push-pull), on join and periodically.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable
from functools import partial

import attrs
import trio

from .awareness import Awareness
from .broadcast import BroadcastQueue, retransmit_limit
from .config import ClusterConfig
from .keyring import PURPOSE_DATAGRAM, PURPOSE_STREAM, Keyring, OpenError
from .messages import (
    ALIVE,
    DEAD,
    LEFT,
    MAX_INCARNATION,
    PROTOCOL_VERSION,
    SUSPECT,
    Ack,
    Alive,
    Dead,
    DecodeError,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Refuse,
    Suspect,
    decode,
    encode,
    encode_one,
    encode_packet,
)
from .state import FAILED, JOINED, SUSPECTED, Change, Member, MemberInfo, MemberTable, suspicion_bounds
from .transport import Clock, FrameError, Transport, receive_frame, send_frame

log = logging.getLogger(__name__)

PACKET_HEADER_RESERVE = 3  # a msgpack array header of up to 65535 messages
MAX_RELAYS = 64  # ping-req relays in flight; more are dropped (a flood must not grow tasks)
MAX_STREAMS = 32  # state exchanges served at once, once their first frame opened with the key
MAX_UNAUTHENTICATED = 32  # streams still sending their first frame; a newcomer evicts the oldest
NACK_FRACTION = 0.8  # a relay nacks after this share of the probe timeout, to beat the prober's deadline
MAX_LOGGED_CONFLICTS = 1024
PUSH_PULL_SCALE_THRESHOLD = 32  # above this many members, push-pull slows down with log2(n)


class JoinRefused(Exception):
    """A seed turned us away, or the cluster already has a live member with our node id."""


@attrs.frozen(slots=True)
class MemberEvent:
    """A change in membership as this node sees it.

    ``kind`` is one of ``joined``, ``updated``, ``recovered`` (a suspicion was refuted),
    ``suspect``, ``failed`` or ``left``; ``at`` is the clock time it was observed.
    """

    kind: str
    member: MemberInfo
    at: float


EventListener = Callable[[MemberEvent], None]


@attrs.define(slots=True, eq=False)
class _AckWaiter:
    event: trio.Event = attrs.Factory(trio.Event)
    nacks: int = 0


def failure_detection_bound(config: ClusterConfig, members: int) -> float:
    """The latest, in seconds, that every live member should mark a crashed member failed.

    A worst case for healthy members: a prober reaches the victim within two rounds
    of its round robin, the lone suspicion then runs its longest timeout, and the
    verdict spreads within its retransmit budget. Typical detection is far quicker,
    because every survivor probes and each independent suspicion shortens the wait.
    """
    first_suspicion = (2 * (members - 1) + 1) * config.probe_interval
    _, longest = suspicion_bounds(
        config.suspicion_mult, config.suspicion_max_timeout_mult, members, config.probe_interval
    )
    spread = retransmit_limit(config.retransmit_mult, members) * config.gossip_interval + config.probe_interval
    return first_suspicion + longest + spread


def push_pull_interval(base: float, members: int) -> float:
    """memberlist's scaling: above 32 members the interval grows with log2(n)."""
    if members <= PUSH_PULL_SCALE_THRESHOLD:
        return base
    return base * (math.ceil(math.log2(members) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1)


class Membership:
    """One node's view of the cluster and the protocol that keeps it current.

    Args:
        config: the ``[cluster]`` section.
        node_id: this node's Snowflake node id; unique in the cluster.
        name: a human name for this node.
        http_url: this node's public HTTP URL, announced to other members.
        transport: datagrams and streams (``UdpTcpTransport`` or the in-memory one).
        clock: the time source all protocol waits go through.
        keyring: seals and opens every packet.
        rng: randomness for target selection (seed it for reproducible simulations).
        on_event: called synchronously for each membership event; it must not block.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        node_id: int,
        name: str,
        http_url: str,
        transport: Transport,
        clock: Clock,
        keyring: Keyring,
        rng: random.Random | None = None,
        on_event: EventListener | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.clock = clock
        self.keyring = keyring
        self.rng = rng or random.Random()
        local = Member(node_id, name, transport.address, http_url, PROTOCOL_VERSION, 0, ALIVE, clock.now())
        self.table = MemberTable(local)
        if not self._fits(local.alive_message()):
            raise ValueError("the node name, cluster address and HTTP URL are too long for one cluster packet")
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.broadcasts = BroadcastQueue(config.retransmit_mult, self.table.live_count)
        self._listeners: list[EventListener] = [on_event] if on_event else []
        self._seq = self.rng.randrange(1 << 32)
        self._acks: dict[int, _AckWaiter] = {}
        self._relays = 0
        self._streams = 0
        self._unauthenticated: dict[int, trio.CancelScope] = {}  # by arrival, oldest first
        self._stream_ids = itertools.count()
        self._probe_order: list[int] = []
        self._probe_index = 0
        self._wakeups: dict[int, trio.Event] = {}  # suspicion timers, woken when a confirmation arrives
        self._nursery: trio.Nursery | None = None
        self._conflicts_logged: set[tuple[int, str]] = set()  # each claim is logged once
        self._seeds: list[str] = []  # every address join() was given, retried by the reconnect loop
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "probes", "probe_failures", "indirect_probes", "acks_received", "nacks_received",
                "suspicions", "refutations", "failures", "failures_declared", "joins", "updates", "leaves",
                "recoveries", "packets_in", "packets_out", "bytes_in", "bytes_out", "dropped_packets",
                "dropped_unauthenticated", "dropped_malformed", "dropped_oversize", "dropped_misdirected",
                "dropped_relays", "push_pulls", "push_pull_failures", "streams_served", "streams_dropped",
                "streams_evicted", "conflicts", "reaped",
            ),
            0,
        )  # fmt: skip

    # -- public surface --------------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self.table.local.node

    @property
    def address(self) -> str:
        return self.table.local.address

    @property
    def incarnation(self) -> int:
        return self.table.local.incarnation

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def members(self) -> list[MemberInfo]:
        """Every known member, this node included, ordered by node id."""
        return sorted((MemberInfo.of(m) for m in self.table), key=lambda m: m.node)

    def member(self, node_id: int) -> MemberInfo | None:
        m = self.table.get(node_id)
        return MemberInfo.of(m) if m else None

    def live_members(self) -> list[MemberInfo]:
        return [m for m in self.members() if m.state in (ALIVE, SUSPECT)]

    def statistics(self) -> dict[str, object]:
        """Counters since start, the health score and the member count by state."""
        states = {s: 0 for s in (ALIVE, SUSPECT, DEAD, LEFT)}
        for m in self.table:
            states[m.state] += 1
        return {
            **self.stats,
            "awareness": self.awareness.score,
            "awareness_peak": self.awareness.peak,
            "incarnation": self.incarnation,
            "pending_broadcasts": len(self.broadcasts),
            "members": states,
        }

    def update_http_url(self, http_url: str) -> None:
        """Announce new metadata: a higher incarnation, spread like any other update."""
        local = self.table.local
        if local.http_url == http_url:
            return
        if not self._fits(attrs.evolve(local.alive_message(), http_url=http_url)):
            log.error("cluster: HTTP URL %r is too long to announce; members keep the old one", http_url)
            return
        local.http_url = http_url
        local.incarnation = min(MAX_INCARNATION, local.incarnation + 1)
        self._queue(local.node, local.alive_message())

    # -- lifecycle -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocol until cancelled. Reports started once packets and streams are accepted.

        Cancellation: cancelling stops every loop at once; call ``leave`` first for a
        graceful departure.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._queue(self.node_id, self.table.local.alive_message())
            await nursery.start(self.transport.serve_streams, self._serve_stream)
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._probe_loop)
            nursery.start_soon(self._gossip_loop)
            if self.config.push_pull_interval > 0:
                nursery.start_soon(self._push_pull_loop)
            if self.config.reconnect_interval > 0:
                nursery.start_soon(self._reconnect_loop)
            nursery.start_soon(self._reap_loop)
            task_status.started()

    async def join(self, seeds: Iterable[str]) -> int:
        """Exchange full state with each seed; returns how many answered.

        Raises:
            JoinRefused: a seed refused us, or our node id belongs to another live member.
        """
        answered = 0
        for seed in seeds:
            if seed not in self._seeds:
                self._seeds.append(seed)
            if seed != self.address and await self.push_pull(seed, join=True):
                answered += 1
        return answered

    async def join_until_joined(self, seeds: list[str]) -> None:
        """Retry the seeds until one answers or another member finds us. Never raises but JoinRefused."""
        while self.table.live_count() <= 1:
            if await self.join(seeds):
                return
            await self.clock.sleep_until(self.clock.now() + self.config.join_retry_interval)

    async def leave(self) -> None:
        """Tell the cluster we are leaving (not failing), then give gossip a moment to spread it."""
        local = self.table.local
        if local.state == LEFT:
            return
        local.state, local.since = LEFT, self.clock.now()
        farewell = Dead(local.node, local.incarnation, local.node)
        self._queue(local.node, farewell)
        peers = self._random_members(self.config.gossip_nodes, lambda m: m.state in (ALIVE, SUSPECT))
        for peer in peers:
            await self._send(peer.address, [farewell])
        deadline = self.clock.now() + self.config.leave_timeout
        while self.broadcasts.pending(local.node) and self.clock.now() < deadline and peers:
            await self.clock.sleep_until(min(deadline, self.clock.now() + self.config.gossip_interval))

    # -- sending ---------------------------------------------------------------------

    def _fits(self, msg: Message) -> bool:
        """An announcement must leave room in a datagram for a ping and some gossip."""
        room = self.config.max_packet_bytes - self.keyring.overhead - PACKET_HEADER_RESERVE
        return len(encode_one(msg)) <= room // 2

    def _queue(self, key: int, msg: Message) -> None:
        self.broadcasts.queue(key, encode_one(msg))

    async def _send(self, address: str, messages: list[Message], *, piggyback: bool = True) -> None:
        parts = [encode_one(m) for m in messages]
        if piggyback:
            room = self.config.max_packet_bytes - self.keyring.overhead - PACKET_HEADER_RESERVE
            room -= sum(len(p) for p in parts)
            parts += self.broadcasts.take(0, room)
        if not parts:
            return
        data = self.keyring.seal(encode_packet(parts), PURPOSE_DATAGRAM)
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)
        await self.transport.send_packet(address, data)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF_FFFF_FFFF
        return self._seq

    def _random_members(self, count: int, keep: Callable[[Member], bool], exclude: int = -1) -> list[Member]:
        pool = [m for m in self.table if m is not self.table.local and m.node != exclude and keep(m)]
        return self.rng.sample(pool, min(count, len(pool)))

    # -- receiving -------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.stats["dropped_packets"] += 1
        self.stats[f"dropped_{reason}"] += 1

    async def _receive_loop(self) -> None:
        while True:
            _source, data = await self.transport.receive_packet()
            self.stats["packets_in"] += 1
            self.stats["bytes_in"] += len(data)
            if len(data) > self.config.max_packet_bytes:
                self._drop("oversize")
                continue
            try:
                messages = decode(self.keyring.open(data, PURPOSE_DATAGRAM))
            except OpenError:
                self._drop("unauthenticated")
                continue
            except DecodeError:
                self._drop("malformed")
                continue
            for msg in messages:
                await self._handle(msg)

    async def _handle(self, msg: Message) -> None:
        if self.table.local.state == LEFT and not isinstance(msg, (Ack, Nack)):
            return
        if isinstance(msg, Ping):
            if msg.target != self.node_id:
                self._drop("misdirected")  # a new process on an old address: let the probe fail
                return
            await self._send(msg.source, [Ack(msg.seq)])
        elif isinstance(msg, Ack):
            waiter = self._acks.get(msg.seq)
            if waiter is not None:
                self.stats["acks_received"] += 1
                waiter.event.set()
        elif isinstance(msg, Nack):
            waiter = self._acks.get(msg.seq)
            if waiter is not None:
                self.stats["nacks_received"] += 1
                waiter.nacks += 1
        elif isinstance(msg, IndirectPing):
            if self._relays >= MAX_RELAYS or self._nursery is None:
                self.stats["dropped_relays"] += 1
                return
            self._relays += 1
            self._nursery.start_soon(self._relay, msg)
        elif isinstance(msg, Alive):
            self._apply_alive(msg)
        elif isinstance(msg, Suspect):
            self._apply_suspect(msg)
        elif isinstance(msg, Dead):
            self._apply_dead(msg)
        else:  # PushPull and Refuse belong on streams
            self._drop("malformed")

    async def _relay(self, req: IndirectPing) -> None:
        """Ping ``req.target`` for a member that could not reach it; ack or nack back."""
        seq = self._next_seq()
        waiter = self._acks[seq] = _AckWaiter()
        try:
            sent = self.clock.now()
            await self._send(req.target_address, [Ping(seq, req.target, self.address)])
            if await self.clock.wait_event(waiter.event, sent + self.config.probe_timeout * NACK_FRACTION):
                await self._send(req.source, [Ack(req.seq)])
            elif req.nack:
                await self._send(req.source, [Nack(req.seq)])
        finally:
            self._acks.pop(seq, None)
            self._relays -= 1

    # -- applying updates --------------------------------------------------------------

    def _emit(self, kind: str, member: Member) -> None:
        stat = {"joined": "joins", "updated": "updates", "recovered": "recoveries", "suspect": "suspicions",
                "failed": "failures", "left": "leaves"}[kind]  # fmt: skip
        self.stats[stat] += 1
        event = MemberEvent(kind, MemberInfo.of(member), self.clock.now())
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("cluster: event listener failed on %s", kind)

    def _after(self, change: Change, key: int, msg: Message) -> None:
        if change.refute:
            self._refute(msg.incarnation)  # type: ignore[union-attr]
        elif change.reannounce:
            self._queue(self.node_id, self.table.local.alive_message())
        if change.conflict is not None and isinstance(msg, Alive):
            self._report_conflict(msg, change.conflict)
        if change.rebroadcast:
            self._queue(key, msg)
        if change.member is not None and change.member.node in self._wakeups:
            self._wakeups.pop(change.member.node).set()  # a suspicion timer must look again
        if change.kind is not None and change.member is not None:
            if change.kind == JOINED:
                self._add_probe_target(change.member.node)
            self._emit(change.kind, change.member)

    def _report_conflict(self, claim: Alive, holder: Member) -> None:
        """Two live processes claim one node id: keep the first, tell the operator (once per claim)."""
        self.stats["conflicts"] += 1
        key = (claim.node, claim.address)
        if key in self._conflicts_logged:
            return
        if len(self._conflicts_logged) >= MAX_LOGGED_CONFLICTS:
            self._conflicts_logged.clear()
        self._conflicts_logged.add(key)
        log.error(
            "cluster: node id %d is claimed by %r at %s, but %r is a live member at %s; ignoring the newcomer",
            claim.node, claim.name, claim.address, holder.name, holder.address,
        )  # fmt: skip

    def _apply_alive(self, msg: Alive) -> None:
        self._after(self.table.apply_alive(msg, self.clock.now()), msg.node, msg)

    def _apply_suspect(self, msg: Suspect, *, hearsay: bool = False) -> None:
        n = self.table.live_count()
        bounds = suspicion_bounds(
            self.config.suspicion_mult, self.config.suspicion_max_timeout_mult, n, self.config.probe_interval
        )
        k = self.config.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        change = self.table.apply_suspect(msg, self.clock.now(), bounds, k, hearsay=hearsay)
        self._after(change, msg.node, msg)
        if change.kind == SUSPECTED and change.member is not None and self._nursery is not None:
            self._nursery.start_soon(self._suspicion_timer, change.member)
            # Probe it next: the ping tells it that it is suspected (the buddy system) and the
            # ack brings back its refutation if gossip has not, well before the timer runs out.
            self._probe_order.insert(self._probe_index, change.member.node)

    def _apply_dead(self, msg: Dead) -> None:
        if msg.source not in (msg.node, self.node_id) and msg.node != self.node_id:
            # Only our own suspicion timer marks another member failed here. Another node's
            # verdict opens or confirms a suspicion instead, so stale news (say, from the far
            # side of a healed partition) leaves the member time to refute, while a real
            # failure is confirmed by every such verdict and times out at the minimum.
            self._apply_suspect(Suspect(msg.node, msg.incarnation, msg.source))
            return
        self._after(self.table.apply_dead(msg, self.clock.now()), msg.node, msg)

    def _refute(self, seen: int) -> None:
        """We were suspected or declared dead: out-announce it, and count it against our health."""
        self.stats["refutations"] += 1
        self.awareness.apply_delta(1)
        alive = self.table.refute(seen)
        self._queue(alive.node, alive)

    async def _suspicion_timer(self, member: Member) -> None:
        suspicion = member.suspicion
        while member.suspicion is suspicion and suspicion is not None and member.state == SUSPECT:
            if self.clock.now() >= suspicion.deadline:
                self.stats["failures_declared"] += 1
                self._apply_dead(Dead(member.node, member.incarnation, self.node_id))
                return
            wakeup = self._wakeups.setdefault(member.node, trio.Event())
            await self.clock.wait_event(wakeup, suspicion.deadline)

    # -- probing ---------------------------------------------------------------------

    def _add_probe_target(self, node: int) -> None:
        """New members go to a random place in the rest of this round, so they are probed soon."""
        at = self.rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(at, node)

    def _next_probe_target(self) -> Member | None:
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = [
                    m.node for m in self.table if m is not self.table.local and m.state in (ALIVE, SUSPECT)
                ]
                self.rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            m = self.table.get(self._probe_order[self._probe_index])
            self._probe_index += 1
            if m is not None and m is not self.table.local and m.state in (ALIVE, SUSPECT):
                return m
        return None

    async def _probe_loop(self) -> None:
        await self.clock.sleep_until(self.clock.now() + self.rng.random() * self.config.probe_interval)
        while self.table.local.state != LEFT:
            start = self.clock.now()
            interval = self.awareness.scale(self.config.probe_interval)
            target = self._next_probe_target()
            if target is not None:
                await self._probe(target, start + interval)
            await self.clock.sleep_until(start + interval)

    async def _probe(self, target: Member, deadline: float) -> None:
        seq = self._next_seq()
        waiter = self._acks[seq] = _AckWaiter()
        incarnation = target.incarnation
        messages: list[Message] = []
        if target.state == SUSPECT:  # the buddy system: tell it, so it can refute right away
            messages.append(Suspect(target.node, target.incarnation, self.node_id))
        messages.append(Ping(seq, target.node, self.address))
        self.stats["probes"] += 1
        delta = -1  # any return below is a success and improves our health
        try:
            sent = self.clock.now()
            await self._send(target.address, messages)
            if await self.clock.wait_event(waiter.event, sent + self.awareness.scale(self.config.probe_timeout)):
                return
            helpers = self._random_members(self.config.indirect_checks, lambda m: m.state == ALIVE, target.node)
            request = IndirectPing(seq, target.node, target.address, self.address, True)
            for helper in helpers:
                self.stats["indirect_probes"] += 1
                await self._send(helper.address, [request])
            if await self.clock.wait_event(waiter.event, deadline):
                return
            # Each missing nack is a sign that it is us, not the target, that is in trouble.
            delta = max(0, len(helpers) - waiter.nacks) if helpers else 1
            self.stats["probe_failures"] += 1
            if self.table.local.state != LEFT:
                self._apply_suspect(Suspect(target.node, incarnation, self.node_id))
        finally:
            self._acks.pop(seq, None)
            self.awareness.apply_delta(delta)

    # -- gossip ----------------------------------------------------------------------

    def _gossip_target(self, m: Member, *, now: float) -> bool:
        if m.state in (ALIVE, SUSPECT):
            return True
        return m.state == DEAD and now - m.since < self.config.gossip_to_the_dead

    async def _gossip_loop(self) -> None:
        interval = self.config.gossip_interval
        await self.clock.sleep_until(self.clock.now() + self.rng.random() * interval)
        while True:
            start = self.clock.now()
            if len(self.broadcasts):
                peers = self._random_members(self.config.gossip_nodes, partial(self._gossip_target, now=start))
                for peer in peers:
                    if not len(self.broadcasts):
                        break
                    await self._send(peer.address, [])
            await self.clock.sleep_until(start + interval)

    # -- full state exchange (push-pull) --------------------------------------------------

    def _rows(self) -> tuple[MemberState, ...]:
        return tuple(m.row() for m in self.table)

    def _seal_frame(self, msg: Message) -> bytes:
        return self.keyring.seal(encode([msg]), PURPOSE_STREAM)

    def _open_frame(self, frame: bytes) -> Message:
        messages = decode(self.keyring.open(frame, PURPOSE_STREAM))
        if len(messages) != 1:
            raise DecodeError("a stream frame carries one message")
        return messages[0]

    def _merge(self, rows: Iterable[MemberState], sender: int) -> None:
        """Merge a remote view; a remote 'failed' only makes us suspect, never kills outright.

        A remote 'suspect' or 'failed' row is hearsay: the sender may only have heard it,
        and the row does not say who accused. It opens a suspicion here (and the member is
        probed next, so it hears of it), but it is not passed on and confirms nothing;
        otherwise every state exchange during a lone suspicion would count as one more
        independent accuser and cut the suspect's time to refute to the minimum.
        """
        for row in rows:
            if row.state == ALIVE:
                self._apply_alive(Alive(row.node, row.incarnation, row.name, row.address, row.http_url, row.protocol))
            elif row.state == LEFT:
                self._apply_dead(Dead(row.node, row.incarnation, row.node))
            else:
                self._apply_suspect(Suspect(row.node, row.incarnation, sender), hearsay=True)

    def _claim_conflict(self, claimant: MemberState) -> Member | None:
        """The live member whose node id ``claimant`` would take, if any."""
        m = self.table.get(claimant.node)
        if m is not None and m.state in (ALIVE, SUSPECT) and m.address != claimant.address:
            return m
        return None

    async def push_pull(self, address: str, *, join: bool = False) -> bool:
        """Exchange full state with ``address`` over a stream; False if it could not be reached.

        Raises:
            JoinRefused: on a join, when the peer refuses us or reports our node id as taken.
        """
        self.stats["push_pulls"] += 1
        try:
            with trio.fail_after(self.config.stream_timeout):
                stream = await self.transport.connect(address)
                try:
                    await send_frame(stream, self._seal_frame(PushPull(join, self.node_id, self._rows())))
                    reply = self._open_frame(await receive_frame(stream, self.config.max_stream_bytes))
                finally:
                    await trio.aclose_forcefully(stream)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, FrameError, OpenError, DecodeError) as exc:
            self.stats["push_pull_failures"] += 1
            log.debug("cluster: state exchange with %s failed: %s", address, exc)
            return False
        if isinstance(reply, Refuse):
            if join:
                raise JoinRefused(reply.reason)
            return False
        if not isinstance(reply, PushPull):
            self.stats["push_pull_failures"] += 1
            return False
        if join:
            for row in reply.members:
                if row.node == self.node_id and row.state in (ALIVE, SUSPECT) and row.address != self.address:
                    raise JoinRefused(
                        f"node id {self.node_id} is already used by live member {row.name!r} at {row.address}; "
                        "give this node a different [node] id"
                    )
        self._merge(reply.members, reply.sender)
        return True

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        """Answer one push-pull. The remote state is merged before we reply, so the reply
        already carries our refutations: that is what lets a healed partition converge.

        A stream takes one of the MAX_STREAMS places only once its first frame opened with
        the key; until then it is one of MAX_UNAUTHENTICATED (see `_first_frame`)."""
        try:
            msg = await self._first_frame(stream)
            if msg is None:
                return
            if self._streams >= MAX_STREAMS:
                self.stats["streams_dropped"] += 1
                return
            self._streams += 1
            self.stats["streams_served"] += 1
            try:
                with trio.move_on_after(self.config.stream_timeout):
                    await self._answer(stream, msg)
            finally:
                self._streams -= 1
        except (FrameError, OpenError, DecodeError, trio.BrokenResourceError, OSError) as exc:
            self.stats["streams_dropped"] += 1
            if isinstance(exc, OpenError):
                self._drop("unauthenticated")
            elif isinstance(exc, DecodeError):
                self._drop("malformed")
            log.debug("cluster: dropped a stream: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _first_frame(self, stream: trio.abc.Stream) -> Message | None:
        """The stream's first frame, opened with the key; None if it did not arrive within
        `stream_timeout` or the stream was evicted. Raises OpenError, DecodeError, FrameError.

        Anyone who can reach the port can open streams, so streams that have not shown the
        key yet are bounded apart from the exchanges: at most MAX_UNAUTHENTICATED wait for
        their first frame (each may buffer up to `max_stream_bytes`), and a new one evicts
        the oldest. Connections held open idle (or trickling) then cannot keep a member
        out: its frame arrives within moments, long before it would be the oldest."""
        if len(self._unauthenticated) >= MAX_UNAUTHENTICATED:
            self._unauthenticated.pop(next(iter(self._unauthenticated))).cancel()
            self.stats["streams_evicted"] += 1
        key = next(self._stream_ids)
        scope = self._unauthenticated[key] = trio.CancelScope(deadline=trio.current_time() + self.config.stream_timeout)
        try:
            with scope:
                return self._open_frame(await receive_frame(stream, self.config.max_stream_bytes))
        finally:
            self._unauthenticated.pop(key, None)
            if scope.cancelled_caught:
                self.stats["streams_dropped"] += 1
        return None

    async def _answer(self, stream: trio.abc.Stream, msg: Message) -> None:
        """Serve an authenticated first frame: refuse a joiner whose id is taken, or merge and reply."""
        if not isinstance(msg, PushPull):
            raise DecodeError("expected a push-pull")
        if msg.join:
            own = next((r for r in msg.members if r.node == msg.sender), None)
            if own is None:
                raise DecodeError("a join must carry the joiner's own row")
            taken = self._claim_conflict(own)
            if taken is not None:
                self.stats["conflicts"] += 1
                reason = (
                    f"node id {own.node} is already used by live member {taken.name!r} at {taken.address}; "
                    "give this node a different [node] id"
                )
                log.error("cluster: refused %s at %s: %s", own.name, own.address, reason)
                await send_frame(stream, self._seal_frame(Refuse("node_id_taken", reason)))
                return
        self._merge(msg.members, msg.sender)
        await send_frame(stream, self._seal_frame(PushPull(False, self.node_id, self._rows())))

    async def _push_pull_loop(self) -> None:
        base = self.config.push_pull_interval
        await self.clock.sleep_until(self.clock.now() + self.rng.random() * base)
        while True:
            start = self.clock.now()
            peers = self._random_members(1, lambda m: m.state == ALIVE)
            if peers:
                await self.push_pull(peers[0].address)
            await self.clock.sleep_until(start + push_pull_interval(base, self.table.live_count()))

    async def _reconnect_loop(self) -> None:
        """Once per interval, exchange state with a failed member or a seed that is not a
        live member: if it is back (a partition ended, a seed came up late), both sides
        refute each other's stale verdicts and the halves merge again."""
        interval = self.config.reconnect_interval
        await self.clock.sleep_until(self.clock.now() + self.rng.random() * interval)
        while True:
            start = self.clock.now()
            live = {m.address for m in self.table if m.state in (ALIVE, SUSPECT)}
            candidates = [m.address for m in self.table if m.state == DEAD]
            candidates += [s for s in self._seeds if s not in live]
            if candidates:
                await self.push_pull(self.rng.choice(candidates))
            await self.clock.sleep_until(start + interval)

    async def _reap_loop(self) -> None:
        timeout = self.config.dead_member_timeout
        period = min(60.0, max(1.0, timeout / 4))
        while True:
            await self.clock.sleep_until(self.clock.now() + period)
            now = self.clock.now()
            for m in list(self.table):
                if m.state in (DEAD, LEFT) and now - m.since > timeout:
                    self.table.remove(m.node)
                    self.stats["reaped"] += 1


__all__ = ["FAILED", "JoinRefused", "MemberEvent", "Membership", "failure_detection_bound", "push_pull_interval"]
