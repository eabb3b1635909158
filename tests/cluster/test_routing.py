"""Three nodes in one process, one PostgreSQL: any node serves any user.

Real sockets (gossip and links on loopback), real PostgreSQL, the real client: users on
different nodes chat 1-1 and in a group, and everything a single node does (acks after
the commit, once-per-device delivery in order, receipts, typing, presence, logout,
idempotent retries) holds across nodes.
"""

from __future__ import annotations

import base64
import itertools
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import argon2
import pytest
import trio
from conftest import PASSWORD, cluster_storage, make_config, new_user, running_node

from node.client import ChatClient, ClientError
from node.cluster.ownership import USER, owner_of
from node.storage import WriteBatch
from node.testing import wait_until as until

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL

KEY = base64.b64encode(bytes(range(32))).decode()
FAST = {"probe_interval": 0.2, "probe_timeout": 0.08, "gossip_interval": 0.05, "suspicion_mult": 3,
        "push_pull_interval": 2.0, "reconnect_interval": 2.0, "leave_timeout": 0.5}


def node_config(tmp_path: Path, node_id: int, seeds: list[str], timings: dict[str, float] = FAST, **extra: Any):
    name = f"n{node_id}"
    return make_config(
        tmp_path / name,
        node={"data_dir": str(tmp_path / name / "data"), "id": node_id, "name": name},
        cluster={"enabled": True, "bind_port": 0, "seeds": seeds, "keys": [KEY], **timings},
        storage=cluster_storage(tmp_path),
        plugins={"lastseen": {"grace": 0.1}},
        **extra,
    )


class Cluster:
    def __init__(self, nodes: list) -> None:
        self.nodes = nodes

    def converged(self) -> bool:
        return all(len(n.routing.ownership.members) == len(self.nodes) for n in self.nodes)


async def start_cluster(stack: AsyncExitStack, tmp_path: Path, size: int = 3) -> Cluster:
    first = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [])))
    nodes = [first]
    for node_id in range(2, size + 1):
        nodes.append(await stack.enter_async_context(
            running_node(node_config(tmp_path, node_id, [first.cluster.address]))))
    cluster = Cluster(nodes)
    await until(cluster.converged)
    return cluster


async def user_on(node, name: str, *, register: bool = True) -> ChatClient:
    if register:
        return await new_user(node, name)
    client = ChatClient(node.http_url)
    await client.login(name, PASSWORD)
    return client


