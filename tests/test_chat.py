"""1-1 chat over the real WebSocket protocol: both ways, offline delivery, retries."""

from __future__ import annotations

from node.client import ChatClient
from node.testing import wait_until


async def test_two_users_chat_both_ways(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    assert (await bob.open_direct(username="alice"))["id"] == chat["id"]  # get, not create
    async with alice.connect() as a, bob.connect() as b:
        await a.synced.wait()
        await b.synced.wait()
        ack = await a.send_text(chat["id"], "hi bob")
        assert ack["seq"] == 1 and ack["id"].isdigit() and ack["status"] == "sent"
        got = await b.wait_for("message")
        assert (got["text"], got["from"], got["seq"], got["id"]) == ("hi bob", alice.user["id"], 1, ack["id"])
        delivered = await a.wait_for("delivered")
        assert delivered == {"type": "delivered", "chat": chat["id"], "user": bob.user["id"], "seq": 1}
        ack2 = await b.send_text(chat["id"], "hi alice")
        assert ack2["seq"] == 2
        got2 = await a.wait_for("message")
        assert (got2["text"], got2["from"]) == ("hi alice", bob.user["id"])
    history = await alice.history(chat["id"])
    assert [m["text"] for m in history] == ["hi bob", "hi alice"]
    assert history[0]["status"] == "read"  # bob replied, which reads everything before


async def test_offline_recipient_gets_message_on_reconnect_and_sender_sees_delivered(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        ack = await a.send_text(chat["id"], "are you there?")
        assert ack["status"] == "pending"  # bob has no device online
        async with bob.connect() as b:
            got = await b.wait_for("message")
            assert got["text"] == "are you there?" and got["seq"] == ack["seq"]
            await b.synced.wait()
            delivered = await a.wait_for("delivered")
            assert delivered["user"] == bob.user["id"] and delivered["seq"] == ack["seq"]


async def test_idempotent_retry_stores_one_message(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        first = await a.send_text(chat["id"], "once", client_msg_id="retry-1")
        again = await a.send_text(chat["id"], "once", client_msg_id="retry-1")
        assert again["duplicate"] is True
        assert (again["id"], again["seq"], again["ts"]) == (first["id"], first["seq"], first["ts"])
        assert (first["status"], again["status"]) == ("pending", "sent")  # bob is offline; a retry says sent
        await users("carol")
        elsewhere = await alice.open_direct(username="carol")
        moved = await a.send_text(elsewhere["id"], "changed", client_msg_id="retry-1")  # what it carries is moot
        assert (moved["chat"], moved["id"], moved["duplicate"]) == (chat["id"], first["id"], True)
    async with alice.connect(resume=False) as a2:  # another connection, same retry
        third = await a2.send_text(chat["id"], "once", client_msg_id="retry-1")
        assert third["id"] == first["id"]
    assert [m["text"] for m in await bob.history(chat["id"])] == ["once"]
    assert await alice.history(elsewhere["id"]) == []


async def test_retry_inside_one_frame_is_deduplicated(node, users):
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a:
        acks = await a.send_many([
            {"chat": chat["id"], "text": "x", "client_msg_id": "same"},
            {"chat": chat["id"], "text": "x", "client_msg_id": "other"},
        ])
        assert acks[0]["seq"] == 1 and acks[1]["seq"] == 2
        dup = await a.send_many([{"chat": chat["id"], "text": "x", "client_msg_id": "same"}] * 3)
        assert {d["seq"] for d in dup} == {1}
    assert len(await bob.history(chat["id"])) == 2


async def test_senders_other_devices_receive_the_message(node, users):
    alice, _bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")

    async with ChatClient(node.http_url) as alice_phone:
        await alice_phone.login("alice", "correct horse battery", device="phone")
        async with alice.connect() as a, alice_phone.connect() as phone:
            await phone.synced.wait()
            ack = await a.send_text(chat["id"], "from laptop")
            got = await phone.wait_for("message")
            assert (got["id"], got["client_msg_id"]) == (ack["id"], ack["client_msg_id"])
            assert not [e for e in a.events_nowait() if e["type"] == "message"]  # not echoed to the sender


async def test_chat_list_history_pagination_and_hide(node, users):
    alice, bob, carol = await users("alice"), await users("bob"), await users("carol")
    with_bob = await alice.open_direct(username="bob")
    with_carol = await alice.open_direct(username="carol")
    async with bob.connect() as b:
        for i in range(25):
            await b.send_text(with_bob["id"], f"m{i}")
    async with carol.connect() as c:
        await c.send_text(with_carol["id"], "latest")
    listed = await alice.chats()
    assert [c["id"] for c in listed] == [with_carol["id"], with_bob["id"]]  # newest first
    assert listed[1]["unread"] == 25 and listed[1]["last_message"]["text"] == "m24"
    assert listed[1]["peer"]["username"] == "bob" and listed[1]["title"] == "bob"
    page1 = await alice.history(with_bob["id"], limit=10)
    assert [m["seq"] for m in page1] == list(range(16, 26))
    page2 = await alice.history(with_bob["id"], before=page1[0]["seq"], limit=10)
    assert [m["seq"] for m in page2] == list(range(6, 16))
    page3 = await alice.history(with_bob["id"], before=page2[0]["seq"], limit=10)
    assert [m["seq"] for m in page3] == list(range(1, 6))
    await alice.hide(with_bob["id"])
    assert [c["id"] for c in await alice.chats()] == [with_carol["id"]]
    assert {c["id"] for c in await alice.chats(hidden=True)} == {with_bob["id"], with_carol["id"]}
    assert len(await bob.chats()) == 1  # hiding is per user
    async with bob.connect() as b:
        await b.send_text(with_bob["id"], "back again")
    assert [c["id"] for c in await alice.chats()] == [with_bob["id"], with_carol["id"]]


async def test_user_search_by_prefix(node, users):
    alice = await users("alice")
    for name in ("bob", "bobby", "bo.b", "carl"):
        await users(name)
    found = await alice.search_users("bo")
    assert [u["username"] for u in found] == ["bo.b", "bob", "bobby"]
    assert await alice.search_users("alice") == []  # never yourself
    assert "password" not in found[0]


async def test_an_idle_connections_writer_ends_and_comes_back_for_the_next_message(node, users, monkeypatch):
    """The writer task lives only while there is traffic; a message after a quiet spell
    starts it again and arrives as usual."""
    from node.core import session as session_module

    monkeypatch.setattr(session_module, "WRITER_LINGER", 0.05)
    alice, bob = await users("alice"), await users("bob")
    chat = await alice.open_direct(username="bob")
    async with alice.connect() as a, bob.connect() as b:
        await b.synced.wait()
        (bob_session,) = node.hub.sessions_of(int(bob.user["id"]))
        await wait_until(lambda: not bob_session._writing, 5)  # welcome and synced sent, then quiet
        for text in ("after a pause", "and again"):
            await a.send_text(chat["id"], text)
            assert (await b.wait_for("message", timeout=5))["text"] == text
            await wait_until(lambda: not bob_session._writing, 5)
