"""One cluster, one service: every feature of a single node, with the parts on different nodes.

Three nodes in one process on one private PostgreSQL (tests/cluster/threenodes.py). In
each test the devices are placed from the chat's owner and the users' homes, so that a
sender, the node that sequences the chat and the recipients are three different nodes,
and a user's devices are spread over several. Real sockets, real clients, nothing mocked.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
from conftest import PASSWORD
from threenodes import assert_once_in_order, collect, start_cluster, until

from node.client import ChatClient, ClientError

pytestmark = pytest.mark.engine("postgresql")  # a cluster keeps its state in PostgreSQL


async def test_a_one_to_one_chat_with_every_part_on_another_node(tmp_path):
    """Register on one node, log in on the others; alice sends from a node that does not own
    the chat, bob's devices are on the other two. Every device gets every entry once and in
    order, each ack comes after the commit (another node already reads the message), and a
    send whose ack was lost, retried through another node, gets the original ack."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        n1 = cluster.nodes[0]
        alice = await cluster.user(n1, "alice")
        bob = await cluster.user(cluster.nodes[1], "bob")
        chat = (await alice.open_direct(username=bob.user["username"]))["id"]
        owner = cluster.owner(chat)
        x, y = cluster.others(owner)
        alice_x = await cluster.login(x, alice, "phone")  # the sender: not on the owner
        alice_y = await cluster.login(y, alice, "laptop")
        bob_y = await cluster.login(y, bob, "phone")
        bob_o = await cluster.login(owner, bob, "laptop")
        reader = await cluster.login(y, alice, "reader")  # reads history through a third node

        async with (alice_x.connect() as ax, alice_y.connect() as ay, bob_y.connect() as by,
                    bob_o.connect() as bo):
            for conn in (ax, ay, by, bo):
                await conn.synced.wait()
            await cluster.subscribed(chat, (x, alice), (y, alice), (y, bob))

            acks: dict[str, list] = {"alice": [], "bob": []}

            async def send(conn, who: str, count: int) -> None:
                for i in range(count):
                    ack = await conn.send_text(chat, f"{who} {i}")
                    # acked only once durable: another node reads it from storage already
                    assert ack["id"] in [m["id"] for m in await reader.history(chat, limit=100)]
                    acks[who].append(ack)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, ax, "alice", 10)
                nursery.start_soon(send, by, "bob", 6)
            seqs = sorted(a["seq"] for a in acks["alice"] + acks["bob"])
            assert seqs == list(range(1, 17))
            for who in ("alice", "bob"):  # each sender's acks in the order sent
                assert [a["seq"] for a in acks[who]] == sorted(a["seq"] for a in acks[who])

            # every device: every entry it did not send itself, once, in order
            for conn, own in ((ay, None), (bo, None), (ax, "alice"), (by, "bob")):
                expected = 16 - (len(acks[own]) if own else 0)
                got = await collect(conn, chat, expected)
                if own is None:
                    assert_once_in_order(got)
                else:
                    got_seqs = [e["seq"] for e in got]
                    assert got_seqs == sorted(got_seqs) and len(set(got_seqs)) == len(got_seqs)
                    assert set(got_seqs) == set(seqs) - {a["seq"] for a in acks[own]}
                if own != "alice":
                    assert [e["text"] for e in got if e["from"] == alice.user["id"]] == [f"alice {i}" for i in range(10)]

            # a lost ack: the frame reaches x, the socket goes before the ack comes back
            lost = {"type": "send", "kind": "text", "chat": chat, "text": "lost ack", "client_msg_id": "lost-1"}
        async with alice_x.connect() as ax:
            await ax.send_events(lost)
        async with bob_o.connect() as bo:
            stored = await bo.wait_for("message", text="lost ack")
        async with alice_y.connect() as ay:  # ... and the retry goes through another node
            again = await ay.send_text(chat, "lost ack", client_msg_id="lost-1")
        assert again["duplicate"] is True
        assert (again["id"], again["seq"], again["ts"]) == (stored["id"], stored["seq"], stored["ts"])
        history = await reader.history(chat, limit=100)
        assert [m["text"] for m in history].count("lost ack") == 1
        assert [m["seq"] for m in history] == list(range(1, 18))

        # registered on one node, the user logs in on any: a wrong password is refused on each
        for node in cluster.nodes:
            async with ChatClient(node.http_url) as client:
                with pytest.raises(ClientError) as refused:
                    await client.login(alice.user["username"], PASSWORD + "x")
            assert refused.value.code == "unauthorized"