async def test_users_on_different_nodes_chat_one_to_one_and_in_a_group(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        alice = await user_on(a, "alice")
        await user_on(b, "bob")  # registered on b ...
        bob = await user_on(c, "bob", register=False)  # ... and logged in on c
        carol = await user_on(b, "carol")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as ca, bob.connect() as cb:
            await ca.synced.wait(), await cb.synced.wait()
            acks = [await ca.send_text(chat["id"], f"hi {i}") for i in range(5)]
            assert [ack["seq"] for ack in acks] == [1, 2, 3, 4, 5]
            for i in range(5):
                got = await cb.wait_for("message", text=f"hi {i}")
                assert got["seq"] == i + 1
            answer = await cb.send_text(chat["id"], "hello alice")
            assert (await ca.wait_for("message", text="hello alice"))["seq"] == answer["seq"] == 6
            await ca.wait_for("delivered")  # bob's device on c acknowledged: alice on a hears it

        group = await alice.create_group("three nodes", members=[bob.user["id"], carol.user["id"]])
        async with alice.connect() as ca, bob.connect() as cb, carol.connect() as cc:
            for conn in (ca, cb, cc):
                await conn.synced.wait()
            sent = [await ca.send_text(group["id"], "from a"), await cb.send_text(group["id"], "from c"),
                    await cc.send_text(group["id"], "from b")]
            seqs = [s["seq"] for s in sent]
            assert seqs == sorted(seqs) and len(set(seqs)) == 3
            for conn, own in ((ca, sent[0]), (cb, sent[1]), (cc, sent[2])):  # each gets the other two, in order
                got = [await conn.wait_for("message", where=lambda e: e.get("text", "").startswith("from"))
                       for _ in range(2)]
                assert [e["seq"] for e in got] == sorted(s["seq"] for s in sent if s is not own)
        history = [m.get("text") for m in await carol.history(group["id"])]
        assert history[-3:] == ["from a", "from c", "from b"]
        for client in (alice, bob, carol):
            await client.aclose()


async def test_a_retry_through_another_node_gets_the_original_ack(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, _ = cluster.nodes
        alice = await user_on(a, "alice")
        await user_on(b, "bob")
        chat = await alice.open_direct(username="bob")
        async with alice.connect() as conn:
            first = await conn.send_text(chat["id"], "once", client_msg_id="retry-1")
        alice_b = await user_on(b, "alice", register=False)
        async with alice_b.connect() as conn:
            again = await conn.send_text(chat["id"], "once", client_msg_id="retry-1")
        assert again["duplicate"] is True and (again["id"], again["seq"]) == (first["id"], first["seq"])
        assert [m["text"] for m in await alice_b.history(chat["id"])] == ["once"]
        await alice.aclose(), await alice_b.aclose()


async def test_typing_presence_and_logout_reach_other_nodes(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        alice, bob = await user_on(a, "alice"), await user_on(b, "bob")
        chat = await alice.open_direct(username="bob")
        for user in (alice, bob):  # each writes to the other: contacts, who see each other's presence
            async with user.connect() as conn:
                await conn.send_text(chat["id"], "hi")
        async with bob.connect() as cb:
            await cb.synced.wait()
            async with alice.connect() as ca:
                await ca.synced.wait()
                presence = await cb.wait_for("presence", user=alice.user["id"], online=True)
                assert presence["online"] is True
                assert (await alice.presence(bob.user["id"]))["online"] is True  # asked on a, bob is on b
                await ca.send_events({"type": "typing", "chat": chat["id"], "typing": True})
                assert (await cb.wait_for("typing"))["user"] == alice.user["id"]
            await cb.wait_for("presence", user=alice.user["id"], online=False)
        bob_c = await user_on(c, "bob", register=False)
        async with bob.connect() as cb:
            await cb.synced.wait()
            await bob_c.logout()  # logged out on c: ...
        async with bob.connect() as cb:  # ... bob's device on b is still fine, c's token is gone
            await cb.synced.wait()
        with pytest.raises(ClientError):
            await bob_c.me()
        await alice.aclose(), await bob.aclose(), await bob_c.aclose()


async def test_a_password_change_closes_sockets_on_other_nodes(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, _ = cluster.nodes
        dana_a = await user_on(a, "dana")
        dana_b = await user_on(b, "dana", register=False)
        async with dana_b.connect() as conn:
            await conn.synced.wait()
            await dana_a.request("POST", "/api/me/password",
                                 json={"current_password": PASSWORD, "new_password": "a brand new passphrase"})
            await until(lambda: conn.closed is not None, 10)
            assert conn.closed.reason.code == 4003
        await dana_a.aclose(), await dana_b.aclose()


async def test_a_login_that_rehashes_never_undoes_a_password_change_made_elsewhere(tmp_path):
    """Node 2 hashes more strongly than node 1, so its logins rehash node 1's hashes. If the
    password changed meanwhile on another node (here written while node 2 still holds the
    old record: the other node's invalidation has not arrived), the rehash of the old
    password must not be stored over the new one: the login is refused, and only the new
    password works afterwards."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [])))
        second = await stack.enter_async_context(running_node(node_config(
            tmp_path, 2, [first.cluster.address], accounts={"argon2_time_cost": 2, "argon2_memory_kib": 64})))
        await until(Cluster([first, second]).converged)
        erin = await user_on(first, "erin")
        erin_id = int((await erin.me())["user"]["id"])
        assert (await second.accounts.user(erin_id))["password"].startswith("$argon2id$v=19$m=64,t=1")
        new_password = "a brand new passphrase"
        changed = WriteBatch()
        changed.update_user(erin_id, {"password": argon2.PasswordHasher(time_cost=1, memory_cost=64).hash(new_password)})
        await first.storage.write(changed)
        first.accounts.forget_users([erin_id])  # the change is node 1's; its word to node 2 is late

        late = ChatClient(second.http_url)
        with pytest.raises(ClientError) as refused:
            await late.login("erin", PASSWORD)
        assert refused.value.code == "unauthorized", refused.value
        for node in (second, first):
            async with ChatClient(node.http_url) as again:
                await again.login("erin", new_password)
                with pytest.raises(ClientError):
                    await again.login("erin", PASSWORD)
        await erin.aclose(), await late.aclose()


async def test_info_lists_every_node(tmp_path):
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        async with ChatClient(b.http_url) as client:
            await until(lambda: all(n.cluster.http_urls() and len(n.cluster.http_urls()) == 3 for n in cluster.nodes))
            info = await client.info()
        assert info["nodes"][0] == b.http_url
        assert set(info["nodes"]) == {a.http_url, b.http_url, c.http_url}


SLOW = {**FAST, "probe_interval": 0.5, "probe_timeout": 0.2, "suspicion_mult": 6}  # failures take seconds


async def two_nodes_and_one_to_crash(stack: AsyncExitStack, tmp_path: Path):
    """Nodes 1 and 2, and node 3 with the cancel scope that crashes it (it stops at once,
    without a goodbye); failure detection takes seconds."""

    async def crashable(cfg, task_status):
        with trio.CancelScope() as scope:
            async with running_node(cfg) as node:
                task_status.started((node, scope))
                await trio.sleep_forever()

    n1 = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [], SLOW)))
    n2 = await stack.enter_async_context(running_node(node_config(tmp_path, 2, [n1.cluster.address], SLOW)))
    nursery = await stack.enter_async_context(trio.open_nursery())
    n3, crash = await nursery.start(crashable, node_config(tmp_path, 3, [n1.cluster.address], SLOW))
    await until(lambda: all(len(n.routing.ownership.members) == 3 for n in (n1, n2, n3)))
    return n1, n2, n3, crash


_numbers = itertools.count(1)


async def user_homed_at(stack: AsyncExitStack, via, home: int, name: str) -> ChatClient:
    """A new user (registered through `via`) whose home, with all three nodes live, is node `home`."""
    for _ in range(200):
        user = await new_user(via, f"{name}{next(_numbers)}")
        stack.push_async_callback(user.aclose)
        if owner_of(int(user.user["id"]), [1, 2, 3], USER) == home:
            return user
    raise AssertionError(f"no user homed at node {home} in 200 tries")


async def device_on(stack: AsyncExitStack, node, user: ChatClient) -> ChatClient:
    """Another device of `user`, logged in through `node`."""
    client = ChatClient(node.http_url)
    stack.push_async_callback(client.aclose)
    await client.login(user.user["username"], PASSWORD)
    return client


async def test_a_read_queued_for_an_owner_that_died_goes_to_the_next_owner(tmp_path):
    """A node crashes (no `bye`) while another node's link to it is down: the `read` a
    device sends meanwhile waits in the link's queue, never sent. Once membership
    declares the owner failed, it goes to the chat's next owner and is applied there: the
    reader gets no error and the author hears of it (docs/cluster.md, "Between nodes").
    The chat's next owner is node 1 itself: were it node 2, node 1 could give node 3 up
    before node 2 does, and node 2 would then pass the read on to node 3 over a link not
    yet known to be dead, where it is lost in flight and fails `unavailable` (as any
    request in flight to a node that dies does)."""
    async with AsyncExitStack() as stack:
        n1, n2, n3, crash = await two_nodes_and_one_to_crash(stack, tmp_path)
        alice, bob = await new_user(n1, "alice"), await new_user(n1, "bob")
        stack.push_async_callback(alice.aclose)
        stack.push_async_callback(bob.aclose)
        for i in range(200):  # a chat that node 3 owns, and node 1 after it
            chat = (await alice.create_group(f"g{i}", usernames=["bob"]))["id"]
            if owner_of(int(chat), [1, 2, 3]) == 3 and owner_of(int(chat), [1, 2]) == 1:
                break
        a = await stack.enter_async_context(alice.connect())
        b = await stack.enter_async_context(bob.connect(auto_ack=False))
        await b.synced.wait()
        await until(lambda: int(bob.user["id"]) in n3.routing.subs.get(int(chat), {}).get(1, set()))
        seq = (await a.send_text(chat, "read me"))["seq"]
        await b.wait_for("message", chat=chat, seq=seq)

        crash.cancel()
        links = n1.cluster.links

        async def link_down() -> bool:  # a write into the dead stream breaks it; later ones queue
            await b.send_events({"type": "received", "chat": chat, "seq": seq})
            return not links.peer_statistics(3)["connected"]

        await until(link_down, 5, interval=0.05)
        await b.read(chat, seq)
        # the read waits for node 3 (a request to it, unanswered; a `received` queued late
        # from the loop above would throw off a count of the link's queue)
        await until(lambda: any(r.peer == 3 for r in n1.routing._pending.values()), 5)
        assert links.queued(3) > 0 and not links.peer_statistics(3)["connected"]

        read = await a.wait_for("read", timeout=20, chat=chat, user=bob.user["id"])
        assert read["seq"] == seq
        assert n1.cluster.membership.member(3).state == "failed"
        assert [e for e in b.events_nowait() if e["type"] == "error"] == []
        summary = next(c for c in await bob.chats() if c["id"] == chat)
        assert summary["read_seq"] == seq


async def test_a_receipt_for_a_user_whose_home_died_still_reaches_her_device(tmp_path):
    """A node crashes while it is Alice's home (the node that knows where her devices
    are) and the link to it from her chat's owner is down: the `read` event for her,
    which the owner relays through her home, waits in that link's queue. Once membership
    declares the home failed, the event goes to her next home, which passes it to every
    node for a moment (the node with her device may not have registered her there yet):
    her device, on a surviving node, learns that Bob read her message (docs/cluster.md,
    "Between nodes"). Her chat is owned by node 1 before and after the crash, so only the
    home moves."""
    async with AsyncExitStack() as stack:
        n1, n2, n3, crash = await two_nodes_and_one_to_crash(stack, tmp_path)
        bob = await new_user(n1, "bob")
        stack.push_async_callback(bob.aclose)
        alice = await user_homed_at(stack, n1, 3, "alice")
        alice_id = int(alice.user["id"])
        for i in range(200):  # a chat that node 1 owns, with node 3 and without
            chat = (await alice.create_group(f"g{i}", usernames=["bob"]))["id"]
            if owner_of(int(chat), [1, 2, 3]) == 1 and owner_of(int(chat), [1, 2]) == 1:
                break
        a = await stack.enter_async_context((await device_on(stack, n2, alice)).connect())
        b = await stack.enter_async_context(bob.connect())
        await b.synced.wait()
        await until(lambda: 2 in n3.routing.locations.get(alice_id, ()))
        seq = (await a.send_text(chat, "read me"))["seq"]
        await b.wait_for("message", chat=chat, seq=seq)

        crash.cancel()
        links = n1.cluster.links

        async def link_down() -> bool:  # Bob's typing goes to Alice's home: a write into the dead stream breaks it
            await b.typing(chat)
            return not links.peer_statistics(3)["connected"]

        await until(link_down, 5, interval=0.05)
        queued = links.queued(3)
        await b.read(chat, seq)
        await until(lambda: links.queued(3) > queued, 5)  # the `read` event for Alice waits for node 3

        read = await a.wait_for("read", timeout=20, chat=chat, user=bob.user["id"])
        assert read["seq"] == seq
        assert n1.cluster.membership.member(3).state == "failed"


@pytest.mark.parametrize("back", ["never", "at_once"])
async def test_a_user_whose_devices_and_home_fail_together_goes_offline(tmp_path, back):
    """Bob's only device is on node 3, which is also his home (the node that knows where
    his devices are): when it crashes, no other node has him registered. The owner of his
    chat with Alice, which had his device subscribed from node 3, tells his home (`lost`):
    the new one after membership declared node 3 failed, or node 3's new life if it came
    back at once, before membership saw it fail (that life never heard of his device).
    Once the other nodes have had time to register any device of his there
    (HOME_SETTLE), it fires `on_user_offline` (docs/plugins.md), and Alice hears that Bob
    went offline, with a last-seen time."""
    async with AsyncExitStack() as stack:
        n1, n2, n3, crash = await two_nodes_and_one_to_crash(stack, tmp_path)
        alice = await new_user(n1, "alice")
        stack.push_async_callback(alice.aclose)
        for _ in range(20):  # a user whose home is node 3, in a chat with Alice that node 3 does not own
            bob = await user_homed_at(stack, n1, 3, "bob")
            chat = (await bob.open_direct(username=alice.user["username"]))["id"]
            if owner_of(int(chat), [1, 2, 3]) != 3:
                break
        bob_id = int(bob.user["id"])
        owner = n1 if owner_of(int(chat), [1, 2, 3]) == 1 else n2
        a = await stack.enter_async_context(alice.connect())
        await a.synced.wait()
        b = await stack.enter_async_context((await device_on(stack, n3, bob)).connect())
        await b.send_text(chat, "hi alice")  # Alice is Bob's contact now: she may see his presence
        assert (await a.wait_for("presence", timeout=20, user=str(bob_id)))["online"] is True
        await until(lambda: bob_id in owner.routing.subs.get(int(chat), {}).get(3, set()))

        port = int(n3.cluster.address.rpartition(":")[2])
        crash.cancel()
        if back == "at_once":  # on its address (a new address would be another node)
            again = await stack.enter_async_context(running_node(node_config(
                tmp_path, 3, [n1.cluster.address], {**SLOW, "bind_port": port})))
            await until(lambda: all(len(n.routing.ownership.members) == 3 for n in (n1, n2, again)))
        gone = await a.wait_for("presence", timeout=40, user=str(bob_id))
        assert gone["online"] is False and gone["last_seen"]
        assert n1.cluster.membership.member(3).state == ("failed" if back == "never" else "alive")
        assert (await alice.presence(str(bob_id)))["online"] is False


async def test_online_anywhere_is_true_while_a_new_home_has_not_heard_of_the_device(tmp_path):
    """Bob's device is on node 1, and node 3 joins as his home. Each node registers its
    users at a new home once its own view has moved, so for HOME_SETTLE the new home may
    not know of the device yet. Asked then, "online anywhere" (push decides on it) asks
    every node instead of answering no, on the new home and on a node that would otherwise
    ask only the home (docs/cluster.md). A user with no device stays offline."""
    async with AsyncExitStack() as stack:
        n1 = await stack.enter_async_context(running_node(node_config(tmp_path, 1, [])))
        n2 = await stack.enter_async_context(running_node(node_config(tmp_path, 2, [n1.cluster.address])))
        await until(lambda: all(len(n.routing.ownership.members) == 2 for n in (n1, n2)))
        bob = await user_homed_at(stack, n1, 3, "bob")
        carol = await user_homed_at(stack, n1, 3, "carol")
        bob_id, carol_id = int(bob.user["id"]), int(carol.user["id"])
        b = await stack.enter_async_context(bob.connect())
        await b.synced.wait()

        n3 = await stack.enter_async_context(running_node(node_config(tmp_path, 3, [n1.cluster.address])))
        await until(lambda: all(len(n.routing.ownership.members) == 3 for n in (n1, n2, n3)))
        assert n3.routing.home(bob_id) == n2.routing.home(bob_id) == 3
        await until(lambda: n3.routing.locations.get(bob_id))
        # The moment before node 1's registration arrived, which node 3 cannot wait for.
        n3.routing.locations.pop(bob_id)

        assert await n3.is_online(bob_id) is True  # the new home
        assert await n2.is_online(bob_id) is True  # a node that is neither home nor has the device
        assert await n3.is_online(carol_id) is False
        assert await n2.is_online(carol_id) is False

        # is_online stops waiting for the other nodes once one said yes: a request whose
        # caller is cancelled is dropped at once, not kept until its answer or deadline.
        await until(lambda: n2.routing.statistics()["pending_requests"] == 0)
        with trio.CancelScope() as waiting:
            waiting.cancel()
            await n2.routing.ask(1, lambda req: ("online?", req, bob_id), 30.0)
        assert n2.routing.statistics()["pending_requests"] == 0
