"""One seeded run: a cluster of chat nodes, devices sending, faults, then healing and the checks.

Everything random comes from the seed: the shape of the cluster (nodes, users, devices,
group chats), the fault rates, every step's action and its target, the network's loss
and delays, the storage's latencies and faults, each member's gossip choices, and the
order in which trio runs tasks that wake at the same moment (`seeded_scheduling`). Time
is trio's MockClock, and the clocks the node reads follow it (the Snowflake clock; the
cluster's request deadlines), so a seed replays exactly: every run records a trace of
what happened (actions, connections, sends, acks, deliveries, errors) and its hash is
the same for the same seed and steps.

A step waits a random moment and does one thing: a device sends a message (to one of
its user's chats, with a new client_msg_id), or a fault: a node crashes, restarts,
stops politely or joins; the network splits in two or heals; a node pauses; the streams
between two nodes break; a device drops its connection or goes offline for a while.
After the last step the run heals: the partition ends, loss and storage faults stop,
every node that is down starts again, and the run waits until the membership has
converged and every device holds every stored message of its chats with nothing
unacknowledged (or a deadline passes). Then the checker (checker.py) looks at the
shared database and at what every device saw.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import attrs
import trio
import trio.testing

from ...config import AccountsSection, Config, LimitsSection
from ...core.accounts import hash_token
from ...core.snowflake import EPOCH_MS
from ..config import ClusterConfig
from ..keyring import Keyring
from ..memnet import MemoryNetwork
from ..simulation import SIM_KEY, seeded_scheduling
from . import checker
from .device import SimDevice
from .memstore import SharedDatabase, StorageFaults
from .node import Environment, SimChatNode
from .wire import ClientEnd, WireConnection

WALL_START_MS = EPOCH_MS + 2 * 365 * 86_400_000  # the simulated wall clock at time 0
STEP_MEAN = 0.2  # seconds between steps, on average
SETTLE_TIMEOUT = 300.0  # seconds after the last step for the cluster to converge
START_TIMEOUT = 120.0  # seconds for the first nodes to form the cluster
MAX_NODES = 7
FAR_FUTURE_MS = 1 << 62  # a token's last use: never noted again (its time would be the wall's)

CLUSTER = ClusterConfig(
    enabled=True, probe_interval=1.0, probe_timeout=0.5, push_pull_interval=5.0, reconnect_interval=5.0,
    join_retry_interval=2.0, leave_timeout=2.0,
)
CONFIG = Config(
    cluster=CLUSTER,
    limits=LimitsSection(frames_per_second=10_000.0, frame_burst=100_000, user_messages_per_second=10_000.0,
                         user_message_burst=100_000),
    accounts=AccountsSection(argon2_time_cost=1, argon2_memory_kib=8),  # nobody logs in with a password here
)

#: step actions and their weights (a send is most of what happens)
ACTIONS = {
    "send": 50.0, "crash": 2.0, "restart": 3.0, "stop": 1.5, "join": 0.5, "partition": 1.5, "heal": 2.0,
    "pause": 2.0, "cut": 2.0, "drop": 3.0, "offline": 1.0,
}

#: counters that add up over seeds (RunResult.counts)
COUNTS = (
    "steps", "sends", "acked", "duplicate_acks", "send_errors", "stored", "deliveries", "crashes", "restarts",
    "stops", "joins", "partitions", "heals", "pauses", "cuts", "drops", "offline", "conflicts",
    "failed_commits", "unknown_outcomes", "failed_reads", "forwarded", "request_timeouts", "ownership_moves",
    "connections", "sessions_failed", "streams_broken", "datagrams_lost",
)


@attrs.define
class Shape:
    """What a seed draws before the first step."""

    nodes: int
    users: int
    devices_per_user: list[int]
    chats: list[list[int]]  # each chat's member indexes
    loss: float
    faults: StorageFaults

    @classmethod
    def draw(cls, rng: random.Random) -> Shape:
        users = rng.randint(3, 6)
        chats = []
        for _ in range(rng.randint(2, 4)):
            chats.append(sorted(rng.sample(range(users), rng.randint(2, users))))
        for user in range(users):  # everyone is somewhere
            if not any(user in members for members in chats):
                rng.choice(chats).append(user)
        faults = StorageFaults(
            commit_unavailable=rng.uniform(0, 0.02), commit_unknown=rng.uniform(0, 0.02),
            read_unavailable=rng.uniform(0, 0.01),
        )
        return cls(rng.randint(3, 5), users, [rng.randint(1, 2) for _ in range(users)], chats,
                   rng.uniform(0, 0.05), faults)


@attrs.define
class RunResult:
    seed: int
    steps: int
    trace_hash: str
    counts: dict[str, int]
    violations: list[str]
    converged: bool
    sim_seconds: float
    trace: list[str] | None = None


def _now() -> float:
    """Simulated time (after the run: -1, for what the checker records)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -1.0


