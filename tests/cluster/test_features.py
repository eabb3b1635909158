"""One cluster, one service: every feature of a single node, with the parts on different nodes.

Three nodes in one process on one private PostgreSQL (tests/cluster/threenodes.py). In
each test the devices are placed from the chat's owner and the users' homes, so that a
sender, the node that sequences the chat and the recipients are three different nodes,
and a user's devices are spread over several. Real sockets, real clients, nothing mocked.
"""

from __future__ import annotations

import contextlib
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
import trio
from conftest import PASSWORD, close_code, wait_for_notifications
from test_photos import square
from threenodes import assert_once_in_order, collect, nothing_more, start_cluster

from node.client import ChatClient, ClientError
from node.testing import wait_until

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
            delivered = await c["alice"].wait_for("delivered", chat=group, where=lambda e: e.get("all") and e["seq"] >= seq)
            assert delivered["all"] is True

            # bob reads on y (socket), carol through the owner's HTTP API
            await c["bob"].read(group, seq)
            assert await devices["carol"].mark_read(group, seq) == seq
            detail_client = await cluster.login(y, alice)  # asked on a node that does not own the group

            async def detail():
                return await detail_client.receipts(group, seq)

            async def read_by_both() -> bool:
                return sorted((await detail())["read"]) == sorted([bob.user["id"], carol.user["id"]])

            await wait_until(read_by_both, 15, interval=0.05)
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
        async with eve.connect() as conn:  # eve writes to alice: alice is her contact, and sees her presence
            await conn.send_text(chat, "hi alice")
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