async def test_receipts_and_group_watermarks_across_nodes(tmp_path):
    """A group whose members' devices are on the three nodes, the sender not on the owner:
    `delivered` once every member has the message, per-member detail from any node, `read`
    events in a 1-1 chat (to the author and the reader's other devices) and the group's
    all-read watermark once the last member read, whichever nodes they read through."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        n1 = cluster.nodes[0]
        alice, bob, carol, dave = [await cluster.user(n1, name) for name in ("alice", "bob", "carol", "dave")]
        group = (await alice.create_group("receipts", members=[u.user["id"] for u in (bob, carol, dave)]))["id"]
        owner = cluster.owner(group)
        x, y = cluster.others(owner)
        devices = {"alice": await cluster.login(x, alice), "bob": await cluster.login(y, bob),
                   "carol": await cluster.login(owner, carol), "dave_x": await cluster.login(x, dave),
                   "dave_y": await cluster.login(y, dave)}
        async with AsyncExitStack() as conns:
            c = {name: await conns.enter_async_context(client.connect()) for name, client in devices.items()}
            for conn in c.values():
                await conn.synced.wait()
            await cluster.subscribed(group, (x, alice), (y, bob), (x, dave), (y, dave))
            sent = await c["alice"].send_text(group, "did everyone get this?")
            seq = sent["seq"]
            for name in ("bob", "carol", "dave_x", "dave_y"):
                await c[name].wait_for("message", seq=seq, chat=group)
            delivered = await c["alice"].wait_for("delivered", chat=group, where=lambda e: e["seq"] >= seq)
            assert delivered["all"] is True

            # bob reads on y (socket), carol through the owner's HTTP API
            await c["bob"].read(group, seq)
            assert await devices["carol"].mark_read(group, seq) == seq
            detail_client = await cluster.login(y, alice)  # asked on a node that does not own the group

            async def detail():
                return await detail_client.receipts(group, seq)

            await until_async(lambda d: sorted(d["read"]) == sorted([bob.user["id"], carol.user["id"]]), detail)
            assert (await detail())["delivered"] == [dave.user["id"]] and (await detail())["pending"] == []
            # dave reads on x: now everyone has, and alice hears it once with "all"
            await c["dave_x"].read(group, seq)
            read_all = await c["alice"].wait_for("read", chat=group, where=lambda e: e.get("all"))
            assert read_all["seq"] == seq
            await c["dave_y"].wait_for("read", chat=group, user=dave.user["id"], seq=seq)  # dave's other device
            for client in (devices["dave_y"], devices["bob"]):
                summary = next(ch for ch in await client.chats() if ch["id"] == group)
                assert summary["unread"] == 0 and summary["read_seq"] == seq

            # 1-1: bob (on y) reads; alice (on x) and bob's other device (elsewhere) hear it
            direct = (await alice.open_direct(username=bob.user["username"]))["id"]
            other = cluster.others(y, cluster.owner(direct))[0]
            bob_2 = await cluster.login(other, bob)
            async with bob_2.connect() as b2:
                await b2.synced.wait()
                await cluster.subscribed(direct, (x, alice), (y, bob), (other, bob))
                hello = await c["alice"].send_text(direct, "read me")
                await c["bob"].wait_for("message", chat=direct, seq=hello["seq"])
                await b2.wait_for("message", chat=direct, seq=hello["seq"])
                await c["alice"].wait_for("delivered", chat=direct, user=bob.user["id"],
                                          where=lambda e: e["seq"] >= hello["seq"])
                await c["bob"].read(direct, hello["seq"])
                assert (await c["alice"].wait_for("read", chat=direct))["user"] == bob.user["id"]
                assert (await b2.wait_for("read", chat=direct))["seq"] == hello["seq"]
                assert (await detail_client.receipts(direct, hello["seq"]))["read"] == [bob.user["id"]]


async def until_async(check, fetch, timeout: float = 15.0):
    """Until `check(await fetch())` holds; returns the last value fetched."""
    with trio.fail_after(timeout):
        while True:
            value = await fetch()
            if check(value):
                return value
            await trio.sleep(0.05)


async def test_typing_presence_and_last_seen_across_nodes(tmp_path):
    """eve's devices are on nodes other than her home (the node that knows where they
    are); alice's on the others. alice's devices hear eve come online once (a second
    device elsewhere changes nothing), typing, and eve go offline once her last device is
    gone; every node then answers the same presence and last-seen time."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        n1 = cluster.nodes[0]
        eve = await cluster.user(n1, "eve")
        home = cluster.home(eve)
        d1, d2 = cluster.others(home)
        alice = await cluster.user(n1, "alice")
        chat = (await alice.open_direct(username=eve.user["username"]))["id"]
        alice_1, alice_2 = await cluster.login(d1, alice), await cluster.login(home, alice)
        eve_1, eve_2 = await cluster.login(d1, eve), await cluster.login(d2, eve)
        eid = eve.user["id"]
        askers = [await cluster.login(node, alice) for node in cluster.nodes]
        async with alice_1.connect() as a1, alice_2.connect() as a2:
            await a1.synced.wait(), await a2.synced.wait()
            async with eve_1.connect() as e1:
                await e1.synced.wait()
                for conn in (a1, a2):
                    assert (await conn.wait_for("presence", user=eid))["online"] is True
                for asker in askers:  # asked anywhere: online
                    assert (await asker.presence(eid))["online"] is True
                async with eve_2.connect() as e2:  # a second device on another node: no news
                    await e2.synced.wait()
                    await e2.typing(chat)
                    for conn in (a1, a2):
                        typing = await conn.wait_for("typing", chat=chat)
                        assert typing["user"] == eid and typing["typing"] is True
                await e1.typing(chat, False)
                for conn in (a1, a2):
                    assert (await conn.wait_for("typing", chat=chat))["typing"] is False
                    assert [e for e in conn.events_nowait() if e["type"] == "presence"] == []
            offline = [await conn.wait_for("presence", user=eid) for conn in (a1, a2)]
            assert [p["online"] for p in offline] == [False, False]
            last_seen = offline[0]["last_seen"]
            assert last_seen and offline[1]["last_seen"] == last_seen
            for asker in askers:  # every node answers the same at once
                assert await asker.presence(eid) == {"user": eid, "online": False, "last_seen": last_seen}
