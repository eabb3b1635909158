"""The real membership protocol over the in-memory network, in simulated time.

Every test here runs under trio's MockClock with autojump, so minutes of protocol
time pass in about a second. Faults (loss, partitions, crashes, stalled event
loops) come from node/cluster/memnet.py. Assertions are the protocol's own bounds.
"""

from __future__ import annotations

import math
import random

import attrs
import pytest
import trio

from node.cluster.broadcast import retransmit_limit
from node.cluster.config import ClusterConfig
from node.cluster.keyring import PURPOSE_DATAGRAM, Keyring
from node.cluster.membership import JoinRefused, failure_detection_bound, push_pull_interval
from node.cluster.messages import MAX_INCARNATION, Alive, Dead, Suspect, encode
from node.cluster.simulation import open_simulation
from node.cluster.state import MAX_INCARNATION_JUMP

pytestmark = pytest.mark.engine("lmdb")  # membership simulation: no storage

DEFAULTS = ClusterConfig(enabled=True)


def dissemination_bound_rounds(config: ClusterConfig, n: int) -> float:
    """Gossip rounds within which an update should reach all n members: O(log n).

    An epidemic with fanout f reaches everyone in about log_(f+1)(n) + ln(n)/f rounds;
    allow three times that, plus one round for the join exchange itself.
    """
    f = config.gossip_nodes
    return 3 * (math.log(n) / math.log(f + 1) + math.log(n) / f) + 1


@pytest.mark.parametrize("n", [10, 100])
async def test_new_member_is_known_everywhere_within_log_n_gossip_rounds(autojump_clock, n):
    async with open_simulation(DEFAULTS, seed=n) as sim:
        await sim.add_cluster(n)
        await trio.sleep(5)  # let the join gossip die down
        start = trio.current_time()
        newcomer = await sim.add_node(5000 % 1024, seeds=[0])
        elapsed = await sim.wait_until(lambda: sim.all_see(newcomer.node_id, ("alive",)), timeout=60)
        rounds = elapsed / DEFAULTS.gossip_interval
        assert rounds <= dissemination_bound_rounds(DEFAULTS, n + 1), (n, rounds)
        seen = sim.first_event_times(newcomer.node_id, "joined", start)
        assert set(seen) == {i for i in sim.nodes if i != newcomer.node_id}