class _ErrorLog(logging.Handler):
    """Errors the real code logs during a run (an exception in a handler is a bug)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"
                            + (f" ({record.exc_info[1]!r})" if record.exc_info else ""))


class World:
    """One run's cluster, devices and bookkeeping."""

    def __init__(self, seed: int, *, fences: bool = True, keep_trace: bool = False, shape: Shape | None = None,
                 actions: dict[str, float] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.shape = shape or Shape.draw(self.rng)
        self.actions = actions or ACTIONS
        self.network = MemoryNetwork(seed=seed, loss=self.shape.loss, delay=0.001, jitter=0.002,
                                     stream_delay=0.0005, stream_jitter=0.002)
        self.db = SharedDatabase(fences=fences)
        self.faults = self.shape.faults
        self.env = Environment(CONFIG, self.network, self.db, Keyring([SIM_KEY]), lambda: self.faults,
                               lambda: WALL_START_MS + int(trio.current_time() * 1000), seed, self._violation)
        self.nodes: dict[int, SimChatNode] = {}
        self.stopping: set[int] = set()
        self.devices: list[SimDevice] = []
        self.chat_ids: list[int] = []
        self.sent: dict[tuple[int, str], int] = {}  # (user, client_msg_id) -> chat
        self.partitioned = False
        self.violations: list[str] = []
        self.counts = dict.fromkeys(COUNTS, 0)
        self._hash = hashlib.sha256()
        self.trace: list[str] | None = [] if keep_trace else None
        self._nursery: trio.Nursery | None = None
        self._messages = 0

    # -- the record ------------------------------------------------------------------------

    def record(self, line: str) -> None:
        entry = f"{_now():.6f} {line}"
        self._hash.update(entry.encode() + b"\n")
        if self.trace is not None:
            self.trace.append(entry)

    def _violation(self, text: str) -> None:
        self.record(f"VIOLATION {text}")
        self.violations.append(f"t={_now():.3f} {text}")

    # -- building ------------------------------------------------------------------------

    def populate(self, nursery: trio.Nursery) -> None:
        """Users, devices (tokens) and group chats, written straight into the database."""
        shape, db = self.shape, self.db
        user_ids = [100 + i for i in range(shape.users)]
        for uid in user_ids:
            db.users[uid] = {"id": str(uid), "username": f"user{uid}", "created": 0, "settings": {}}
            db.usernames[f"user{uid}"] = uid
        member_of: dict[int, list[int]] = {uid: [] for uid in user_ids}
        for i, members in enumerate(shape.chats):
            chat_id = 1000 + i
            self.chat_ids.append(chat_id)
            uids = [user_ids[m] for m in members]
            db.chats[chat_id] = {"id": str(chat_id), "kind": "group", "created": 0, "created_by": str(uids[0]),
                                 "title": f"chat {i}"}
            db.last_seq[chat_id] = 0
            for uid in uids:
                db.members[(chat_id, uid)] = {"role": "admin" if uid == uids[0] else "member", "from_seq": 1,
                                              "delivered": 0, "read": 0, "joined": 0}
                member_of[uid].append(chat_id)
        for index, uid in enumerate(user_ids):
            for k in range(shape.devices_per_user[index]):
                device_id = uid * 10 + k
                token = f"cn_sim_{uid}_{k}"
                db.tokens[hash_token(token)] = {"user": str(uid), "device": str(device_id), "name": f"d{k}",
                                                "created": 0, "last_used": FAR_FUTURE_MS}
                self.devices.append(SimDevice(uid, device_id, token, member_of[uid], nursery, self.record,
                                              self._violation))

    def seeds_for(self, node_id: int) -> list[str]:
        """Every member's address but its own: a static seed list, as in a config file."""
        return [f"sim-{n}:7946" for n in sorted(self.nodes) if n != node_id]

    def start_node(self, node_id: int) -> SimChatNode:
        old = self.nodes.get(node_id)
        node = SimChatNode(self.env, node_id, old.life + 1 if old is not None else 0)
        self.nodes[node_id] = node
        assert self._nursery is not None
        self._nursery.start_soon(node.run, self.seeds_for(node_id))
        self.record(f"start node {node_id} life {node.life}")
        return node

    def ready(self) -> list[SimChatNode]:
        return [n for n in self.nodes.values() if n.ready]

    def _harvest(self, node: SimChatNode) -> None:
        """Add a node life's counters to the run's (when it ends)."""
        storage = node.storage
        self.counts["failed_commits"] += storage.failed_commits
        self.counts["unknown_outcomes"] += storage.unknown_outcomes
        self.counts["failed_reads"] += storage.failed_reads
        self.counts["sessions_failed"] += node.sessions_failed
        routing = getattr(node, "routing", None)
        if routing is not None:
            for name in ("forwarded", "request_timeouts"):
                self.counts[name] += routing.stats[name]
            self.counts["ownership_moves"] += routing.metrics.ownership_moves

    # -- devices -----------------------------------------------------------------------------

    async def device_loop(self, device: SimDevice) -> None:
        """Keep a device connected to some ready node, as a client with a node list does."""
        while True:
            while device.offline_until > trio.current_time():  # noqa: ASYNC110 (a deadline that may move)
                await trio.sleep(min(0.5, device.offline_until - trio.current_time()))
            ready = self.ready()
            if not ready:
                await trio.sleep(0.5)
                continue
            node = self.rng.choice(ready)
            wire = WireConnection(node.stall)
            if node.accept(wire):
                self.counts["connections"] += 1
                await device.serve(ClientEnd(wire), node.node_id)
            await trio.sleep(self.rng.uniform(0.05, 1.0))

    # -- steps ---------------------------------------------------------------------------

    async def step(self) -> None:
        await trio.sleep(self.rng.expovariate(1 / STEP_MEAN))
        names = list(self.actions)
        action = self.rng.choices(names, weights=[self.actions[n] for n in names])[0]
        getattr(self, "_" + action)()
        self.counts["steps"] += 1

    def _send(self) -> None:
        device = self.rng.choice(self.devices)
        chat = self.rng.choice(device.chats)
        self._messages += 1
        cmid = f"m{self._messages}"
        self.sent[(device.user_id, cmid)] = chat
        self.counts["sends"] += 1
        device.send(cmid, chat, f"message {self._messages} from {device.name}")

    def _pick_serving(self) -> SimChatNode | None:
        """A ready node that may go down: one other stays ready."""
        ready = self.ready()
        return self.rng.choice(ready) if len(ready) >= 2 else None

    def _crash(self) -> None:
        node = self._pick_serving()
        if node is not None:
            self.record(f"crash node {node.node_id}")
            node.crash()
            self._harvest(node)
            self.counts["crashes"] += 1

    def _restart(self) -> None:
        down = [n for n in self.nodes.values() if n.down and n.node_id not in self.stopping]
        if down:
            node = self.rng.choice(down)
            self.start_node(node.node_id)
            self.counts["restarts"] += 1

    def _stop(self) -> None:
        node = self._pick_serving()
        if node is None:
            return
        self.record(f"stop node {node.node_id}")
        self.stopping.add(node.node_id)
        self.counts["stops"] += 1

        async def stop() -> None:
            try:
                await node.stop()
            finally:
                self.stopping.discard(node.node_id)
                self._harvest(node)
                self.record(f"stopped node {node.node_id}")

        assert self._nursery is not None
        self._nursery.start_soon(stop)

    def _join(self) -> None:
        if len(self.nodes) < MAX_NODES:
            self.start_node(max(self.nodes) + 1)
            self.counts["joins"] += 1

    def _partition(self) -> None:
        addresses = [n.address for n in self.nodes.values()]
        if self.partitioned or len(addresses) < 2:
            return
        self.rng.shuffle(addresses)
        cut = self.rng.randint(1, len(addresses) - 1)
        self.network.partition(addresses[:cut], addresses[cut:])
        self.partitioned = True
        self.record(f"partition {sorted(addresses[:cut])} | {sorted(addresses[cut:])}")
        self.counts["partitions"] += 1

    def _heal(self) -> None:
        if self.partitioned:
            self.network.heal()
            self.partitioned = False
            self.record("heal")
            self.counts["heals"] += 1

    def _pause(self) -> None:
        ready = self.ready()
        if ready:
            node = self.rng.choice(ready)
            seconds = self.rng.uniform(0.1, 10.0)
            node.stall.stall_for(seconds)
            self.record(f"pause node {node.node_id} {seconds:.3f}s")
            self.counts["pauses"] += 1

    def _cut(self) -> None:
        ready = self.ready()
        if len(ready) >= 2:
            a, b = self.rng.sample(ready, 2)
            broken = self.network.cut(a.address, b.address)
            self.record(f"cut {a.node_id}-{b.node_id} ({broken} streams)")
            self.counts["cuts"] += 1

    def _drop(self) -> None:
        connected = [d for d in self.devices if d.connected]
        if connected:
            device = self.rng.choice(connected)
            self.record(f"drop {device.name}")
            device.drop()
            self.counts["drops"] += 1

    def _offline(self) -> None:
        device = self.rng.choice(self.devices)
        device.offline_until = trio.current_time() + self.rng.uniform(1.0, 20.0)
        self.record(f"offline {device.name} until {device.offline_until:.3f}")
        device.drop()
        self.counts["offline"] += 1

    # -- healing -------------------------------------------------------------------------

    def converged(self) -> bool:
        nodes = list(self.nodes.values())
        if self.stopping or not all(n.ready for n in nodes):
            return False
        everyone = {n.node_id for n in nodes}
        for node in nodes:
            if {m.node for m in node.membership.live_members()} != everyone:
                return False
            if set(node.routing.ownership.members) != everyone or node.routing.departing:
                return False
        last = {c: self.db.last_seq.get(c, 0) for c in self.chat_ids}
        return all(d.connected and d.caught_up(last) for d in self.devices)

    async def settle(self) -> bool:
        """Heal everything, then wait for convergence; False if it did not come in time."""
        self._heal()
        self.network.loss = 0.0
        self.faults = self.faults.off()
        for device in self.devices:
            device.offline_until = 0.0
        self.record("settle")
        deadline = trio.current_time() + SETTLE_TIMEOUT
        while trio.current_time() < deadline:
            self._restart_all()
            if self.converged():
                self.record("converged")
                return True
            await trio.sleep(0.5)
        return False

    def _restart_all(self) -> None:
        for node in list(self.nodes.values()):
            if node.down and node.node_id not in self.stopping:
                self.start_node(node.node_id)
                self.counts["restarts"] += 1

    # -- the end -------------------------------------------------------------------------

    def finish(self, converged: bool) -> None:
        for node in self.nodes.values():
            if not node.down:
                self._harvest(node)
        self.counts["conflicts"] = self.db.conflicts
        self.counts["stored"] = sum(len(log) for log in self.db.logs.values())
        self.counts["acked"] = sum(len(d.acks) for d in self.devices)
        self.counts["duplicate_acks"] = sum(d.duplicate_acks for d in self.devices)
        self.counts["send_errors"] = sum(d.errors for d in self.devices)
        self.counts["deliveries"] = sum(d.delivered for d in self.devices)
        self.counts["streams_broken"] = self.network.stats.streams_broken
        self.counts["datagrams_lost"] = self.network.stats.lost
        self.violations += checker.check_storage(self.db, self.chat_ids)
        self.violations += checker.check_acks(self.db, self.devices, self.sent)
        if not converged:
            self.violations.append(f"the cluster did not converge within {SETTLE_TIMEOUT:g} s of healing")
            self.violations += checker.check_convergence(self.db, self.devices)
        self.record(f"end stored={self.counts['stored']} acked={self.counts['acked']}")


async def _run(world: World, steps: int) -> tuple[bool, float]:
    async with trio.open_nursery() as nursery:
        world._nursery = nursery
        await nursery.start(world.network.serve)
        world.populate(nursery)
        for node_id in range(1, world.shape.nodes + 1):
            world.start_node(node_id)
        with trio.move_on_after(START_TIMEOUT):
            while not all(n.ready for n in world.nodes.values()) or not _all_see_all(world):  # noqa: ASYNC110
                await trio.sleep(0.1)
        for device in world.devices:
            nursery.start_soon(world.device_loop, device)
        for _ in range(steps):
            await world.step()
        converged = await world.settle()
        nursery.cancel_scope.cancel()
    return converged, trio.current_time()


def _all_see_all(world: World) -> bool:
    everyone = set(world.nodes)
    return all({m.node for m in n.membership.live_members()} == everyone for n in world.nodes.values())


def simulate(seed: int, steps: int, *, fences: bool = True, keep_trace: bool = False,
             actions: dict[str, float] | None = None) -> RunResult:
    """Run one seed to the end and check it (see the module docstring). `fences=False`:
    the broken database (memstore.py); `actions`: other weights for the steps."""
    world = World(seed, fences=fences, keep_trace=keep_trace, actions=actions)
    errors = _ErrorLog()
    root = logging.getLogger("node")
    root.addHandler(errors)
    try:
        with seeded_scheduling(seed):
            converged, sim_seconds = trio.run(_run, world, steps, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        root.removeHandler(errors)
    world.finish(converged)
    world.violations += [f"logged: {r}" for r in errors.records]
    return RunResult(seed, steps, world._hash.hexdigest(), world.counts, world.violations, converged,
                     sim_seconds, world.trace)


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Counts over many seeds."""
    total: dict[str, Any] = {"seeds": len(results), "failed_seeds": sum(1 for r in results if r.violations)}
    for name in COUNTS:
        total[name] = sum(r.counts[name] for r in results)
    return total


__all__ = ["COUNTS", "RunResult", "Shape", "World", "simulate", "summarize"]
