"""The chat cluster simulation (node/cluster/chatsim, docs/cluster-simulation.md).

Real nodes (sequencer, cluster routing, links, membership, sessions) over the in-memory
network, with PostgreSQL's constraints in an in-memory database, in simulated time:
random sends and faults over many seeds must keep every invariant of the checker; a
seed replays exactly; and the checker does catch a database without the seq fences.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from node.cluster.chatsim.memstore import StorageFaults
from node.cluster.chatsim.run import Shape, World, simulate, summarize
from node.cluster.chatsim.wire import ClientEnd, WireConnection
from node.cluster.ownership import owner_of
from node.core.chats import message_event
from node.storage import WriteBatch
from node.storage.batch import MessageMeta

pytestmark = pytest.mark.engine("lmdb")  # simulated storage: run once, not once per engine

QUICK_SEEDS = range(1, 13)
QUICK_STEPS = 150


def test_random_sends_and_faults_keep_every_invariant_over_many_seeds():
    results = [simulate(seed, QUICK_STEPS) for seed in QUICK_SEEDS]
    failed = {r.seed: r.violations[:5] for r in results if r.violations}
    assert not failed, failed
    total = summarize(results)
    assert total["acked"] == total["sends"]  # after healing, every send was acknowledged
    # the faults did happen, and the database did refuse second writers
    for name in ("crashes", "stops", "partitions", "pauses", "cuts", "drops", "conflicts", "unknown_outcomes"):
        assert total[name] > 0, (name, total)


def test_a_seed_replays_exactly():
    first = simulate(7, 80, keep_trace=True)
    again = simulate(7, 80, keep_trace=True)
    assert first.trace == again.trace
    assert first.trace_hash == again.trace_hash
    assert first.counts == again.counts
    assert simulate(8, 80).trace_hash != first.trace_hash


#: steps that split the cluster often and heal it rarely
SPLITS = {"send": 50.0, "partition": 6.0, "heal": 1.0, "crash": 0.5, "restart": 1.0}


def test_the_checker_catches_a_database_without_the_seq_fences():
    """Without the primary key on (chat, seq) and the compare-and-set of a chat's seq,
    two owners on either side of a partition each store their own message under one seq
    and acknowledge it; the checker must say so. The same seeds with the fences in place
    keep every invariant."""
    broken = [simulate(seed, 200, fences=False, actions=SPLITS) for seed in range(1, 5)]
    found = [v for r in broken for v in r.violations if "two different messages acknowledged with one seq" in v]
    assert found, [r.violations[:3] for r in broken]
    fenced = [simulate(seed, 200, actions=SPLITS) for seed in range(1, 5)]
    assert all(not r.violations for r in fenced), [r.violations[:3] for r in fenced]
    assert sum(r.counts["conflicts"] for r in fenced) > 0


async def until(predicate, timeout: float = 30.0, step: float = 0.0001) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


async def test_a_device_gets_what_was_stored_while_its_subscription_could_not_read(autojump_clock):
    """A device connects to one node; its chat is owned by another. Between the device's
    hello and its subscription taking effect, a former owner stores an entry, and the
    read that would catch the device up fails. The node tries that read again, so the
    device gets the entry without waiting for the next message or a reconnect."""
    shape = Shape(nodes=2, users=2, devices_per_user=[1, 1], chats=[[0, 1]], loss=0.0, faults=StorageFaults())
    world = World(1, shape=shape)
    async with trio.open_nursery() as nursery:
        world._nursery = nursery
        await nursery.start(world.network.serve)
        world.populate(nursery)
        first, second = world.start_node(1), world.start_node(2)
        await until(lambda: first.ready and second.ready and len(first.routing.ownership.members) == 2
                    and len(second.routing.ownership.members) == 2)
        chat = world.chat_ids[0]
        owner, host = (first, second) if first.routing.owns(chat) else (second, first)
        device = world.devices[0]
        wire = WireConnection(host.stall)
        assert host.accept(wire)
        nursery.start_soon(device.serve, ClientEnd(wire), host.node_id)
        await until(lambda: device.user_id in owner.routing.subs.get(chat, {}).get(host.node_id, ()))
        world.faults = StorageFaults(read_unavailable=1.0)  # the catch-up's read fails ...
        sender = world.devices[1].user_id
        raw = orjson.dumps({"id": "77", "chat": str(chat), "seq": 1, "from": str(sender), "ts": 0, "kind": "text",
                            "text": "stored by a former owner", "client_msg_id": "early"})
        batch = WriteBatch()
        batch.append_message(chat, 1, 77, raw, MessageMeta(sender, "text", 0))
        batch.set_chat_seq(chat, 1, 0)
        world.db.apply([batch.ops])
        await trio.sleep(0.1)
        assert host.storage.failed_reads > 0
        world.faults = StorageFaults()  # ... and works again a moment later
        await until(lambda: device.holds(chat, 1), timeout=10, step=0.01)
        assert not world.violations
        nursery.cancel_scope.cancel()


async def start(world: World, nursery: trio.Nursery) -> list:
    world._nursery = nursery
    await nursery.start(world.network.serve)
    world.populate(nursery)
    nodes = [world.start_node(n) for n in range(1, world.shape.nodes + 1)]
    everyone = {n.node_id for n in nodes}
    await until(lambda: all(n.ready and set(n.routing.ownership.members) == everyone for n in nodes), step=0.01)
    return nodes


async def connect(node, device, nursery: trio.Nursery) -> None:
    wire = WireConnection(node.stall)
    assert node.accept(wire)
    nursery.start_soon(device.serve, ClientEnd(wire), node.node_id)
    await until(lambda: device.connection is not None and device.connection.synced, step=0.01)


async def test_a_device_is_not_sent_its_own_acknowledged_send_again(autojump_clock):
    """A send forwarded over two hops reaches its own device live (the owner excludes only
    the node it heard it from); if the ack came first, ahead of an entry the device still
    misses, the session must know the device already holds it."""
    world = World(1, shape=Shape(nodes=1, users=2, devices_per_user=[1, 1], chats=[[0, 1]], loss=0.0,
                                 faults=StorageFaults()))
    async with trio.open_nursery() as nursery:
        [node] = await start(world, nursery)
        device = world.devices[0]
        await connect(node, device, nursery)
        [session] = node.hub.sessions_of(device.user_id)
        chat = world.chat_ids[0]

        def entry(seq: int, sender: int) -> bytes:
            return message_event(orjson.dumps({"id": str(10 + seq), "chat": str(chat), "seq": seq,
                                               "from": str(sender), "ts": 0, "kind": "text", "text": "hi"}))

        session.send_ack("own", {"chat": str(chat), "id": "12", "seq": 2, "ts": 0})  # its send, stored as seq 2
        session.deliver(chat, 1, entry(1, world.devices[1].user_id), 0)  # someone else's, stored first
        session.deliver(chat, 2, entry(2, device.user_id), 0)  # its own again, over the second hop
        await trio.sleep(1)
        assert device.connection.arrived[chat] == {1, 2}
        assert not world.violations
        nursery.cancel_scope.cancel()


async def test_a_device_gets_what_the_other_side_of_a_partition_stored(autojump_clock):
    """A node cut off from the others owns every chat in its own view and stores a
    message; a device on the other side, subscribed at the owner of its own side, never
    had it sent. Once the partition heals it gets it, without waiting for another message."""
    shape = Shape(nodes=3, users=2, devices_per_user=[1, 1], chats=[[0, 1]], loss=0.0, faults=StorageFaults())
    world = World(3, shape=shape)
    async with trio.open_nursery() as nursery:
        nodes = await start(world, nursery)
        chat = world.chat_ids[0]
        owner = nodes[0].routing.owner(chat)
        alone = next(n for n in nodes if n.node_id != owner)  # the chat stays where it was once healed
        others = [n for n in nodes if n is not alone]
        reader, writer = world.devices
        await connect(others[0], reader, nursery)
        await connect(alone, writer, nursery)
        world.network.partition([alone.address], [n.address for n in others])
        await until(lambda: alone.routing.ownership.members == (alone.node_id,)
                    and all(alone.node_id not in n.routing.ownership.members for n in others), step=0.05)
        writer.send("split", chat, "stored on the small side")
        await until(lambda: "split" in writer.acks, step=0.01)
        assert not reader.holds(chat, 1)
        world.network.heal()
        everyone = {n.node_id for n in nodes}
        await until(lambda: all(set(n.routing.ownership.members) == everyone for n in nodes), step=0.05)
        await until(lambda: reader.holds(chat, 1), timeout=30, step=0.01)
        assert not world.violations
        nursery.cancel_scope.cancel()


def roles(nodes: list[Any], chat: int) -> tuple[Any, Any, Any]:
    """The chat's owner, the node that owns it once the owner is gone, and the third node."""
    owner = next(n for n in nodes if n.routing.owns(chat))
    heir_id = owner_of(chat, [n.node_id for n in nodes if n is not owner])
    heir = next(n for n in nodes if n.node_id == heir_id)
    return owner, heir, next(n for n in nodes if n is not owner and n is not heir)