@pytest.mark.parametrize("n", [5, 40])
async def test_crashed_member_is_failed_everywhere_within_the_bound(autojump_clock, n):
    async with open_simulation(DEFAULTS, seed=7 + n) as sim:
        nodes = await sim.add_cluster(n)
        await trio.sleep(10)
        victim = nodes[n // 2].node_id
        crashed_at = trio.current_time()
        sim.crash(victim)
        bound = failure_detection_bound(DEFAULTS, n)
        await sim.wait_until(lambda: sim.all_see(victim, ("failed",)), timeout=bound + 1)
        seen = sim.first_event_times(victim, "failed", crashed_at)
        assert set(seen) == {node.node_id for node in sim.running()}
        assert max(seen.values()) - crashed_at <= bound
        assert sim.false_failures() == []


async def test_no_live_member_is_failed_at_10_percent_loss_over_ten_minutes(autojump_clock):
    async with open_simulation(DEFAULTS, seed=11, loss=0.10) as sim:
        nodes = await sim.add_cluster(16)
        await trio.sleep(600)
        assert sim.false_failures() == []
        await sim.wait_until(sim.converged, timeout=30)  # a suspicion may be in flight right now
        stats = [n.membership.statistics() for n in nodes]
        # the loss did bite: probes failed and suspicions were raised, then refuted in time
        assert sum(s["probe_failures"] for s in stats) > 0
        assert sum(s["refutations"] for s in stats) > 0


async def test_stalled_event_loop_causes_no_false_failures(autojump_clock):
    """One member's event loop stalls for 0.5-3 s at random, at 10% loss, for ten minutes.

    While stalled it answers nobody and its timers run late; it is suspected by the
    others and accuses some of them after each stall. Every suspicion must be refuted
    in time: the stalled member's missed nacks and refutations raise its health score
    (slowing its probes), and a lone accuser's suspicion starts at its longest.
    """
    rng = random.Random(5)
    async with open_simulation(DEFAULTS, seed=13, loss=0.10) as sim:
        nodes = await sim.add_cluster(16)
        slow = nodes[3]
        end = trio.current_time() + 600
        stalls = 0
        while trio.current_time() < end:
            pause = rng.uniform(0.5, 3.0)
            sim.stall(slow.node_id, pause)
            stalls += 1
            await trio.sleep(pause + rng.uniform(2.0, 10.0))  # stalls do not run into each other
        await trio.sleep(60)  # anything still pending has to resolve
        assert stalls > 50
        assert sim.false_failures() == []
        await sim.wait_until(sim.converged, timeout=30)  # a suspicion may be in flight right now
        # the stalled member noticed its own trouble (missed nacks, refutations)
        assert slow.membership.awareness.peak > 0
        assert slow.membership.statistics()["refutations"] > 0


async def _lagging_member_run(config: ClusterConfig) -> tuple[int, int, int]:
    async with open_simulation(config, seed=41) as sim:
        nodes = await sim.add_cluster(8)
        slow = nodes[1]
        slow.stall.lag = 1.2  # handles every datagram 1.2 s late: each ack misses its probe
        await trio.sleep(180)
        stats = slow.membership.statistics()
        return stats["probe_failures"], stats["probes"], len(sim.false_failures())


async def test_local_health_stops_a_lagging_member_from_accusing_healthy_ones(autojump_clock):
    """A CPU-starved member sees every ack too late. Without local health it suspects the
    member it probes nearly every second; with it, the missed nacks raise its score until
    its timeouts are long enough, and it stops accusing."""
    without_health = attrs.evolve(DEFAULTS, awareness_max_multiplier=1)
    accused_without, probes_without, _ = await _lagging_member_run(without_health)
    accused_with, _, false_failures = await _lagging_member_run(DEFAULTS)
    assert accused_without > 0.5 * probes_without  # the problem is real: most probes end in accusations
    assert accused_with <= 0.05 * accused_without
    assert false_failures == 0


async def test_partition_heals_by_push_pull_after_it_ends(autojump_clock):
    async with open_simulation(DEFAULTS, seed=17) as sim:
        nodes = await sim.add_cluster(10)
        left, right = nodes[:5], nodes[5:]
        sim.network.partition([n.address for n in left], [n.address for n in right])
        split_for = failure_detection_bound(DEFAULTS, 10) + 5
        await sim.wait_until(
            lambda: (
                all(a.state_of(b.node_id) == "failed" for a in left for b in right)
                and all(b.state_of(a.node_id) == "failed" for a in left for b in right)
            ),
            timeout=split_for,
        )
        sim.network.heal()
        healed_at = trio.current_time()
        # a reconnect attempt within one interval on every node, then gossip spreads the refutations
        bound = DEFAULTS.reconnect_interval + failure_detection_bound(DEFAULTS, 10)
        await sim.wait_until(sim.converged, timeout=bound)
        assert trio.current_time() - healed_at <= bound
        # failures during the split were real (unreachable), none after
        assert not [e for e in sim.events if e.kind == "failed" and e.at > healed_at]


async def test_a_seed_that_starts_late_is_joined_by_reconnect(autojump_clock):
    async with open_simulation(DEFAULTS, seed=43) as sim:
        early = await sim.add_node(2)
        assert await early.membership.join(["sim-1:7946"]) == 0  # nobody there yet
        await trio.sleep(5)
        await sim.add_node(1)  # the seed comes up, knowing nobody
        elapsed = await sim.wait_until(lambda: sim.converged([1, 2]), timeout=DEFAULTS.reconnect_interval + 5)
        assert elapsed <= DEFAULTS.reconnect_interval + 5


async def test_graceful_leave_is_not_reported_as_failure(autojump_clock):
    async with open_simulation(DEFAULTS, seed=19, loss=0.05) as sim:
        nodes = await sim.add_cluster(12)
        await trio.sleep(5)
        leaver = nodes[4].node_id
        left_at = trio.current_time()
        await sim.leave(leaver)
        await sim.wait_until(lambda: sim.all_see(leaver, ("left",)), timeout=30)
        await trio.sleep(failure_detection_bound(DEFAULTS, 12))  # long enough for any failure verdict
        kinds = {e.kind for e in sim.events if e.member == leaver and e.at >= left_at}
        assert "left" in kinds and "failed" not in kinds
        assert sim.all_see(leaver, ("left",))


async def test_restarted_member_rejoins_with_a_higher_incarnation(autojump_clock):
    async with open_simulation(DEFAULTS, seed=23) as sim:
        nodes = await sim.add_cluster(6)
        victim = nodes[2].node_id
        before = nodes[2].membership.incarnation
        sim.crash(victim)
        await sim.wait_until(lambda: sim.all_see(victim, ("failed",)), timeout=failure_detection_bound(DEFAULTS, 6))
        reborn = await sim.add_node(victim, seeds=[0])  # same id, same address, fresh process
        await sim.wait_until(lambda: sim.all_see(victim, ("alive",)), timeout=30)
        assert reborn.membership.incarnation > before
        assert all(n.membership.member(victim).incarnation == reborn.membership.incarnation for n in sim.running())


async def test_a_live_node_id_cannot_be_taken_by_a_joiner(autojump_clock):
    async with open_simulation(DEFAULTS, seed=29) as sim:
        await sim.add_cluster(4)
        refusal = await _start_with_id(sim, node_id=3, address_suffix="b")
        assert "node id 3 is already used by live member 'node-3' at sim-3:7946" in str(refusal)
        assert sim.all_see(3, ("alive",))
        assert sim.nodes[0].membership.member(3).address == "sim-3:7946"


async def _start_with_id(sim, *, node_id: int, address_suffix: str) -> JoinRefused | None:
    """Start a member under an existing id but at a new address, join through node 0,
    and return how the join was refused (None if it was not)."""
    from node.cluster.membership import Membership
    from node.cluster.memnet import Stall, StallableClock

    stall = Stall()
    transport = sim.network.attach(f"sim-{node_id}{address_suffix}:7946", stall)
    m = Membership(
        sim.config, node_id=node_id, name=f"impostor-{node_id}", http_url="http://impostor.invalid",
        transport=transport, clock=StallableClock(stall), keyring=sim.keyring,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(m.run)
        try:
            await m.join([sim.nodes[0].address])
        except JoinRefused as exc:
            return exc
        finally:
            nursery.cancel_scope.cancel()
    return None


async def test_packets_under_a_wrong_key_are_dropped_and_counted(autojump_clock):
    async with open_simulation(DEFAULTS, seed=31) as sim:
        nodes = await sim.add_cluster(3)
        outsider = await sim.add_node(50, keyring=Keyring([bytes(16)]))
        assert await outsider.membership.join([nodes[0].address]) == 0
        # its datagrams reach the members but never open
        await outsider.membership._send(nodes[1].address, [])  # carries its own pending Alive
        await trio.sleep(2)
        assert nodes[1].membership.statistics()["dropped_unauthenticated"] >= 1
        assert nodes[0].membership.statistics()["dropped_unauthenticated"] >= 1  # its join stream
        assert all(n.state_of(50) is None for n in nodes)


async def test_key_rotation_keeps_the_cluster_together(autojump_clock):
    """Mid-rotation, members that still encrypt with the old key and members that already
    encrypt with the new one understand each other, because every key decrypts."""
    old, new = bytes([1]) * 32, bytes([2]) * 32
    async with open_simulation(DEFAULTS, seed=37) as sim:
        a = await sim.add_node(1, keyring=Keyring([old, new]))  # step 1 done: new key added
        b = await sim.add_node(2, seeds=[1], keyring=Keyring([new, old]))  # step 2 done: new key primary
        c = await sim.add_node(3, seeds=[2], keyring=Keyring([new, old]))
        await sim.wait_until(sim.converged, timeout=10)
        await trio.sleep(30)
        await sim.wait_until(sim.converged, timeout=30)  # a suspicion may be in flight right now
        assert all(n.membership.statistics()["dropped_unauthenticated"] == 0 for n in (a, b, c))


async def test_held_unauthenticated_streams_do_not_keep_a_new_member_out(autojump_clock):
    """40 connections to a member's stream port that never send a byte: a new member still
    joins through it, well before those connections would time out."""
    async with open_simulation(DEFAULTS, seed=53) as sim:
        nodes = await sim.add_cluster(3)
        held = [await sim.network.connect("outsider:7946", nodes[0].address) for _ in range(40)]
        newcomer = await sim.add_node(9)
        with trio.fail_after(DEFAULTS.stream_timeout / 2):
            assert await newcomer.membership.join([nodes[0].address]) == 1
            await sim.wait_until(sim.converged, timeout=30)
        stats = nodes[0].membership.statistics()
        assert stats["streams_evicted"] >= 9 and stats["streams_served"] >= 1
        for stream in held:
            await stream.aclose()


def _forged(victim: int, incarnation: int) -> dict[str, list]:
    """Packets a key holder could forge about a live member, each sent once to everyone."""
    high = MAX_INCARNATION
    alive = Alive(victim, high, f"node-{victim}", f"sim-{victim}:7946", f"http://sim-{victim}.invalid", 1)
    return {
        "suspect at the top incarnation": [Suspect(victim, high, 0)],
        "failed at the top incarnation": [Dead(victim, high, 0)],
        "left at the top incarnation": [Dead(victim, high, victim)],
        "alive at the top, then suspect": [alive, Suspect(victim, high, 0)],
        "left at its own incarnation": [Dead(victim, incarnation, victim)],
        "a staircase of jumps, then suspect": [
            *(attrs.evolve(alive, incarnation=incarnation + step * MAX_INCARNATION_JUMP) for step in range(1, 21)),
            Suspect(victim, incarnation + 20 * MAX_INCARNATION_JUMP, 0),
        ],
    }


@pytest.mark.parametrize("case", list(_forged(2, 0)))
async def test_no_single_packet_from_a_key_holder_makes_a_live_member_permanently_dead(autojump_clock, case):
    async with open_simulation(DEFAULTS, seed=47) as sim:
        nodes = await sim.add_cluster(5)
        await trio.sleep(5)
        victim = sim.nodes[2]
        packet = sim.keyring.seal(encode(_forged(2, victim.membership.incarnation)[case]), PURPOSE_DATAGRAM)
        insider = sim.network.attach("insider:7946")  # holds the key, is no member
        for node in nodes:
            await insider.send_packet(node.address, packet)
        # long enough for any suspicion it raised to run out, and for the victim to refute
        await trio.sleep(2 * failure_detection_bound(DEFAULTS, 5))
        await sim.wait_until(lambda: sim.all_see(2, ("alive",)), timeout=failure_detection_bound(DEFAULTS, 5))
        assert victim.membership.incarnation <= 21 * MAX_INCARNATION_JUMP  # far from the top: it can refute again
        assert all(n.membership.member(2).incarnation == victim.membership.incarnation for n in nodes)
        await sim.wait_until(sim.converged, timeout=30)


def test_scaling_helpers_follow_memberlist():
    assert retransmit_limit(4, 5) == 4 and retransmit_limit(4, 100) == 12
    assert push_pull_interval(30.0, 32) == 30.0 and push_pull_interval(30.0, 64) == 60.0
    assert failure_detection_bound(DEFAULTS, 5) == pytest.approx(9 + 24 + 1.8)
