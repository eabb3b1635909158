"""Receipts plugin: read up to here, who has read, the read-receipts setting."""

from __future__ import annotations

from conftest import PASSWORD, make_config, new_user, running_node, settled

from node.client import ChatClient, ClientError
from node.testing import wait_until


async def test_read_marks_earlier_messages_and_tells_sender_and_own_devices(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with ChatClient(node.http_url) as bob_phone:
        await bob_phone.login("bob", PASSWORD, device="phone")
        async with alice.connect() as a, bob.connect() as b, bob_phone.connect() as phone:
            await b.synced.wait()
            acks = [await a.send_text(chat["id"], f"m{i}") for i in range(3)]
            assert (await bob.chats())[0]["unread"] == 3
            await b.read(chat["id"], acks[1]["seq"])  # read up to the second one
            read = await a.wait_for("read")
            assert read == {"type": "read", "chat": chat["id"], "user": bob.user["id"], "seq": acks[1]["seq"]}
            assert (await phone.wait_for("read"))["seq"] == acks[1]["seq"]  # bob's other device
            assert (await bob.chats())[0]["unread"] == 1
            statuses = [m["status"] for m in await alice.history(chat["id"])]
            assert statuses == ["read", "read", "delivered"]


async def test_read_receipts_off_hides_reads_both_ways(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    await bob.settings(read_receipts=False)
    async with alice.connect() as a, bob.connect() as b:
        to_bob = await a.send_text(chat["id"], "did you read this?")
        await b.read(chat["id"], to_bob["seq"])
        to_alice = await b.send_text(chat["id"], "maybe")
        await a.read(chat["id"], to_alice["seq"])
        await settled(node, a, b)
        assert not [e for e in a.events_nowait() if e["type"] == "read" and e["user"] == bob.user["id"]]  # not sent
        assert not [e for e in b.events_nowait() if e["type"] == "read" and e["user"] != bob.user["id"]]
    assert [m["status"] for m in await alice.history(chat["id"]) if m["from"] == alice.user["id"]] == ["delivered"]
    assert (await bob.chats())[0]["unread"] == 0  # bob's own unread count still follows his reads


async def test_big_group_receipts_are_per_member_on_request_and_aggregated_live(tmp_path):
    """Above [plugins.receipts] member_events_group_limit members (3 here), only the
    watermark is sent live."""
    config = make_config(tmp_path, plugins={"receipts": {"member_events_group_limit": 3}})
    async with running_node(config) as node:
        people = [await new_user(node, n) for n in ("alice", "bob", "carol", "dave")]
        try:
            await big_group_receipts(*people)
        finally:
            for person in people:
                await person.aclose()


async def big_group_receipts(alice, bob, carol, dave):
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"], dave.user["id"]])
    async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
        await b.synced.wait()
        await c.synced.wait()
        msg = await a.send_text(group["id"], "read me")
        await b.wait_for("message", text="read me")
        await c.wait_for("message", text="read me")
        await bob.mark_read(group["id"], msg["seq"])

        async def carol_has_it() -> bool:  # her device acknowledges it in its own time
            return (await alice.receipts(group["id"], msg["seq"]))["delivered"] == [carol.user["id"]]

        await wait_until(carol_has_it)
        receipts = await alice.receipts(group["id"], msg["seq"])
        assert receipts == {"read": [bob.user["id"]], "delivered": [carol.user["id"]], "pending": [dave.user["id"]]}
        try:
            await bob.receipts(group["id"], msg["seq"])
        except ClientError as exc:
            assert exc.code == "forbidden"
        else:
            raise AssertionError("only the sender may ask")
        assert [m.get("status") for m in await alice.history(group["id"])][-1] == "sent"  # dave has not got it
        # one aggregated event per rise of the group's watermark, not one per member
        assert not [e for e in a.events_nowait() if e["type"] in ("read", "delivered") and e.get("user") == bob.user["id"]]
        async with dave.connect() as d:
            await d.wait_for("message", text="read me")
            delivered = await a.wait_for("delivered")
            assert delivered == {"type": "delivered", "chat": group["id"], "all": True, "seq": msg["seq"]}
        await carol.mark_read(group["id"], msg["seq"])
        await dave.mark_read(group["id"], msg["seq"])
        read = await a.wait_for("read", all=True)
        assert read["seq"] == msg["seq"]
        assert [m.get("status") for m in await alice.history(group["id"])][-1] == "read"


async def test_read_errors(node, users):
    alice, bob, mallory = await users("alice"), await users("bob"), await users("mallory")
    chat = await alice.open_direct(username="bob")
    from node.client import ClientError

    for seq in (-1, "3", True):
        try:
            await bob.request("POST", f"/api/chats/{chat['id']}/read", {"seq": seq})
        except ClientError as exc:
            assert exc.code == "bad_request"
    try:
        await mallory.mark_read(chat["id"], 1)
    except ClientError as exc:
        assert exc.code == "not_member"
    assert await bob.mark_read(chat["id"], 99) == 0  # clamped to what exists


async def test_group_read_watermark_counts_the_move_that_builds_it_once(node, users):
    alice, bob, carol = [await users(n) for n in ("alice", "bob", "carol")]
    group = await alice.create_group("g", members=[bob.user["id"], carol.user["id"]])
    async with alice.connect() as a:
        msg = await a.send_text(group["id"], "hi")  # the first cursor move builds the watermark
        await bob.mark_read(group["id"], msg["seq"])
        await settled(node, a)
        assert not [e for e in a.events_nowait() if e["type"] == "read" and e.get("all")]  # carol has not read it
        await carol.mark_read(group["id"], msg["seq"])
        assert (await a.wait_for("read", all=True))["seq"] == msg["seq"]


async def test_receipts_of_a_seq_with_no_message_are_not_found(node, users):
    """Past the end of the log, or a seq that was never there, is `not_found` for the
    sender as for anyone (not `forbidden`: there is no message whose sender to be)."""
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        sent = await a.send_text(chat["id"], "hi")
    assert await alice.receipts(chat["id"], sent["seq"]) == {"read": [], "delivered": [], "pending": [bob.user["id"]]}
    for seq in (sent["seq"] + 1, 10**6):
        try:
            await alice.receipts(chat["id"], seq)
        except ClientError as exc:
            assert (exc.status, exc.code) == (404, "not_found")
        else:
            raise AssertionError("receipts of no message")
    try:
        await bob.receipts(chat["id"], sent["seq"])
    except ClientError as exc:
        assert (exc.status, exc.code) == (403, "forbidden")
    else:
        raise AssertionError("only the sender may ask")


async def test_one_to_one_chats_remembered_by_the_plugin_stay_bounded(node, users, monkeypatch):
    """The receipts plugin remembers which chats are 1-1 (their `delivered` is the core's),
    forgetting them all at once past DIRECTS_REMEMBERED: the set stays bounded, and each
    message is still reported delivered exactly once, before and after it is cleared."""
    from node.plugins import receipts

    monkeypatch.setattr(receipts, "DIRECTS_REMEMBERED", 2)
    plugin = node.plugins.pm.get_plugin("receipts")
    alice = await users("alice")
    peers = [await users(name) for name in ("bob", "carol", "dave")]
    async with alice.connect() as a:
        for round_ in range(2):
            for peer in peers:
                chat = (await alice.open_direct(username=peer.user["username"]))["id"]
                async with peer.connect() as p:
                    ack = await a.send_text(chat, f"hi {round_}")
                    await p.wait_for("message", chat=chat, seq=ack["seq"])
                    delivered = await a.wait_for("delivered", chat=chat, seq=ack["seq"])
                    assert delivered["user"] == peer.user["id"]
                    await settled(node, a, p)
                    assert 1 <= len(plugin._directs) <= 2
                    assert int(chat) in plugin._directs
        await settled(node, a)
        assert [e for e in a.events_nowait() if e["type"] == "delivered"] == []  # nothing twice