async def test_a_device_that_leaves_while_its_subscription_reads_is_subscribed_when_back(autojump_clock):
    """A device connects and drops again while the node still reads its user's chats to
    subscribe them; the chat then moves to another owner (its owner dies) while the user
    is away. Back, the device must be subscribed at the new owner (the node must not take
    the chats for subscribed already), or it is sent nothing live."""
    shape = Shape(nodes=3, users=2, devices_per_user=[1, 1], chats=[[0, 1]], loss=0.0, faults=StorageFaults())
    world = World(5, shape=shape)
    async with trio.open_nursery() as nursery:
        nodes = await start(world, nursery)
        chat = world.chat_ids[0]
        first, heir, host = roles(nodes, chat)
        reader, writer = world.devices
        world.faults = StorageFaults(read_latency=(1.0, 1.0))  # slow reads: the drop lands in one
        wire = WireConnection(host.stall)
        assert host.accept(wire)
        nursery.start_soon(reader.serve, ClientEnd(wire), host.node_id)
        await until(lambda: host.hub.is_online(reader.user_id), step=0.001)
        reader.drop()
        await until(lambda: not host.hub.is_online(reader.user_id), step=0.001)
        await trio.sleep(3)
        world.faults = StorageFaults()
        first.crash()
        await until(lambda: all(n.routing.owner(chat) == heir.node_id for n in (host, heir)), step=0.05)
        await connect(host, reader, nursery)
        await connect(heir, writer, nursery)
        writer.send("live", chat, "sent while the reader is connected")
        await until(lambda: "live" in writer.acks, step=0.01)
        await until(lambda: reader.holds(chat, 1), timeout=10, step=0.01)
        assert not world.violations
        nursery.cancel_scope.cancel()