async def test_edits_and_deletions_across_nodes(tmp_path):
    """alice edits and deletes through a node that does not own the chat; bob's devices on
    the other two nodes see both live, and every node serves the result (the content of a
    message deleted for everyone is gone from storage). A group admin deletes a member's
    message through a third node; delete for me hides messages on the deleter's devices on
    every node, and from no one else."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        n1 = cluster.nodes[0]
        alice, bob, carol = [await cluster.user(n1, name) for name in ("alice", "bob", "carol")]
        chat = (await alice.open_direct(username=bob.user["username"]))["id"]
        owner = cluster.owner(chat)
        x, y = cluster.others(owner)
        devices = {"alice_x": await cluster.login(x, alice), "alice_o": await cluster.login(owner, alice),
                   "bob_y": await cluster.login(y, bob), "bob_o": await cluster.login(owner, bob)}
        readers = {node.config.node.id: await cluster.login(node, bob, "reader") for node in cluster.nodes}
        async with AsyncExitStack() as conns:
            c = {name: await conns.enter_async_context(client.connect()) for name, client in devices.items()}
            for conn in c.values():
                await conn.synced.wait()
            await cluster.subscribed(chat, (x, alice), (y, bob))
            others = [c["alice_o"], c["bob_y"], c["bob_o"]]

            original = await c["alice_x"].send_text(chat, "helo")
            for conn in others:
                await conn.wait_for("message", chat=chat, seq=original["seq"])
            edit_ack = await c["alice_x"].edit(chat, original["id"], "hello")
            assert edit_ack["seq"] == original["seq"] + 1
            for conn in others:
                edit = await conn.wait_for("message", chat=chat, kind="edit")
                assert (edit["target"], edit["target_seq"], edit["text"]) == (original["id"], original["seq"], "hello")
            with pytest.raises(ClientError) as info:  # only the sender edits, wherever asked
                await c["bob_y"].edit(chat, original["id"], "yours now")
            assert info.value.code == "forbidden"

            secret = await c["alice_x"].send_text(chat, "my secret pin 1234")
            for conn in others:
                await conn.wait_for("message", chat=chat, seq=secret["seq"])
            with pytest.raises(ClientError) as info:
                await c["bob_y"].delete(chat, secret["id"])
            assert info.value.code == "forbidden"
            await c["alice_x"].delete(chat, secret["id"])
            for conn in others:
                assert (await conn.wait_for("message", chat=chat, kind="delete"))["target"] == secret["id"]
            for node in cluster.nodes:  # every node reads the same result from storage
                rows = await node.storage.read_messages(int(chat), secret["seq"], secret["seq"] + 1, 1)
                assert b"secret pin" not in rows[0][1]  # (digits could be in an id)
                history = await readers[node.config.node.id].history(chat)
                assert history[0]["text"] == "hello" and history[0]["edited"] >= original["ts"]
                assert history[2]["kind"] == "deleted" and "text" not in history[2]

            # delete for me, asked through x: bob's devices on y and on the owner hide them
            await devices["bob_o"].delete_for_me(chat, [original["seq"]])
            for conn in (c["bob_y"], c["bob_o"]):
                assert (await conn.wait_for("deleted_for_me", chat=chat))["seqs"] == [original["seq"]]
            for node in cluster.nodes:
                assert original["seq"] not in [m["seq"] for m in await readers[node.config.node.id].history(chat)]
            assert original["seq"] in [m["seq"] for m in await devices["alice_x"].history(chat)]

        # a group: carol (a member) posts through y; alice, its admin, deletes it through x
        group = (await alice.create_group("g", members=[bob.user["id"], carol.user["id"]]))["id"]
        g_owner = cluster.owner(group)
        gx, gy = cluster.others(g_owner)
        carol_y, alice_x, bob_o = (await cluster.login(gy, carol), await cluster.login(gx, alice),
                                   await cluster.login(g_owner, bob))
        async with carol_y.connect() as cy, alice_x.connect() as ax, bob_o.connect() as bo:
            for conn in (cy, ax, bo):
                await conn.synced.wait()
            await cluster.subscribed(group, (gy, carol), (gx, alice))
            spam = await cy.send_text(group, "spam")
            await ax.wait_for("message", chat=group, seq=spam["seq"])
            with pytest.raises(ClientError) as info:
                await bo.delete(group, spam["id"])
            assert info.value.code == "forbidden"
            await ax.delete(group, spam["id"])
            for conn in (cy, bo):
                assert (await conn.wait_for("message", chat=group, kind="delete"))["target"] == spam["id"]
        for reader in (carol_y, bob_o):
            deleted = next(m for m in await reader.history(group) if m["seq"] == spam["seq"])
            assert deleted["kind"] == "deleted" and deleted["deleted_by"] == alice.user["id"]


async def test_disappearing_messages_across_nodes(tmp_path):
    """The chat's timer is set through one node, its owner is another, and the node that
    sweeps expired messages is the third: the `ttl_changed` entry and
    the messages' `expires_at` reach devices on every node; once due, the messages are
    purged, no node serves them (history, replay on a new device), and seqs go on."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path, storage={"sweep_interval": 0.1})
        n1 = cluster.nodes[0]
        sweeper = next(n for n in cluster.nodes if n.routing.runs_singletons())
        alice = await cluster.user(n1, "alice")
        while True:  # a chat the sweeper does not own
            bob = await cluster.user(n1, "bob")
            chat = (await alice.open_direct(username=bob.user["username"]))["id"]
            if cluster.owner(chat) is not sweeper:
                break
        owner = cluster.owner(chat)
        setter = cluster.others(owner, sweeper)[0]  # the third node
        alice_s, bob_o, bob_w = (await cluster.login(setter, alice), await cluster.login(owner, bob),
                                 await cluster.login(sweeper, bob))
        async with alice_s.connect() as a, bob_o.connect() as bo, bob_w.connect() as bw:
            for conn in (a, bo, bw):
                await conn.synced.wait()
            await cluster.subscribed(chat, (setter, alice), (sweeper, bob))
            updated = await alice_s.update_chat(chat, ttl=1)
            assert updated["ttl"] == 1
            for conn in (bo, bw):
                changed = await conn.wait_for("message", chat=chat, kind="system")
                assert changed["event"] == "ttl_changed" and changed["ttl"] == 1
            short = await a.send_text(chat, "gone soon")
            kept = await a.send_text(chat, "kept a while", ttl=60)
            for conn in (bo, bw):
                got = await conn.wait_for("message", chat=chat, seq=short["seq"])
                assert got["expires_at"] - got["ts"] == 1000
                assert (await conn.wait_for("message", chat=chat, seq=kept["seq"]))["expires_at"] - kept["ts"] == 60_000

        async def purged() -> bool:  # by the sweeper, once due
            return not await owner.storage.read_messages(int(chat), short["seq"], short["seq"] + 1, 1)

        await wait_until(purged, 15, interval=0.05)
        for node in cluster.nodes:
            reader = await cluster.login(node, bob, "reader")
            assert [m.get("text") for m in await reader.history(chat)] == [None, "kept a while"]
            async with reader.connect() as conn:  # a new device, replayed through this node
                await conn.synced.wait()
                assert [e.get("text") for e in conn.events_nowait() if e["type"] == "message"] == [None, "kept a while"]
        async with alice_s.connect() as a:
            assert (await a.send_text(chat, "next"))["seq"] == kept["seq"] + 1


