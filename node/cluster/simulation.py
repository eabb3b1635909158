"""Many cluster members in one trio run, over the in-memory network (memnet.py).

Used by the cluster tests and ``bench/cluster_sim.py``. Each simulated node is the
real ``Membership`` with a real keyring; only its transport and clock are the
in-memory ones. Run it under ``trio.testing.MockClock(autojump_threshold=0)`` and
minutes of protocol time take seconds.

A seed replays a run exactly. Loss, delay and every member's choices come from
generators seeded by it, and so does the order in which trio runs tasks that wake
at the same moment: trio normally randomises that order (differently in every run),
and many things wake together in a simulation (all timers of a member whose stall
ends, say). ``open_simulation`` switches trio to the seeded order it provides for
exactly this purpose (the one Hypothesis uses), for the duration of the simulation.

Every membership event of every node is recorded with the time it happened, which is
how tests measure dissemination and detection and count false failures (a member
marked failed while it was in fact running).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import attrs
import trio
from trio._core import _run as _trio_run  # the scheduler's seeding hook, see seeded_scheduling

from .config import ClusterConfig
from .keyring import Keyring
from .membership import MemberEvent, Membership
from .memnet import MemoryNetwork, Stall, StallableClock
from .messages import ALIVE, DEAD, LEFT

SIM_KEY = bytes(range(32))  # a fixed test key; the simulation seals packets like production


@attrs.define(eq=False)
class SimNode:
    node_id: int
    address: str
    membership: Membership
    stall: Stall
    scope: trio.CancelScope
    down: bool = False  # crashed or left: it is not a false positive to call it failed

    def state_of(self, node_id: int) -> str | None:
        m = self.membership.table.get(node_id)
        return m.state if m else None


@attrs.frozen
class Observation:
    """One membership event: ``observer`` saw ``member`` become ``kind`` at ``at``."""

    at: float
    observer: int
    kind: str
    member: int
    member_was_down: bool


class Simulation:
    """A cluster of simulated members; create with ``open_simulation``."""

    def __init__(self, nursery: trio.Nursery, network: MemoryNetwork, config: ClusterConfig, seed: int) -> None:
        self._nursery = nursery
        self.network = network
        self.config = config
        self.seed = seed
        self.keyring = Keyring([SIM_KEY])
        self.nodes: dict[int, SimNode] = {}
        self.events: list[Observation] = []
        self.replayable = False  # whether trio's scheduling is seeded too (see open_simulation)

    # -- building the cluster -------------------------------------------------------

    async def add_node(
        self, node_id: int, *, seeds: list[int] | None = None, keyring: Keyring | None = None
    ) -> SimNode:
        """Start a member (address ``sim-<id>:7946``) and join it through ``seeds`` (node ids)."""
        address = f"sim-{node_id}:7946"
        stall = Stall()
        transport = self.network.attach(address, stall)
        membership = Membership(
            self.config,
            node_id=node_id,
            name=f"node-{node_id}",
            http_url=f"http://sim-{node_id}.invalid",
            transport=transport,
            clock=StallableClock(stall),
            keyring=keyring or self.keyring,
            rng=random.Random(self.seed * 100_003 + node_id),
            on_event=self._recorder(node_id),
        )
        node = SimNode(node_id, address, membership, stall, trio.CancelScope())

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with node.scope:
                await membership.run(task_status=task_status)

        await self._nursery.start(run)
        self.nodes[node_id] = node
        if seeds:
            await membership.join([self.nodes[s].address for s in seeds])
        return node

    async def add_cluster(self, count: int, *, first_id: int = 0) -> list[SimNode]:
        """Start ``count`` members that all join through the first, then wait until all know all."""
        ids = list(range(first_id, first_id + count))
        await self.add_node(ids[0])
        for node_id in ids[1:]:
            await self.add_node(node_id, seeds=[ids[0]])
        await self.wait_until(lambda: self.converged(ids), timeout=60 + count)
        return [self.nodes[i] for i in ids]

    def _recorder(self, observer: int) -> Callable[[MemberEvent], None]:
        def record(event: MemberEvent) -> None:
            target = self.nodes.get(event.member.node)
            was_down = target.down if target is not None else False
            self.events.append(Observation(event.at, observer, event.kind, event.member.node, was_down))

        return record

    # -- faults ---------------------------------------------------------------------

    def crash(self, node_id: int) -> None:
        """Kill a member without a word: its tasks stop and its address swallows packets."""
        node = self.nodes[node_id]
        node.down = True
        self.network.crash(node.address)
        node.scope.cancel()

    async def leave(self, node_id: int) -> None:
        """Leave gracefully, then stop."""
        node = self.nodes[node_id]
        node.down = True
        await node.membership.leave()
        node.scope.cancel()
        self.network.crash(node.address)

    def stall(self, node_id: int, seconds: float) -> None:
        self.nodes[node_id].stall.stall_for(seconds)

    # -- observing ------------------------------------------------------------------

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.down]

    def converged(self, ids: list[int] | None = None) -> bool:
        """Every running member sees every running member in ``ids`` as alive."""
        ids = ids if ids is not None else [n.node_id for n in self.running()]
        return all(
            all(observer.state_of(i) == ALIVE for i in ids if not self.nodes[i].down) for observer in self.running()
        )

    def all_see(self, node_id: int, states: tuple[str, ...]) -> bool:
        return all(o.state_of(node_id) in states for o in self.running() if o.node_id != node_id)

    def false_failures(self) -> list[Observation]:
        """Members marked failed while they were running (the thing Lifeguard exists to prevent)."""
        return [e for e in self.events if e.kind == "failed" and not e.member_was_down]

    def first_event_times(self, member: int, kind: str, since: float) -> dict[int, float]:
        """For each observer, when it first saw ``member`` become ``kind`` after ``since``."""
        seen: dict[int, float] = {}
        for e in self.events:
            if e.member == member and e.kind == kind and e.at >= since and e.observer not in seen:
                seen[e.observer] = e.at
        return seen

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float, step: float = 0.05) -> float:
        """Poll ``predicate`` in simulated time; returns the time it took. Raises TooSlowError."""
        start = trio.current_time()
        with trio.fail_after(timeout):
            while not predicate():  # noqa: ASYNC110 (any predicate, in simulated time)
                await trio.sleep(step)
        return trio.current_time() - start


@contextmanager
def seeded_scheduling(seed: int) -> Iterator[bool]:
    """Make trio run tasks that are ready at the same moment in an order fixed by ``seed``.

    Yields whether it could (False if this trio no longer has the hook; runs then
    work as before but do not replay). trio keeps the switch and the generator in
    ``trio._core._run``: when the switch is on, each batch of ready tasks is sorted by
    creation and shuffled with that generator. Both are restored on exit. The
    setting is global to the thread, so run one simulation at a time.
    """
    run = _trio_run
    shuffler = getattr(run, "_r", None)
    if not isinstance(shuffler, random.Random) or not hasattr(run, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        yield False
        return
    saved_switch, saved_state = run._ALLOW_DETERMINISTIC_SCHEDULING, shuffler.getstate()
    run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    shuffler.seed(seed)
    try:
        yield True
    finally:
        run._ALLOW_DETERMINISTIC_SCHEDULING = saved_switch  # type: ignore[misc]
        shuffler.setstate(saved_state)


@asynccontextmanager
async def open_simulation(
    config: ClusterConfig,
    *,
    seed: int = 1,
    loss: float = 0.0,
    delay: float = 0.001,
    jitter: float = 0.002,
) -> AsyncIterator[Simulation]:
    """A running in-memory network; every member is stopped on exit.

    The same ``seed`` (and the same calls) replay the same run; ``sim.replayable``
    says whether trio's scheduling could be seeded (see ``seeded_scheduling``).
    """
    with seeded_scheduling(seed) as replayable:
        network = MemoryNetwork(seed=seed, loss=loss, delay=delay, jitter=jitter)
        async with trio.open_nursery() as nursery:
            await nursery.start(network.serve)
            sim = Simulation(nursery, network, config, seed)
            sim.replayable = replayable
            try:
                yield sim
            finally:
                nursery.cancel_scope.cancel()


__all__ = ["ALIVE", "DEAD", "LEFT", "Observation", "SimNode", "Simulation", "open_simulation", "seeded_scheduling"]