async def test_a_node_that_missed_a_peers_restart_after_its_bye_follows_the_new_life(autojump_clock):
    """A node's membership gives a peer up for a moment and sees it back, while the
    peer's stream to it lives on (seed 267 of 150 steps, before the storage retries
    changed its course: the node was paused). The peer then says `bye` over that stream
    (it owns nothing) and restarts before membership shows the node that it went. The
    new life's hello must count as a restart although the links had forgotten the old
    life when membership gave it up: otherwise the node keeps the old life's `bye`,
    takes another node for the owner of the peer's chats, subscribes its devices there,
    and they are sent nothing live."""
    shape = Shape(nodes=3, users=2, devices_per_user=[1, 1], chats=[[0, 1]], loss=0.0, faults=StorageFaults())
    world = World(5, shape=shape)
    async with trio.open_nursery() as nursery:
        nodes = await start(world, nursery)
        chat = world.chat_ids[0]
        peer, heir, host = roles(nodes, chat)
        reader, writer = world.devices
        await connect(host, reader, nursery)
        await connect(heir, writer, nursery)
        members = dict(host.routing._members)  # as membership reports a flap of the peer
        host.routing.members_now({n: a for n, a in members.items() if n != peer.node_id})
        host.routing.members_now(members)
        await trio.sleep(1)
        peer.routing.leave()  # the first step of a polite stop: `bye`, over that stream
        await until(lambda: peer.node_id in host.routing.departing, step=0.001)
        peer.crash()
        again = world.start_node(peer.node_id)  # back at once: membership sees no failure
        await until(lambda: again.ready, step=0.05)
        everyone = {n.node_id for n in nodes}
        await until(lambda: set(host.routing._members) == everyone, step=0.05)
        await trio.sleep(5)
        assert host.routing.owner(chat) == again.node_id, host.routing.departing
        writer.send("live", chat, "sent after the restart")
        await until(lambda: "live" in writer.acks, step=0.01)
        await until(lambda: reader.holds(chat, 1), timeout=10, step=0.01)
        assert not world.violations
        nursery.cancel_scope.cancel()


def test_a_trace_cut_short_by_its_reader_ends_quietly():
    """`--trace | head`: the reader leaving is no failure to show with a traceback."""
    import subprocess
    import sys

    # 600 steps: a trace of ~150 KB, more than a pipe holds, so the writer is still writing
    # when the reader leaves
    proc = subprocess.Popen([sys.executable, "-m", "node.cluster.chatsim", "--seed", "3", "--steps", "600", "--trace"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # the first line, then the reader goes
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and "Traceback" not in stderr, stderr