async def test_blocking_across_nodes(tmp_path):
    """alice blocks bob through a node that does not own their chat. From then on the owner
    refuses bob's sends and alice's (through every node), bob cannot put alice in a group
    (the group's owner knows), bob's devices hear nothing of alice's presence and every
    node hides it from him. Unblocked through another node, they talk again."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        n1 = cluster.nodes[0]
        alice, bob, carol = [await cluster.user(n1, name) for name in ("alice", "bob", "carol")]
        chat = (await bob.open_direct(username=alice.user["username"]))["id"]
        owner = cluster.owner(chat)
        x, y = cluster.others(owner)
        alice_x, alice_y = await cluster.login(x, alice), await cluster.login(y, alice)
        bobs = {node.config.node.id: await cluster.login(node, bob) for node in cluster.nodes}
        await alice_x.settings(last_seen="everyone")
        await alice_x.block(bob.user["id"])
        for node in cluster.nodes:  # every node lists the block
            assert [u["username"] for u in (await (await cluster.login(node, alice)).request(
                "GET", "/api/blocks"))["users"]] == [bob.user["username"]]
        async with AsyncExitStack() as conns:
            b = {i: await conns.enter_async_context(client.connect()) for i, client in bobs.items()}
            for conn in b.values():
                await conn.synced.wait()
            for i, conn in b.items():  # bob, through each node
                with pytest.raises(ClientError) as info:
                    await conn.send_text(chat, f"hi? (through n{i})")
                assert info.value.code == "blocked"
            async with alice_y.connect() as a:  # the blocker cannot write either
                await a.synced.wait()
                with pytest.raises(ClientError) as info:
                    await a.send_text(chat, "hm")
                assert info.value.code == "blocked"
                for conn in b.values():  # alice came online: bob's devices are not told
                    await nothing_more(conn, "presence", user=alice.user["id"])
            for i, client in bobs.items():
                seen = await client.presence(alice.user["id"])
                assert seen.get("hidden") is True and seen["last_seen"] is None, (i, seen)
        with pytest.raises(ClientError) as info:
            await bobs[x.config.node.id].create_group("g", members=[alice.user["id"]])
        assert info.value.code == "blocked"
        group = (await carol.create_group("g2", members=[bob.user["id"]]))["id"]
        await carol.set_admin(group, bob.user["id"])
        with pytest.raises(ClientError) as info:
            await bobs[y.config.node.id].add_members(group, [alice.user["id"]])
        assert info.value.code == "blocked"
        assert [m["text"] for m in await alice_x.history(chat)] == []

        await alice_y.block(bob.user["id"], blocked=False)
        async with bobs[x.config.node.id].connect() as conn:
            assert (await conn.send_text(chat, "friends again"))["seq"] == 1
        assert [m["text"] for m in await alice_x.history(chat)] == ["friends again"]


async def test_logout_revoke_and_password_change_close_sockets_on_other_nodes(tmp_path):
    """Devices of one user on three nodes. A logout through one node closes that device's
    socket on another; revoking a device through one node closes its socket on another;
    a password change through a third node closes every other device's sockets wherever
    they are (4003), and the device that changed it stays connected and logged in."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        dana = await cluster.user(a, "dana")
        phone = ChatClient(b.http_url)  # its socket on b ...
        cluster.clients.append(phone)
        await phone.login(dana.user["username"], PASSWORD, "phone")
        phone_on_c = ChatClient(c.http_url, token=phone.token)  # ... its HTTP requests through c
        cluster.clients.append(phone_on_c)
        async with phone.connect() as conn:
            await conn.synced.wait()
            await phone_on_c.logout()
            assert await close_code(conn) == 4003
        with pytest.raises(ClientError):
            await phone.me()

        tablet = await cluster.login(c, dana, "tablet")
        laptop = await cluster.login(b, dana, "laptop")
        desk = await cluster.login(a, dana, "desk")
        async with tablet.connect() as t:
            await t.synced.wait()
            devices = (await laptop.request("GET", "/api/me/devices"))["devices"]
            tablet_id = next(d["device_id"] for d in devices if d["name"] == "tablet")
            await laptop.request("DELETE", f"/api/me/devices/{tablet_id}")  # asked on b, tablet is on c
            assert await close_code(t) == 4003
        async with laptop.connect() as lp, desk.connect() as dk, dana.connect() as keeper:
            for conn in (lp, dk, keeper):
                await conn.synced.wait()
            changer = ChatClient(c.http_url, token=dana.token)  # dana's first device, asking through c
            cluster.clients.append(changer)
            answer = await changer.request("POST", "/api/me/password",
                                           {"current_password": PASSWORD, "new_password": "a brand new passphrase"})
            assert answer["revoked"] == 2  # laptop and desk
            assert await close_code(lp) == 4003 and await close_code(dk) == 4003
            await keeper.send_events({"type": "ping"})
            assert (await keeper.wait_for("pong"))["type"] == "pong" and keeper.closed is None
        assert (await dana.me())["user"]["id"] == dana.user["id"]
        for client in (laptop, desk):
            with pytest.raises(ClientError):
                await client.me()


async def test_profile_updates_reach_every_node(tmp_path):
    """alice renames herself through one node: her contact's devices and her own other
    devices on the other nodes get the `user` event, a stranger's does not, and every node
    then serves the new name (profile, 1-1 chat title, chat list, search). A profile photo
    set, then removed, through one node is shown, then gone, on every node."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        alice = await cluster.user(a, "alice")
        bob = await cluster.user(b, "bob")
        stranger = await cluster.user(c, "stranger")
        direct = await bob.open_direct(username=alice.user["username"])
        async with alice.connect() as conn:  # alice writes to bob: bob is her contact
            await conn.send_text(direct["id"], "hi bob")
        await alice.settings(last_seen="contacts")  # bob, a contact, sees her photo
        for node in cluster.nodes:  # every node has read (and cached) alice's profile
            reader = await cluster.login(node, bob, "reader")
            assert (await reader.user_info(alice.user["id"]))["display_name"] == alice.user["username"]
        bob_c, alice_b = await cluster.login(c, bob), await cluster.login(b, alice, "phone")
        async with bob_c.connect() as bc, alice_b.connect() as ab, stranger.connect() as s:
            for conn in (bc, ab, s):
                await conn.synced.wait()
            user = (await alice.request("PATCH", "/api/me", {"display_name": "Alice Liddell"}))["user"]
            assert user["display_name"] == "Alice Liddell"
            for conn in (bc, ab):
                event = await conn.wait_for("user", timeout=10)
                assert event["user"]["id"] == alice.user["id"] and event["user"]["display_name"] == "Alice Liddell"
            await s.send_events({"type": "ping"})  # the stranger shares no chat: no `user` before the pong
            seen = []
            while not seen or seen[-1] != "pong":
                seen.append((await s.next_event(timeout=5))["type"])
            assert "user" not in seen
        readers = [await cluster.login(node, bob, "reader2") for node in cluster.nodes]
        for reader in readers:
            assert (await reader.user_info(alice.user["id"]))["display_name"] == "Alice Liddell"
            summary = next(ch for ch in await reader.chats() if ch["kind"] == "direct")
            assert summary["title"] == "Alice Liddell", (reader.base_url, summary)
            found = await reader.search_users(alice.user["username"])
            assert [u["display_name"] for u in found] == ["Alice Liddell"]

        # a profile photo, set and then removed through a: every node shows each at once
        photo = await alice.upload(square(), name="me.jpg")
        assert (await alice.set_photo(photo["id"]))["photo"] == photo["id"]
        for reader in readers:
            assert (await reader.user_info(alice.user["id"]))["photo"] == photo["id"], reader.base_url
        assert (await alice.set_photo(None)).get("photo") is None
        for reader in readers:
            assert (await reader.user_info(alice.user["id"]))["photo"] is None, reader.base_url


async def test_concurrent_changes_of_one_account_through_different_nodes_all_stay(tmp_path):
    """alice renames herself through one node while she changes one setting through a
    second and another setting through the third, at the same moment, round after round:
    every change stays (each node writes the fields it changed, not its copy of the whole
    record), and every node then serves all of them. An admin disabling the account
    through one node while it is renamed through another leaves it renamed and disabled."""
    async with AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path)
        a, b, c = cluster.nodes
        alice = await cluster.user(a, "alice")
        on_b, on_c = await cluster.login(b, alice), await cluster.login(c, alice)
        uid = int(alice.user["id"])
        visibility = ["everyone", "contacts", "nobody"]
        for i in range(6):
            expected = {"display_name": f"Alice {i}",
                        "settings": {"read_receipts": i % 2 == 0, "last_seen": visibility[i % 3]}}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alice.request, "PATCH", "/api/me", {"display_name": expected["display_name"]})
                nursery.start_soon(on_b.request, "PATCH", "/api/me/settings",
                                   {"read_receipts": expected["settings"]["read_receipts"]})
                nursery.start_soon(on_c.request, "PATCH", "/api/me/settings",
                                   {"last_seen": expected["settings"]["last_seen"]})
            stored = (await a.storage.get_users([uid]))[uid]
            assert {k: stored[k] for k in expected} == expected, (i, stored)
            for client in (alice, on_b, on_c):  # every node, once the others' news arrived
                async def seen(client=client, want=expected) -> bool:
                    me = await client.me()
                    return me["user"]["display_name"] == want["display_name"] and me["settings"] == want["settings"]

                await wait_until(seen, 15, interval=0.05)

        async def disable() -> None:
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{c.http_url}/api/admin/users/{uid}/disable")
                assert response.status_code == 200, response.text

        async def rename() -> None:
            with contextlib.suppress(ClientError):  # logged out meanwhile: the rename may be refused
                await alice.request("PATCH", "/api/me", {"display_name": "Renamed"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(rename)
            nursery.start_soon(disable)
        stored = (await a.storage.get_users([uid]))[uid]
        assert stored.get("disabled"), stored  # the rename did not write the account enabled again
        for node in cluster.nodes:
            async with ChatClient(node.http_url) as client:
                with pytest.raises(ClientError) as info:
                    await client.login(alice.user["username"], PASSWORD)
                assert info.value.code == "account_disabled"


PUSH = {"plugins": {"push": {"allow_private_endpoints": True, "retry_base": 0.05, "collapse_window": 0.0}}}


async def test_push_for_offline_users_is_sent_once_per_message_by_the_cluster(tmp_path):
    """bob registers a webhook through one node and has no device anywhere; alice sends
    from a node that does not own the chat. Each message is pushed once (by the owner, the
    node that stored it), however many nodes there are; while bob has a device on any node
    nothing is pushed; in a group, the offline member is pushed once per message and the
    online one never."""
    from test_push import receiver

    async with receiver() as hook, AsyncExitStack() as stack:
        cluster = await start_cluster(stack, tmp_path, **PUSH)
        n1 = cluster.nodes[0]
        alice, bob, carol = [await cluster.user(n1, name) for name in ("alice", "bob", "carol")]
        chat = (await alice.open_direct(username=bob.user["username"]))["id"]
        owner = cluster.owner(chat)
        x, y = cluster.others(owner)
        await (await cluster.login(y, bob, "phone")).register_push_target("webhook", f"{hook.url}/up/bob")
        await (await cluster.login(x, carol, "phone")).register_push_target("webhook", f"{hook.url}/up/carol")

        def sent() -> dict[int, int]:
            return {n.config.node.id: n.plugins.pm.get_plugin("push").dispatcher.statistics()["sent"]
                    for n in cluster.nodes}

        async def pushed(ack: dict) -> None:
            """The next notification is about this message alone (one at a time: messages
            that arrive while a notification is on its way are collapsed into the next)."""
            request = await hook.next(timeout=15)
            notification = orjson.loads(request["body"])
            assert (request["path"], notification["message"], notification["count"]) == ("/up/bob", ack["id"], 1)

        alice_x = await cluster.login(x, alice)
        async with alice_x.connect() as a:
            await a.synced.wait()
            for i in range(3):
                await pushed(await a.send_text(chat, f"offline {i}"))

            bob_y = await cluster.login(y, bob)  # online on a node that neither sends nor owns
            async with bob_y.connect() as b:
                await b.synced.wait()
                await cluster.subscribed(chat, (y, bob))
                online = [await a.send_text(chat, f"online {i}") for i in range(2)]
                for ack in online:
                    await b.wait_for("message", chat=chat, seq=ack["seq"])
            await pushed(await a.send_text(chat, "offline again"))  # nothing was queued for the two he saw online

            # a group: carol online (on the owner), bob offline; sender, owner, recipient apart
            group = (await alice.create_group("g", members=[bob.user["id"], carol.user["id"]]))["id"]
            g_owner = cluster.owner(group)
            sender_node = cluster.others(g_owner)[0]
            alice_s, carol_o = await cluster.login(sender_node, alice), await cluster.login(g_owner, carol)
            async with alice_s.connect() as s, carol_o.connect() as co:
                await s.synced.wait(), await co.synced.wait()
                for i in range(2):
                    ack = await s.send_text(group, f"group {i}")
                    await co.wait_for("message", chat=group, seq=ack["seq"])
                    await pushed(ack)

        for node in cluster.nodes:
            await wait_for_notifications(node)
        await wait_until(lambda: sum(sent().values()) >= 6, 10, interval=0.01)  # counted once the receiver answered
        counts = sent()
        assert counts[owner.config.node.id] >= 4 and sum(counts.values()) == 6, counts
        assert hook.received_nowait() == []  # once each, by one node: nothing more
